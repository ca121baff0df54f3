"""Lazy terrain attributes of RTS polygons: elevation, slope, aspect and distance to water (Dask).

The block function reads the pre-disturbance surface with a 1-pixel halo and
the water mask with a :data:`~rtsflow.kernels.rts_terrain.WATER_SEARCH_PX`
halo; sums and minima combine across chunks, so the result does not depend
on chunking and equals the ``zonal`` stage's.
"""

from __future__ import annotations

import dask
import dask.array as da
import geopandas as gpd
import numpy as np
import pandas as pd
import xarray as xr
from dask.delayed import Delayed
from pyproj import Transformer

from rtsflow.graph.chunks import chunk_windows
from rtsflow.graph.masswasting import polygon_labels
from rtsflow.grid import GRID_CRS, Grid, Window
from rtsflow.kernels.rts_terrain import TERRAIN_FIELDS, WATER_SEARCH_PX, terrain_sums, terrain_table

__all__ = ["assemble_terrain", "block_terrain", "rts_terrain", "true_north_azimuth"]


def block_terrain(polygons: gpd.GeoDataFrame, dem: np.ndarray, water: np.ndarray | None, *, grid: Grid,
                  window: Window) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Terrain sums of the polygons overlapping one block (``dem``/``water`` carry their halos)."""
    n = len(polygons)
    labels = polygon_labels(polygons, grid=grid, window=window)
    if labels is None:
        return np.zeros((n, len(TERRAIN_FIELDS))), np.full((n, 1), np.inf)
    return terrain_sums(labels, n_labels=n, dem=dem, water=water, resolution=grid.resolution,
                        water_halo=WATER_SEARCH_PX)  # fmt: skip


def true_north_azimuth(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Grid azimuth (degrees clockwise from +y) of true north at EPSG:3413 points."""
    to_geo = Transformer.from_crs(GRID_CRS, "EPSG:4326", always_xy=True)
    lon, lat = to_geo.transform(np.asarray(x, float), np.asarray(y, float))
    x2, y2 = to_geo.transform(lon, np.minimum(lat + 0.01, 89.999), direction="INVERSE")
    return np.degrees(np.arctan2(x2 - np.asarray(x, float), y2 - np.asarray(y, float)))


def assemble_terrain(polygons: gpd.GeoDataFrame, parts) -> pd.DataFrame:
    """Combine per-block results into the terrain table of :func:`rtsflow.kernels.rts_terrain.terrain_table`."""
    n = len(polygons)
    sums = np.sum([p[0] for p in parts], axis=0) if parts else np.zeros((n, len(TERRAIN_FIELDS)))
    minima = np.min([p[1] for p in parts], axis=0) if parts else np.full((n, 1), np.inf)
    c = polygons.geometry.centroid
    north = true_north_azimuth(c.x.to_numpy(), c.y.to_numpy()) if n else np.zeros(0)
    table = terrain_table(sums, minima, true_north_deg=north)
    table.index = polygons.index
    return table


def rts_terrain(
    polygons: gpd.GeoDataFrame | Delayed,
    dem: xr.DataArray,
    *,
    water: xr.DataArray | None = None,
    grid: Grid,
) -> Delayed:
    """Elevation, slope, aspect and distance to water of every polygon.

    Parameters
    ----------
    polygons
        RTS polygons (EPSG:3413), or a delayed GeoDataFrame.
    dem
        The pre-disturbance surface (e.g. the earlier composite), dask-backed, on the grid.
    water
        Water mask (1 = water) on the same grid and chunks, or ``None``.

    Returns
    -------
    dask.delayed.Delayed
        A DataFrame indexed like ``polygons``: ``elevation_m``, ``slope_deg``, ``aspect_deg`` (from true north),
        ``aspect_grid_deg``, ``distance_to_water_m`` (NaN beyond ``WATER_SEARCH_PX`` pixels).
    """
    window = grid.window_from_coords(dem["x"].values, dem["y"].values)
    if not isinstance(polygons, Delayed):
        polygons = dask.delayed(polygons)
    z = dem.data if isinstance(dem.data, da.Array) else da.from_array(dem.data, chunks=grid.block_size)
    chunks = z.chunks
    h = WATER_SEARCH_PX
    # Padded, then each chunk sliced with its halo (works for chunks smaller than the halo, unlike overlap).
    dem_p = da.pad(z.astype(np.float64), 1, mode="constant", constant_values=np.nan)
    wet_p = None
    if water is not None:
        wet = da.asarray(water.data).astype(np.float32)
        wet_p = da.pad(wet, h, mode="constant", constant_values=0)
    parts = []
    for _, _, w in chunk_windows(chunks, window):
        r, c = w.row - window.row, w.col - window.col
        dem_b = dem_p[r : r + w.height + 2, c : c + w.width + 2]
        wet_b = wet_p[r : r + w.height + 2 * h, c : c + w.width + 2 * h] if wet_p is not None else None
        parts.append(dask.delayed(block_terrain)(polygons, dem_b, wet_b, grid=grid, window=w))
    return dask.delayed(assemble_terrain)(polygons, parts)
