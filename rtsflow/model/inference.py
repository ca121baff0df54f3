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


def _lattice_starts(g0: int, n: int, depth: int, step: int, halo: int) -> list[tuple[int, int, int]]:
    """Tile windows on a global lattice covering the block ``[g0, g0 + n)`` (global pixel indices).

    Returns ``(window start in the padded block, crop start in the block, crop length)`` for
    each lattice cell ``[k·step, (k+1)·step)`` that meets the block; the window is that cell
    widened by ``halo`` on both sides.
    """
    out = []
    for k in range(g0 // step, (g0 + n - 1) // step + 1):
        cell0, cell1 = k * step, (k + 1) * step
        lo, hi = max(cell0, g0), min(cell1, g0 + n)
        out.append((cell0 - halo - (g0 - depth), lo - g0, hi - lo))
    return out


def predict_block(
    bands: np.ndarray,
    *,
    spec: ModelSpec,
    halo: int,
    tile: int,
    pad: int,
    origin: tuple[int, int],
    chunk_starts: tuple[Sequence[int], Sequence[int]],
    batch_size: int = 4,
    device: str = "auto",
    precision: str = "fp32",
    block_info: dict | None = None,
) -> np.ndarray:
    """Probability of one block padded by ``pad``: ``(band, y + 2p, x + 2p)`` → ``(y + 2p, x + 2p)``.

    Tiles sit on a lattice anchored to the global grid (cells of ``tile − 2·halo`` px,
    each widened by ``halo``), so a pixel is always predicted from the same tile,
    whatever the chunking; only cell centres are kept. The padding is NaN in the
    output (``map_overlap`` trims it).
    """
    import torch

    device = _device(device)
    model, record = _model(spec, device)
    scalings = [BandScaling(**s) for s in record["normalisation"]]
    _, ny, nx = bands.shape
    depth = pad
    by, bx = ny - 2 * depth, nx - 2 * depth
    out = np.full((ny, nx), np.nan, dtype=np.float32)
    step = tile - 2 * halo
    if step <= 0:
        raise ValueError(f"tile ({tile}) must exceed twice the halo ({halo})")
    i, j = block_info[0]["chunk-location"][1:] if block_info else (0, 0)
    gy0 = origin[0] + int(chunk_starts[0][i])
    gx0 = origin[1] + int(chunk_starts[1][j])
    padded = np.pad(bands, ((0, 0), (tile, tile), (tile, tile)), constant_values=np.nan)  # room for edge windows
    todo = []
    for wy, cy, ly in _lattice_starts(gy0, by, depth, step, halo):
        for wx, cx, lx in _lattice_starts(gx0, bx, depth, step, halo):
            win = padded[:, wy + tile : wy + 2 * tile, wx + tile : wx + 2 * tile]
            x, valid = normalise(win, scalings)
            if valid.any():  # all-NaN windows never reach the model
                todo.append(((wy, cy, ly), (wx, cx, lx), x, valid))
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
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
            for ((wy, cy, ly), (wx, cx, lx), _, valid), p in zip(chunk, prob, strict=True):
                p = np.where(valid, p, np.nan)
                # Crop [cy, cy + ly) of the block sits at (depth + cy) in the padded block and
                # at (depth + cy - wy) in the window.
                oy, ox = depth + cy, depth + cx
                out[oy : oy + ly, ox : ox + lx] = p[oy - wy : oy - wy + ly, ox - wx : ox - wx + lx]
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
    grid=None,
) -> xr.DataArray:
    """Lazy probability map of a feature dataset (``float32``, NaN where no valid input).

    With ``grid`` (the rtsflow grid of ``features``) the tile lattice is anchored
    to the global grid, so overlapping regions get identical probabilities;
    without it, to the array's first pixel. Results never depend on chunking.

    Submit it to GPU workers with ``client.compute(prob, resources={"GPU": 1})``
    (annotations set while building the graph are dropped by fusion).
    """
    stack = da.stack([features[b].data.astype(np.float32) for b in bands])
    stack = stack.rechunk({0: -1})
    # Enough padding that every lattice window touching a block lies inside block + padding.
    pad = tile - halo
    chunks = stack.chunks
    starts = (tuple(np.cumsum((0, *chunks[1][:-1])).tolist()), tuple(np.cumsum((0, *chunks[2][:-1])).tolist()))
    origin = (0, 0) if grid is None else _origin(features, grid)
    prob = da.map_overlap(
        predict_block, stack, depth={0: 0, 1: pad, 2: pad}, boundary=np.nan, trim=True, drop_axis=0,
        dtype=np.float32, meta=np.empty((0, 0), np.float32), spec=spec, halo=halo, tile=tile, pad=pad,
        origin=origin, chunk_starts=starts, batch_size=batch_size, device=device, precision=precision,
    )  # fmt: skip
    out = xr.DataArray(prob, dims=("y", "x"), coords={"x": features["x"], "y": features["y"]}, name="probability")
    out.attrs = {"long_name": "RTS probability", "units": "1", "model_sha256": spec.sha256,
                 "description": f"Sigmoid of the model output; tiles of {tile} px with a {halo} px halo."}  # fmt: skip
    return out


def _origin(features: xr.Dataset, grid) -> tuple[int, int]:
    w = grid.window_from_coords(features["x"].values, features["y"].values)
    return w.row, w.col
