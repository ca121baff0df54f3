"""The dDEM's spatially correlated error model of one pair, fitted on stable terrain.

Samples are the cells of a global 256-px lattice, grouped by grid block; blocks,
and the windows in each, are taken in a fixed pseudo-random order of their
global lattice index (spread over the region, the same for any region, and
independent of chunking). In each window the standardised dDEM (dh / σ) off
stable terrain is left out (RTS polygons, buffered; water; the quality mask;
values beyond 4 NMADs of the window's median) and semivariance sums are kept,
with the moments (n, Σz, Σz²) of what is left: the variance of dh / σ over all
the sampled windows, which bounds the fit's total sill. Windows are added in
order, up to ``PER_BLOCK_PAIRS`` pixel pairs per block and ``TARGET_PAIRS`` in
all, and a three-range variogram is fitted (:mod:`rtsflow.kernels.variogram`).

:func:`error_model` builds the model lazily; the reduce stage
(:func:`rtsflow.stages.polygons.fit_error_model`, in one task) reads block by
block only while the selection needs more. Both give the same model.
"""

from __future__ import annotations

import logging

import dask
import geopandas as gpd
import numpy as np
import xarray as xr
from dask.delayed import Delayed

from rtsflow.grid import Grid, Window
from rtsflow.kernels import gdal
from rtsflow.kernels.coreg import nmad
from rtsflow.kernels.select import polygons_in_box
from rtsflow.kernels.variogram import LAGS_PX, VariogramModel, fit_variogram, semivariance_sums

__all__ = ["block_bands", "block_window_sums", "error_model", "sample_plan", "stable_variogram", "window_sums"]

log = logging.getLogger(__name__)
SAMPLE_SIZE = 256  # px: lags up to 128 px (1.3 km at 10 m) inside one window
TARGET_PAIRS = 2_000_000  # pixel pairs at lag 1: ~16 windows of stable terrain, whatever the region's size
PER_BLOCK_PAIRS = 500_000  # so that at least four blocks contribute where there are four
MIN_STABLE = 1000  # a window with fewer stable pixels has no reliable median / NMAD: skipped
POLYGON_BUFFER_M = 20.0  # an RTS's rim is disturbed too
OUTLIER_NMAD = 4.0  # blunders and unmapped change are not the error the volumes carry


def _order(r: int, c: int) -> tuple[int, int, int]:
    """A fixed pseudo-random order of lattice cells (spreads the samples, same for every region)."""
    return ((r * 73_856_093) ^ (c * 19_349_663)) % 1_000_003, r, c


