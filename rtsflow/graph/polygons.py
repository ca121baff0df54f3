"""Lazy probability → RTS polygons (vectorised per block in parallel, stitched across blocks)."""

from __future__ import annotations

from functools import partial

import dask
import geopandas as gpd
import numpy as np
import shapely
import xarray as xr
from dask.delayed import Delayed
from pyproj import Transformer

from rtsflow.graph.chunks import chunk_windows
from rtsflow.grid import GRID_CRS, Grid
from rtsflow.kernels.grow import OutlineGrowth, grow_detections, growth_halo_px
from rtsflow.kernels.vectorize import BlockPieces, stitch, vectorize_block

__all__ = ["detections", "grown_detections", "polygons_from_mask", "vectorize"]


def detections(values: np.ndarray, *, threshold: float | None) -> np.ndarray:
    """``values ≥ threshold`` (NaN: not detected), or a 0/1 mask as bool with ``threshold=None``."""
    if threshold is None:
        return np.nan_to_num(np.asarray(values, dtype=np.float32)) != 0
    with np.errstate(invalid="ignore"):
        return np.asarray(values) >= threshold


def grown_block(values: np.ndarray, ddem_norm: np.ndarray, *, threshold: float | None, growth: OutlineGrowth,
                resolution: float) -> np.ndarray:  # fmt: skip
    """One block's detections grown into significant loss (the stage's and the lazy graph's one kernel call)."""
    return grow_detections(detections(values, threshold=threshold), ddem_norm, growth=growth, resolution=resolution)


def grown_detections(probability: xr.DataArray, ddem_norm: xr.DataArray, *, grid: Grid,
                     threshold: float | None, growth: OutlineGrowth) -> xr.DataArray:  # fmt: skip
    """Lazy: the detections (``probability ≥ threshold``) grown into significant loss (bool).

    :func:`rtsflow.kernels.grow.grow_detections` on every chunk with the halo that makes the result
    that of the whole raster (:func:`rtsflow.kernels.grow.growth_halo_px`); trace it with
    :func:`vectorize` and ``threshold=None``.
    """
    import dask.array as da

    halo = growth_halo_px(growth, resolution=grid.resolution)

    block = partial(grown_block, threshold=threshold, growth=growth, resolution=grid.resolution)
    data = da.map_overlap(block, probability.data, ddem_norm.data.astype(np.float32), depth=halo,
                          boundary="none", dtype=bool, allow_rechunk=True)  # fmt: skip
    return probability.copy(data=data).rename("detected")


def _block_pieces(values: np.ndarray, *, threshold: float | None, transform, block) -> BlockPieces:
    return vectorize_block(detections(values, threshold=threshold), transform=transform, block=block)


def polygons_from_mask(pieces: list[BlockPieces], *, grid: Grid) -> gpd.GeoDataFrame:
    """Stitch per-block pieces into a GeoDataFrame with stable ids, blocks, centroids and shape metrics."""
    merged = stitch(pieces)
    # Canonical form: no collinear vertices (unions leave some along block seams), normalised order,
    # so a polygon is the same object however the raster was split.
    geoms = gpd.GeoSeries(shapely.normalize(shapely.simplify([g for g, _ in merged], 0.0)), crs=GRID_CRS)
    centroid = geoms.centroid
    # A stable id: the global flat index of the polygon's first pixel (north-west-most, row-major).
    first = np.array([_first_pixel(g, grid) for g in geoms], dtype=np.int64).reshape(-1, 2)  # (0, 2): none found
    # contains_xy (in _first_pixel) leaves each geometry prepared; prepared GEOS geometries are not safe in
    # concurrent threads, and this table goes to every block task (rtsflow.kernels.select).
    shapely.destroy_prepared(np.asarray(geoms.values, dtype=object))
    rts_id = first[:, 0] * grid.n_pixels + first[:, 1]
    to_lonlat = Transformer.from_crs(GRID_CRS, "EPSG:4326", always_xy=True)
    lon, lat = to_lonlat.transform(centroid.x.to_numpy(), centroid.y.to_numpy())  # arrays: no float(Series)
    area = geoms.area.to_numpy()
    perimeter = geoms.length.to_numpy()
    hull = geoms.convex_hull.area.to_numpy()
    gdf = gpd.GeoDataFrame(
        {
            "rts_id": rts_id.astype(np.int64),
            "blocks": np.array([";".join(f"{r}_{c}" for r, c in b) for _, b in merged], dtype=object),
            "centroid_x": centroid.x.to_numpy(),
            "centroid_y": centroid.y.to_numpy(),
            "lon": lon,
            "lat": lat,
            "grid_area_m2": area,
            "perimeter_m": perimeter,
            "circularity": 4 * np.pi * area / perimeter**2,
            "solidity": area / hull,
        },
        geometry=geoms.values,
        crs=GRID_CRS,
    )
    return gdf.sort_values("rts_id", kind="stable").reset_index(drop=True)


def _first_pixel(geom, grid: Grid) -> tuple[int, int]:
    """(row, col) of the first pixel of a pixel-traced polygon in row-major order."""
    minx, _, maxx, maxy = geom.bounds
    top = maxy - grid.resolution / 2
    # Pixels of the top row that the polygon covers: scan its centres left to right.
    xs = np.arange(minx + grid.resolution / 2, maxx, grid.resolution)
    inside = shapely.contains_xy(geom, xs, np.full_like(xs, top))
    x = xs[np.argmax(inside)] if inside.any() else xs[0]
    r, c = grid.pixel_of(x, top)
    return int(r), int(c)


def vectorize(probability: xr.DataArray, *, grid: Grid, threshold: float | None = 0.5) -> Delayed:
    """Polygons of ``probability ≥ threshold`` (or of a boolean/0-1 mask with ``threshold=None``).

    Each dask chunk is traced in parallel; pieces touching chunk edges are
    merged afterwards, so the result equals tracing the whole raster at once.

    Returns
    -------
    dask.delayed.Delayed
        Computes to a GeoDataFrame (EPSG:3413): ``rts_id`` (stable: global index
        of the polygon's first pixel), ``blocks`` (chunks it spans, as
        ``row_col``), centroid (EPSG:3413 and lon/lat), grid area, perimeter,
        circularity, solidity.
    """
    window = grid.window_from_coords(probability["x"].values, probability["y"].values)
    data = probability.data
    blocks = data.to_delayed(optimize_graph=False)
    tasks = [
        dask.delayed(_block_pieces)(blocks[i, j], threshold=threshold, transform=grid.transform(w), block=(i, j))
        for i, j, w in chunk_windows(data.chunks, window)
    ]
    return dask.delayed(polygons_from_mask)(tasks, grid=grid)
