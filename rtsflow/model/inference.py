"""Tile inference over a feature cube: ``map_overlap`` blocks → overlapping tiles → model → centre crops.

The model travels as a :class:`~rtsflow.model.checkpoint.ModelSpec` (path +
sha256) and is loaded once per worker process (a process-level cache), never
closed over in a task. Within a block (plus halo) the tiles overlap by
``2 × halo`` and only their centres are kept, so predictions do not depend on
block boundaries; windows without any valid pixel are skipped (NaN) and never
reach the model.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

import dask.array as da
import numpy as np
import xarray as xr

from rtsflow.model.checkpoint import ModelSpec, load_checkpoint
from rtsflow.model.normalise import BandScaling, normalise

__all__ = ["load_count", "predict", "predict_block"]

_CACHE: dict[tuple[str, str, str], tuple[object, dict]] = {}
_LOADS: list[tuple[int, str]] = []
_LOCK = threading.Lock()


def _model(spec: ModelSpec, device: str):
    key = (spec.path, spec.sha256, device)
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = load_checkpoint(spec.path, expected_sha256=spec.sha256, device=device)
            _LOADS.append((os.getpid(), spec.sha256))
        return _CACHE[key]


def load_count() -> int:
    """How many times this process has loaded a model (for tests and diagnostics)."""
    return len(_LOADS)


def _device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def predict_block(
    bands: np.ndarray,
    *,
    spec: ModelSpec,
    halo: int,
    tile: int,
    batch_size: int = 4,
    device: str = "auto",
    precision: str = "fp32",
) -> np.ndarray:
    """Probability of one block with its halo: ``(band, y + 2h, x + 2h)`` → ``(y + 2h, x + 2h)`` float32.

    Output pixels within ``halo`` of the block edge are NaN (they are trimmed
    by ``map_overlap``). Tiles of ``tile`` px step by ``tile − 2·halo`` and
    keep their centres.
    """
    import torch

    device = _device(device)
    model, record = _model(spec, device)
    scalings = [BandScaling(**s) for s in record["normalisation"]]
    _, ny, nx = bands.shape
    out = np.full((ny, nx), np.nan, dtype=np.float32)
    step = tile - 2 * halo
    if step <= 0:
        raise ValueError(f"tile ({tile}) must exceed twice the halo ({halo})")
    # Centre crops [r + halo, r + halo + step) must cover [halo, n - halo).
    starts_y = list(range(0, max(ny - tile, 0) + 1, step))
    starts_x = list(range(0, max(nx - tile, 0) + 1, step))
    if starts_y[-1] + tile < ny:
        starts_y.append(ny - tile)
    if starts_x[-1] + tile < nx:
        starts_x.append(nx - tile)
    windows = [(r, c) for r in starts_y for c in starts_x]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    todo = []
    for r, c in windows:
        x, valid = normalise(bands[:, r : r + tile, c : c + tile], scalings)
        if valid.any():
            todo.append((r, c, x, valid))
    with torch.inference_mode():
        for k in range(0, len(todo), batch_size):
            chunk = todo[k : k + batch_size]
            xb = torch.from_numpy(np.stack([t[2] for t in chunk])).to(device)
            if device == "cuda":
                xb = xb.to(memory_format=torch.channels_last)
            with torch.autocast(device_type="cuda" if device == "cuda" else "cpu", dtype=dtype,
                                enabled=precision != "fp32"):  # fmt: skip
                logits = model(xb)
            prob = torch.sigmoid(logits.float())[:, 0].cpu().numpy()
            for (r, c, _, valid), p in zip(chunk, prob, strict=True):
                p = np.where(valid, p, np.nan)
                out[r + halo : r + tile - halo, c + halo : c + tile - halo] = p[halo:-halo, halo:-halo]
    return out


def predict(
    features: xr.Dataset,
    *,
    spec: ModelSpec,
    bands: Sequence[str],
    halo: int = 64,
    tile: int = 512,
    batch_size: int = 4,
    device: str = "auto",
    precision: str = "fp32",
) -> xr.DataArray:
    """Lazy probability map of a feature dataset (``float32``, NaN where no valid input).

    Submit it to GPU workers with ``client.compute(prob, resources={"GPU": 1})``
    (annotations set while building the graph are dropped by fusion).
    """
    stack = da.stack([features[b].data.astype(np.float32) for b in bands])
    stack = stack.rechunk({0: -1})
    depth = {0: 0, 1: halo, 2: halo}
    prob = da.map_overlap(
        predict_block, stack, depth=depth, boundary=np.nan, trim=True, drop_axis=0, dtype=np.float32,
        meta=np.empty((0, 0), np.float32), spec=spec, halo=halo, tile=tile, batch_size=batch_size, device=device,
        precision=precision,
    )  # fmt: skip
    out = xr.DataArray(prob, dims=("y", "x"), coords={"x": features["x"], "y": features["y"]}, name="probability")
    out.attrs = {"long_name": "RTS probability", "units": "1", "model_sha256": spec.sha256,
                 "description": f"Sigmoid of the model output; tiles of {tile} px with a {halo} px halo."}  # fmt: skip
    return out