def sample_plan(domain: Window, *, grid: Grid) -> list[tuple[Window, list[Window]]]:
    """The grid blocks that meet ``domain`` and their sample windows (clipped to it), each in sampling order.

    Windows are the cells of a global ``SAMPLE_SIZE``-px lattice (the block, for
    smaller blocks); blocks and the windows inside each are ordered by a fixed
    hash of their global lattice index.
    """
    bs = grid.block_size
    size = SAMPLE_SIZE if bs % SAMPLE_SIZE == 0 else bs
    plan = []
    for br in range(domain.row // bs, -(-domain.row_stop // bs)):
        for bc in range(domain.col // bs, -(-domain.col_stop // bs)):
            block = Window(br * bs, bc * bs, bs, bs).intersection(domain)
            if block is None:
                continue
            cells = []
            for r in range(block.row // size, -(-block.row_stop // size)):
                for c in range(block.col // size, -(-block.col_stop // size)):
                    cells.append((_order(r, c), Window(r * size, c * size, size, size).intersection(block)))
            plan.append((_order(br, bc), block, [w for _, w in sorted(cells, key=lambda t: t[0])]))
    return [(block, windows) for _, block, windows in sorted(plan, key=lambda t: t[0])]


def window_sums(ddem, sigma, water, quality, polygons: gpd.GeoDataFrame | None, *, grid: Grid,
                window: Window) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Semivariance sums, pair counts and moments (n, Σz, Σz²) of z = dh / σ over one window's stable terrain.

    Zeros where there is too little. The semivariances are of z less the window's
    median (the same differences); the moments are of z itself, so that windows
    add up to the variance over the whole sample, long-range error included.
    """
    ddem, sigma = np.asarray(ddem, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
    stable = np.isfinite(ddem) & np.isfinite(sigma) & (sigma > 0)
    if water is not None:
        stable &= np.asarray(water) == 0
    if quality is not None:
        stable &= np.asarray(quality) == 0
    if polygons is not None and len(polygons) and stable.sum() >= MIN_STABLE:
        box, pad = grid.bounds(window), POLYGON_BUFFER_M
        sub = polygons_in_box(polygons, (box[0] - pad, box[1] - pad, box[2] + pad, box[3] + pad))
        if len(sub):
            shapes = ((g, 1) for g in sub.geometry.buffer(pad))
            stable &= gdal.rasterize(shapes, out_shape=window.shape, transform=grid.transform(window), fill=0,
                                     dtype="uint8") == 0  # fmt: skip
    if stable.sum() < MIN_STABLE:
        return np.zeros(len(LAGS_PX)), np.zeros(len(LAGS_PX)), np.zeros(3)
    z = np.where(stable, ddem / np.where(stable, sigma, 1.0), np.nan)
    median = np.nanmedian(z)
    z -= median
    z[np.abs(z) > OUTLIER_NMAD * nmad(z)] = np.nan
    kept = z[np.isfinite(z)] + median
    return *semivariance_sums(z), np.array([kept.size, kept.sum(), (kept**2).sum()])


def _select(blocks) -> tuple[np.ndarray, np.ndarray, float | None]:
    """Add window sums in sampling order: up to ``PER_BLOCK_PAIRS`` per block, until ``TARGET_PAIRS`` in all.

    Returns the summed semivariances, pair counts and the variance of z over the selected windows.
    """
    sums, counts, moments = np.zeros(len(LAGS_PX)), np.zeros(len(LAGS_PX)), np.zeros(3)
    for windows in blocks:
        in_block = 0.0
        for s, c, m in windows:
            if in_block >= PER_BLOCK_PAIRS or counts[0] >= TARGET_PAIRS:
                break
            sums, counts, moments, in_block = sums + s, counts + c, moments + m, in_block + c[0]
    n, total, squares = moments
    variance = float(squares / n - (total / n) ** 2) if n > 1 else None
    return sums, counts, variance


def stable_variogram(blocks, *, resolution: float) -> VariogramModel | None:
    """Select window sums (per block, in sampling order) and fit; ``None`` (logged) where that fails."""
    sums, counts, variance = _select(blocks)
    try:
        return fit_variogram(sums, counts, resolution=resolution, variance=variance)
    except (ValueError, RuntimeError) as e:
        log.warning("error model: %s; using the fixed correlation length", e)
        return None


def block_bands(features: xr.Dataset, window: Window, origin: Window):
    """The (lazy) ddem, ddem_sigma, water and quality of ``window`` (``None`` for a band the store lacks)."""
    sl = {"y": slice(window.row - origin.row, window.row_stop - origin.row),
          "x": slice(window.col - origin.col, window.col_stop - origin.col)}  # fmt: skip
    return [features[v].isel(sl).data if v in features else None for v in ("ddem", "ddem_sigma", "water", "quality")]


def block_window_sums(ddem, sigma, water, quality, polygons, *, grid: Grid, block: Window,
                       windows: list[Window]) -> list[tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """The block's window sums in order, up to ``PER_BLOCK_PAIRS`` (all that :func:`_select` can use of it)."""
    bands, out, pairs = (ddem, sigma, water, quality), [], 0.0
    for w in windows:
        if pairs >= PER_BLOCK_PAIRS:
            break
        out.append(window_sums(*(b[w.relative_to(block)] if b is not None else None for b in bands), polygons,
                               grid=grid, window=w))  # fmt: skip
        pairs += out[-1][1][0]
    return out


def error_model(features: xr.Dataset, polygons: gpd.GeoDataFrame | Delayed | None, *, grid: Grid) -> Delayed:
    """Lazily: the pair's :class:`~rtsflow.kernels.variogram.VariogramModel` (or ``None`` where it cannot be fitted)."""
    domain = grid.window_from_coords(features["x"].values, features["y"].values)
    if polygons is not None and not isinstance(polygons, Delayed):
        polygons = dask.delayed(polygons)
    blocks = [dask.delayed(block_window_sums)(*block_bands(features, block, domain), polygons, grid=grid, block=block,
                                               windows=windows)
              for block, windows in sample_plan(domain, grid=grid)]  # fmt: skip
    return dask.delayed(stable_variogram)(blocks, resolution=grid.resolution)
