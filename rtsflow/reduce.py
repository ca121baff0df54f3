"""Probability + features → measured, filtered RTS polygons (one lazy graph)."""

from __future__ import annotations

import dask
import geopandas as gpd
import xarray as xr
from dask.delayed import Delayed

from rtsflow.graph.chunks import chunk_windows
from rtsflow.graph.masswasting import measure
from rtsflow.graph.polygons import grown_detections, vectorize
from rtsflow.grid import Grid
from rtsflow.kernels.grow import DEFAULT_GROWTH, OutlineGrowth
from rtsflow.postprocess import DEFAULT_FILTERS, FilterConfig, apply_filters

__all__ = ["detect_rts", "probability_on_grid"]


def probability_on_grid(path, *, like: xr.DataArray, grid: Grid) -> xr.DataArray:
    """A probability layer on the grid of ``like`` (lazy for Zarr; GeoTIFFs are warped bilinearly)."""
    from pathlib import Path

    import dask.array as da
    import numpy as np
    from rasterio.enums import Resampling

    from rtsflow.io.rasters import check_layer_values, inspect_raster, warp_to_window

    path = Path(path)
    window = grid.window_from_coords(like["x"].values, like["y"].values)
    if path.is_dir():
        from rtsflow.io.repo import zarr_store

        ds = xr.open_zarr(zarr_store(path), consolidated=False, chunks={})
        prob = ds["probability"]
        if prob.sizes != like.sizes or not np.allclose(prob["x"], like["x"]) or not np.allclose(prob["y"], like["y"]):
            raise ValueError(f"{path}: 'probability' is not on the features' grid")
        return prob.chunk(dict(zip(like.dims, like.data.chunks, strict=True))).astype("float32")
    info = inspect_raster(path, sidecar=path, key="probability")
    check_layer_values(info, key="probability")
    rows: dict[int, list] = {}
    for i, _, w in chunk_windows(like.data.chunks, window):
        part = dask.delayed(warp_to_window)(info, grid=grid, window=w, resampling=Resampling.bilinear)
        rows.setdefault(i, []).append(da.from_delayed(part, shape=w.shape, dtype=np.float32))
    rows = [da.concatenate(r, axis=1) for _, r in sorted(rows.items())]
    return xr.DataArray(da.concatenate(rows, axis=0), dims=like.dims, coords={"x": like["x"], "y": like["y"]})


def detect_rts(
    probability: xr.DataArray,
    features: xr.Dataset,
    *,
    grid: Grid,
    threshold: float | None = 0.5,
    filters: FilterConfig = DEFAULT_FILTERS,
    correlation_length: float | str = "auto",
    carbon=None,
    dem: xr.DataArray | None = None,
    grow_outlines: OutlineGrowth | None = DEFAULT_GROWTH,
) -> Delayed:
    """Threshold, vectorise and stitch, measure mass wasting, and apply the post-processing filters.

    Parameters
    ----------
    probability
        Model probability on the features' grid (or a 0/1 mask with ``threshold=None``).
    features
        Pair features (``ddem``, ``ddem_sigma``, ``water``, ``quality``).
    correlation_length
        ``"auto"`` (a three-range DEM-error variogram fitted on stable terrain) or a fixed length (m); see
        :func:`rtsflow.graph.masswasting.measure`.
    dem
        The pre-disturbance surface (the earlier composite): adds each polygon's elevation, slope,
        aspect and distance to water (:func:`rtsflow.graph.rts_terrain.rts_terrain`).
    carbon
        A :class:`rtsflow.carbon.CarbonModel`: add the carbon each RTS mobilised (``carbon_kg`` ± σ).
    grow_outlines
        Grow each detected region into the significant loss around it before tracing
        (:class:`rtsflow.kernels.grow.OutlineGrowth`, the default as in runs; needs ``ddem_norm``
        in ``features``); ``None``: the outlines as the model (or a mask) draws them.

    Returns
    -------
    dask.delayed.Delayed
        A GeoDataFrame of every polygon, with ``kept`` and ``filter_reason``.
    """
    if grow_outlines is not None:
        if "ddem_norm" not in features:
            raise ValueError("detect_rts: grow_outlines needs 'ddem_norm' in features (the dDEM in σ); "
                             "pass grow_outlines=None for the outlines as drawn")  # fmt: skip
        probability = grown_detections(probability, features["ddem_norm"], grid=grid, threshold=threshold,
                                       growth=grow_outlines)  # fmt: skip
        threshold = None
    polygons = vectorize(probability, grid=grid, threshold=threshold)
    measured = sigma_source = measure(polygons, features, grid=grid, correlation_length=correlation_length)
    if dem is not None:
        from rtsflow.graph.rts_terrain import rts_terrain

        water = features["water"] if "water" in features else None
        terrain = rts_terrain(polygons, dem, water=water, grid=grid)
        measured = dask.delayed(lambda m, t: m.join(t))(measured, terrain)
    filtered = dask.delayed(apply_filters)(measured, config=filters)
    if carbon is not None:
        from rtsflow.carbon import add_carbon

        filtered = dask.delayed(add_carbon)(filtered, model=carbon)
    return dask.delayed(_with_error_model)(filtered, sigma_source)


def _with_error_model(rts: gpd.GeoDataFrame, measured: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    rts = rts.copy(deep=False)
    rts.attrs["error_model"] = measured.attrs.get("error_model")  # the volume σ's model (filters drop attrs)
    return rts
