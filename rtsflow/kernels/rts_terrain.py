"""Where each RTS sits: elevation, slope, aspect and distance to water under many polygons at once (pure NumPy).

Like :mod:`rtsflow.kernels.zonal`, one pass over a block with ``np.bincount``;
sums add and minima combine across blocks, so results do not depend on
how the region is cut.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

from rtsflow.kernels.terrain import gradient_horn

__all__ = ["TERRAIN_FIELDS", "WATER_SEARCH_PX", "terrain_sums", "terrain_table"]

TERRAIN_FIELDS = ("n_dem", "sum_elevation", "sum_slope", "sum_dzdx", "sum_dzdn")

#: Distance to water is searched this many pixels around each block (3 km at 10 m); farther is reported as NaN.
WATER_SEARCH_PX = 300


def terrain_sums(
    labels: np.ndarray,
    *,
    n_labels: int,
    dem: np.ndarray,
    water: np.ndarray | None,
    resolution: float,
    water_halo: int = WATER_SEARCH_PX,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-label terrain sums and the smallest distance to water over one block.

    Parameters
    ----------
    labels
        Polygon index + 1 under each pixel of the block (0 = none).
    dem
        The pre-disturbance surface (the earlier composite) over the block plus a 1-pixel halo.
    water
        Water mask (1 = water) over the block plus ``water_halo`` pixels, or ``None``.

    Returns
    -------
    sums
        ``(n_labels, len(TERRAIN_FIELDS))``: pixels with a gradient, Σ elevation, Σ slope (°),
        Σ dz/dx (east), Σ dz/dy (north).
    minima
        ``(n_labels, 1)``: distance (m) from the polygon to the nearest water pixel centre;
        ``inf`` when none lies within ``water_halo`` pixels (or no mask).
    """
    lab = np.asarray(labels).ravel()
    inside = lab > 0
    lab = lab[inside] - 1
    dzdx, dzdn = gradient_horn(dem, resolution=resolution)
    elevation = np.asarray(dem, dtype=np.float64)[1:-1, 1:-1]
    gx, gn, z = dzdx.ravel()[inside], dzdn.ravel()[inside], elevation.ravel()[inside]
    ok = np.isfinite(gx) & np.isfinite(gn) & np.isfinite(z)
    slope = np.degrees(np.arctan(np.hypot(gx, gn)))

    def bc(weights):
        return np.bincount(lab, weights=weights, minlength=n_labels)[:n_labels].astype(np.float64)

    sums = np.stack([bc(ok.astype(np.float64)), bc(np.where(ok, z, 0.0)), bc(np.where(ok, slope, 0.0)),
                     bc(np.where(ok, gx, 0.0)), bc(np.where(ok, gn, 0.0))], axis=1)  # fmt: skip
    minima = np.full((n_labels, 1), np.inf)
    if water is not None and lab.size:
        wet = np.asarray(water) == 1
        if wet.any():
            h = water_halo
            dist = ndimage.distance_transform_edt(~wet)[h : wet.shape[0] - h, h : wet.shape[1] - h] * resolution
            dist = np.where(dist < h * resolution, dist, np.inf)  # beyond the search radius: unknown
            np.minimum.at(minima[:, 0], lab, dist.ravel()[inside])
    return sums, minima


def terrain_table(sums: np.ndarray, minima: np.ndarray, *, true_north_deg: np.ndarray) -> pd.DataFrame:
    """Mean elevation and slope, aspect (direction the slope faces) and distance to water per polygon.

    ``true_north_deg``: the grid azimuth of true north at each polygon (polar stereographic grid north
    is not true north); ``aspect_deg`` is from true north, ``aspect_grid_deg`` from grid north (+y).
    The aspect is that of the mean gradient over the polygon (downslope direction).
    """
    f = {name: sums[:, i] for i, name in enumerate(TERRAIN_FIELDS)}
    with np.errstate(divide="ignore", invalid="ignore"):
        n = f["n_dem"]
        gx, gn = f["sum_dzdx"] / n, f["sum_dzdn"] / n
        aspect_grid = np.degrees(np.arctan2(-gx, -gn)) % 360.0
        aspect = (aspect_grid - np.asarray(true_north_deg)) % 360.0
        flat = ~(np.hypot(gx, gn) > 0)
        return pd.DataFrame({
            "elevation_m": f["sum_elevation"] / n,
            "slope_deg": f["sum_slope"] / n,
            "aspect_deg": np.where(flat, np.nan, aspect),
            "aspect_grid_deg": np.where(flat, np.nan, aspect_grid),
            "distance_to_water_m": np.where(np.isfinite(minima[:, 0]), minima[:, 0], np.nan),
        })  # fmt: skip
