"""Lazy per-RTS mass wasting: zonal sums of every polygon per block, in parallel, then combined."""

from __future__ import annotations

import dask
import dask.array as da
import geopandas as gpd
import numpy as np
import xarray as xr
from dask.delayed import Delayed

from rtsflow.graph.chunks import chunk_windows
from rtsflow.grid import Grid, Window
from rtsflow.kernels import gdal
from rtsflow.kernels.local_reference import ring_halo_px, ring_labels
from rtsflow.kernels.masswasting import mass_wasting_table
from rtsflow.kernels.select import polygons_in_box
from rtsflow.kernels.zonal import MAX_FIELDS, ZONAL_FIELDS, combine_zonal, zonal_sums

__all__ = ["FIXED_CORRELATION_LENGTH", "assemble_measures", "block_sums", "measure", "polygon_labels"]

#: L (m) of the fixed-length error model: used when ``correlation_length`` is a number, and where the
#: variogram cannot be fitted (too little stable terrain).
FIXED_CORRELATION_LENGTH = 200.0


def polygon_labels(polygons: gpd.GeoDataFrame, *, grid: Grid, window: Window) -> np.ndarray | None:
    """Row position + 1 of the polygon under each pixel of ``window`` (0 = none); ``None`` if none overlaps."""
    if len(polygons) == 0:
        return None
    box = grid.bounds(window)
    sub = polygons_in_box(polygons, box)  # not .cx: tasks in other threads share `polygons`
    if len(sub) == 0:
        return None
    index = polygons.index.get_indexer(sub.index)
    return gdal.rasterize(
        zip(sub.geometry, index + 1, strict=True), out_shape=window.shape, transform=grid.transform(window),
        fill=0, dtype="int32",
    )  # fmt: skip


def block_sums(polygons: gpd.GeoDataFrame, ddem, sigma, water, quality, *, grid: Grid, window: Window,
               halo: int = 0):  # fmt: skip
    """Zonal sums of the polygons that overlap one block (rasterised once, all polygons together).

    The bands cover ``window`` grown by ``halo`` pixels on every side: polygons are summed
    inside ``window`` only, and so are the stable rings around them
    (:mod:`rtsflow.kernels.local_reference`), whose pixels are assigned to their nearest
    polygon with the halo in view (``halo`` ≥ :func:`ring_halo_px`; 0: no ring sums).
    """
    n = len(polygons)
    grown = Window(window.row - halo, window.col - halo, window.height + 2 * halo, window.width + 2 * halo)
    labels = polygon_labels(polygons, grid=grid, window=grown)
    if labels is None:
        return np.zeros((n, len(ZONAL_FIELDS))), np.zeros((n, len(MAX_FIELDS)))
    ring = ring_labels(labels, resolution=grid.resolution) if halo else None
    inner = (slice(halo, halo + window.height), slice(halo, halo + window.width))

    def cut(a):
        return None if a is None else np.asarray(a)[inner]

    area = grid.pixel_ground_area(window, step=16)
    return zonal_sums(labels[inner], n_labels=n, ddem=cut(ddem), sigma=cut(sigma), pixel_area=area,
                      water=cut(water), quality=cut(quality), ring=cut(ring))  # fmt: skip


def assemble_measures(
    polygons: gpd.GeoDataFrame,
    parts,
    *,
    years: float,
    nominal_area: float,
    correlation_length: float | str,
    error_model=None,
    resolution: float,
):
    if parts:
        sums, maxima = combine_zonal(parts)
    else:
        sums, maxima = np.zeros((len(polygons), len(ZONAL_FIELDS))), np.zeros((len(polygons), len(MAX_FIELDS)))
    length = correlation_length if isinstance(correlation_length, int | float) else FIXED_CORRELATION_LENGTH
    table = mass_wasting_table(sums, maxima, years=years, nominal_area=nominal_area, correlation_length=length,
                               error_model=error_model, resolution=resolution)  # fmt: skip
    table.index = polygons.index
    out = polygons.drop(columns=[c for c in table.columns if c in polygons.columns]).join(table)
    out = gpd.GeoDataFrame(out, geometry="geometry", crs=polygons.crs)
    out.attrs["error_model"] = error_model.to_dict() if error_model is not None else {"correlation_length_m": length}
    return out


def _with_halo(a, halo: int):
    """``a`` with every chunk grown by ``halo`` pixels of its neighbours (outside the array: NaN or 0)."""
    fill = np.nan if np.issubdtype(a.dtype, np.floating) else 0
    return da.overlap.overlap(a, depth={0: halo, 1: halo}, boundary={0: fill, 1: fill})


def measure(
    polygons: gpd.GeoDataFrame | Delayed,
    features: xr.Dataset,
    *,
    grid: Grid,
    correlation_length: float | str = "auto",
) -> Delayed:
    """Area, elevation and volume change (± σ) of every polygon from a feature dataset.

    Each dask chunk rasterises the polygons that overlap it once and sums
    under all of them with ``np.bincount``; partial sums are added across
    chunks. No raster is opened per polygon.

    Parameters
    ----------
    polygons
        GeoDataFrame (EPSG:3413) or a delayed one (e.g. from :func:`rtsflow.graph.polygons.vectorize`).
    features
        Pair features with ``ddem``, ``ddem_sigma`` (and ``water``, ``quality``).
    correlation_length
        ``"auto"``: fit a three-range variogram of the standardised dDEM on stable
        terrain (outside the polygons; :mod:`rtsflow.graph.error_model`) for the
        correlated volume uncertainty; a number: one fixed correlation length (m).

    Returns
    -------
    dask.delayed.Delayed
        A GeoDataFrame: the polygons with the columns of
        :func:`rtsflow.kernels.masswasting.mass_wasting_table`, plus
        ``period_start``/``period_end``.
    """
    if isinstance(correlation_length, str) and correlation_length != "auto":
        raise ValueError(f"correlation_length: expected 'auto' or a length in m, got {correlation_length!r}")
    window = grid.window_from_coords(features["x"].values, features["y"].values)
    if not isinstance(polygons, Delayed):
        polygons = dask.delayed(polygons)  # one graph key, not a copy per task
    arrays = [features[v].data for v in ("ddem", "ddem_sigma")]
    for v in ("water", "quality"):
        arrays.append(features[v].data if v in features else None)
    chunks = arrays[0].chunks
    # Each chunk is read with a halo, so that the stable ring around a polygon by a chunk edge is whole.
    halo = ring_halo_px(resolution=grid.resolution)
    if min(min(c) for c in chunks) < halo:
        arrays = [a.rechunk(max(halo, 256)) if a is not None else None for a in arrays]
        chunks = arrays[0].chunks
    delayed = [_with_halo(a, halo).to_delayed(optimize_graph=False) if a is not None else None for a in arrays]
    parts = []
    for i, j, w in chunk_windows(chunks, window):
        blocks = [d[i, j] if d is not None else None for d in delayed]
        parts.append(dask.delayed(block_sums)(polygons, *blocks, grid=grid, window=w, halo=halo))
    years = float(features.attrs.get("years", 1.0))
    model = None
    if correlation_length == "auto":
        from rtsflow.graph.error_model import error_model

        model = error_model(features, polygons, grid=grid)
    result = dask.delayed(assemble_measures)(polygons, parts, years=years, nominal_area=grid.pixel_area_nominal,
                                             correlation_length=correlation_length, error_model=model,
                                             resolution=grid.resolution)  # fmt: skip
    start, end = features.attrs.get("earlier"), features.attrs.get("later")
    return dask.delayed(lambda g: g.assign(period_start=start, period_end=end))(result)
