"""Tile inference over a feature cube: ``map_overlap`` blocks → overlapping tiles → model → centre crops.

The model travels as a :class:`~rtsflow.model.checkpoint.ModelSpec` (path +
sha256) and is loaded once per worker process (a process-level cache), never
closed over in a task.

Output cells are the grid's own tiles (``tile`` px, 512 by default, anchored
to the global grid); each is predicted from a window that widens it by
``halo / 2`` on every side (``tile + halo`` px, 576 by default), and only the
cell is kept. Neighbouring windows overlap by ``halo``, so there are no seams,
and a pixel is always predicted from the same window whatever the chunking.
Grid blocks hold whole tiles, so no window is ever run twice and the inferred /
output pixel ratio is ``((tile + halo) / tile)²`` (1.27 for 512 / 64). The
model is fully convolutional: trained on ``tile``² samples, it sees
``(tile + halo)``² windows. Windows without any valid pixel are skipped (NaN)
and never reach the model.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

import dask.array as da
import numpy as np
import xarray as xr

from rtsflow.model.checkpoint import ModelSpec, load_checkpoint

__all__ = ["DEFAULT_TTA", "lattice", "load_count", "predict", "predict_block", "predict_window", "tile_stats"]

#: Test-time augmentation by default (the lazy API, ``rtsflow predict`` and a run's ``inference.tta``): each
#: window's probability is the mean over its 8 flips and quarter turns (8x the model's work). On: the map no
#: longer depends on which way the ground faces the grid, and the detector's false positives on noise went
#: 6 → 0 on the generalisation bench (benchmarks/RESULTS.md, "Test-time augmentation on by default").
DEFAULT_TTA = True

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


def tile_stats() -> dict[str, int]:
    """Tiles run through the model and all-NaN tiles skipped in this process (summed over models)."""
    from rtsflow.model.engine import _ENGINES

    out = {"tiles": 0, "skipped": 0}
    for engine in list(_ENGINES.values()):
        out["tiles"] += engine.stats["tiles"]
        out["skipped"] += engine.stats["skipped"]
    return out


def lattice(*, tile: int, halo: int) -> tuple[int, int]:
    """``(step, margin)`` of the tile lattice: output cells of ``step`` px, context ``margin`` px each side."""
    if halo < 0 or halo % 2:
        raise ValueError(f"halo must be an even number of pixels >= 0, got {halo}")
    if tile < 32 or (tile + halo) % 32:
        raise ValueError(f"tile + halo ({tile} + {halo}) must be a multiple of 32 (the encoder's strides)")
    return tile, halo // 2


def _aligned_chunks(chunks: Sequence[int], origin: int, step: int, margin: int) -> tuple[int, ...]:
    """Chunk sizes close to ``chunks`` whose boundaries fall on lattice lines (global index ≡ 0 mod step).

    The first chunk ends at a lattice line, interior chunks are whole multiples of
    ``step``; a chunk narrower than ``margin`` is merged into its neighbour
    (``map_overlap`` cannot pad by more than a chunk).
    """
    n = int(sum(chunks))
    k = max(1, round(float(np.median(chunks)) / step))
    first = (-origin) % step or step * k
    sizes, pos = [], 0
    size = min(first, n)
    while pos < n:
        sizes.append(size)
        pos += size
        size = min(step * k, n - pos)
    if len(sizes) > 1 and sizes[0] < margin:
        sizes[1] += sizes.pop(0)
    if len(sizes) > 1 and sizes[-1] < margin:
        sizes[-2] += sizes.pop()
    return tuple(sizes)


def predict_block(
    bands: np.ndarray,
    *,
    spec: ModelSpec,
    halo: int,
    tile: int,
    pad: int,
    origin: tuple[int, int],
    chunk_starts: tuple[Sequence[int], Sequence[int]],
    batch_size: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    tta: bool,
    block_info: dict | None = None,
) -> np.ndarray:
    """Probability of one block padded by ``pad``: ``(band, y + 2p, x + 2p)`` → ``(y + 2p, x + 2p)``.

    Each output cell of ``tile`` px is predicted from a window widened by ``halo / 2``
    on every side (neighbouring windows overlap by ``halo``). The padding is NaN in the output
    (``map_overlap`` trims it).
    """
    from rtsflow.model.engine import engine_for

    engine = engine_for(spec, tile=tile, halo=halo, device=device, precision=precision, batch_size=batch_size,
                        tta=tta)  # fmt: skip
    _, ny, nx = bands.shape
    depth = pad
    by, bx = ny - 2 * depth, nx - 2 * depth
    i, j = block_info[0]["chunk-location"][1:] if block_info else (0, 0)
    gy0 = origin[0] + int(chunk_starts[0][i])
    gx0 = origin[1] + int(chunk_starts[1][j])
    out = np.full((ny, nx), np.nan, dtype=np.float32)
    out[depth : depth + by, depth : depth + bx] = engine.run(
        _array_fetch(bands, row=gy0 - depth, col=gx0 - depth), rows=(gy0, gy0 + by), cols=(gx0, gx0 + bx)
    )
    return out


def _array_fetch(bands: np.ndarray, *, row: int, col: int):
    """Window reads (global pixel indices) from an in-memory ``(band, y, x)`` stack whose first pixel is
    ``(row, col)``; NaN beyond it."""

    def fetch(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        out = np.full((bands.shape[0], r1 - r0, c1 - c0), np.nan, dtype=np.float32)
        ys = slice(max(r0, row), min(r1, row + bands.shape[1]))
        xs = slice(max(c0, col), min(c1, col + bands.shape[2]))
        if ys.start < ys.stop and xs.start < xs.stop:
            out[:, ys.start - r0 : ys.stop - r0, xs.start - c0 : xs.stop - c0] = bands[
                :, ys.start - row : ys.stop - row, xs.start - col : xs.stop - col
            ]
        return out

    return fetch


def predict(
    features: xr.Dataset,
    *,
    spec: ModelSpec,
    bands: Sequence[str],
    halo: int = 64,
    tile: int = 512,
    batch_size: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    grid=None,
    tta: bool = DEFAULT_TTA,
) -> xr.DataArray:
    """Lazy probability map of a feature dataset (``float32``, NaN where no valid input).

    With ``grid`` (the rtsflow grid of ``features``) the tile lattice is anchored
    to the global grid, so overlapping regions get identical probabilities;
    without it, to the array's first pixel. Results never depend on chunking.
    ``tta`` (default, as the run config's ``inference.tta``): each window's probability is the
    mean over its eight flips and quarter turns (:func:`rtsflow.model.engine.dihedral_mean`);
    ``False``: one view, eight times less model work.

    Submit it to GPU workers with ``client.compute(prob, resources={"GPU": 1})``
    (annotations set while building the graph are dropped by fusion).
    """
    step, margin = lattice(tile=tile, halo=halo)
    origin = (0, 0) if grid is None else _origin(features, grid)
    stack = da.stack([features[b].data.astype(np.float32) for b in bands])
    in_chunks = stack.chunks[1:]
    # Chunks on lattice lines: every tile lies within its chunk ± margin, and none is run twice.
    aligned = tuple(_aligned_chunks(c, o, step, margin) for c, o in zip(in_chunks, origin, strict=True))
    stack = stack.rechunk((len(bands), *aligned))
    pad = margin
    chunks = stack.chunks
    starts = (tuple(np.cumsum((0, *chunks[1][:-1])).tolist()), tuple(np.cumsum((0, *chunks[2][:-1])).tolist()))
    prob = da.map_overlap(
        predict_block, stack, depth={0: 0, 1: pad, 2: pad}, boundary=np.nan, trim=True, drop_axis=0,
        dtype=np.float32, meta=np.empty((0, 0), np.float32), spec=spec, halo=halo, tile=tile, pad=pad,
        origin=origin, chunk_starts=starts, batch_size=batch_size, device=device, precision=precision, tta=tta,
    )  # fmt: skip
    prob = prob.rechunk(in_chunks)
    return _as_probability(prob, features, spec=spec, tile=tile, halo=halo, tta=tta)


def _as_probability(
    prob: da.Array, like: xr.Dataset, *, spec: ModelSpec, tile: int, halo: int, tta: bool
) -> xr.DataArray:
    out = xr.DataArray(prob, dims=("y", "x"), coords={"x": like["x"], "y": like["y"]}, name="probability")
    out.attrs = {"long_name": "RTS probability", "units": "1", "model_sha256": spec.sha256,
                 "description": probability_description(tile=tile, halo=halo, tta=tta)}  # fmt: skip
    return out


def probability_description(*, tile: int, halo: int, tta: bool) -> str:
    """The ``description`` attribute of a probability map (the lazy API and the probability stage)."""
    views = "; mean over their 8 flips and quarter turns." if tta else "."
    return f"Sigmoid of the model output; {tile} px cells, {tile + halo} px windows{views}"


def _origin(features: xr.Dataset, grid) -> tuple[int, int]:
    w = grid.window_from_coords(features["x"].values, features["y"].values)
    return w.row, w.col


def predict_window(
    features: xr.Dataset,
    *,
    rows: slice,
    cols: slice,
    spec: ModelSpec,
    bands: Sequence[str],
    halo: int = 64,
    tile: int = 512,
    batch_size: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    grid=None,
    tta: bool = DEFAULT_TTA,
) -> xr.DataArray:
    """Lazy probability of one window of ``features`` (e.g. a grid block of a run), one task.

    Runs exactly the lattice windows that meet the window, reading up to
    ``tile + halo`` pixels of context around it, so it equals the same window of :func:`predict`
    over the whole dataset.
    """
    lattice(tile=tile, halo=halo)  # validates tile and halo
    ny, nx = features.sizes["y"], features.sizes["x"]
    p = tile + halo
    r0, r1 = max(rows.start - p, 0), min(rows.stop + p, ny)
    c0, c1 = max(cols.start - p, 0), min(cols.stop + p, nx)
    sub = features[list(bands)].isel(y=slice(r0, r1), x=slice(c0, c1))
    stack = da.stack([sub[b].data.astype(np.float32) for b in bands]).rechunk(-1)
    # NaN beyond the dataset, so the padded window is always the window ± tile.
    widths = ((0, 0), (p - (rows.start - r0), p - (r1 - rows.stop)), (p - (cols.start - c0), p - (c1 - cols.stop)))
    stack = da.pad(stack, widths, mode="constant", constant_values=np.nan).rechunk(-1)
    origin = (0, 0) if grid is None else _origin(features, grid)
    g = (origin[0] + rows.start, origin[1] + cols.start)
    prob = da.map_blocks(
        predict_block, stack, drop_axis=0, dtype=np.float32, meta=np.empty((0, 0), np.float32), spec=spec,
        halo=halo, tile=tile, pad=p, origin=g, chunk_starts=((0,), (0,)), batch_size=batch_size, device=device,
        precision=precision, tta=tta,
    )[p:-p, p:-p]  # fmt: skip
    return _as_probability(prob, features.isel(y=rows, x=cols), spec=spec, tile=tile, halo=halo, tta=tta)
