"""Real terrain for synthetic scenes: a published DEM, moved to the region and tiled by mirroring.

A DEM in a metric projected CRS keeps its own pixel grid; one in geographic
coordinates is reprojected to EPSG:3413 first (bilinear, rasterio). A chosen
point of it (its centre, or a point ``offset`` from it) is moved to the
synthetic region's centre, optionally mirrored and turned by quarter turns
(terrain is terrain: only its shape matters, not where on Earth or how it is
rotated against the EPSG:3413 grid); so a large DEM gives many different
regions, and scenes on separate parts of one DEM share no ground. It is
evaluated with a cubic spline at any coordinates, so shifted observations and
any window give the same heights. Beyond its edges it is mirrored (continuous
heights, no cliffs), which tiles a small DEM over a large region. Ground at or
below ``sea_level_m`` is water (fjords, coast).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

__all__ = ["RasterTerrain"]


@dataclass(frozen=True, eq=False)
class RasterTerrain:
    """Heights ``z`` (rows from the top) on a regular grid with top-left corner ``(x0, y0)`` and ``resolution``.

    Build one with :meth:`from_dem`.
    """

    z: np.ndarray
    x0: float
    y0: float
    resolution: float
    source: str = ""
    sea_level_m: float = 0.0
    _coef: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_coef", ndimage.spline_filter(self.z.astype(np.float64), order=3, mode="mirror"))

    @classmethod
    def from_dem(
        cls,
        path: str | Path,
        *,
        centre: tuple[float, float],
        sea_level_m: float = 0.0,
        offset: tuple[float, float] = (0.0, 0.0),
        turns: int = 0,
        flip: bool = False,
    ) -> RasterTerrain:
        """Read a DEM (any CRS rasterio knows), reproject to EPSG:3413 and put it on ``centre`` (x, y).

        The point ``offset`` (x, y metres, east and north in the DEM's own frame) from the
        DEM's centre lands on ``centre``; ``flip`` mirrors the DEM left–right about that
        point, then ``turns`` quarter turns rotate it anticlockwise (exact: no resampling).
        """
        import rasterio
        from rasterio.warp import Resampling, calculate_default_transform, reproject

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"terrain DEM {path} does not exist")
        with rasterio.open(path) as src:
            if src.crs is None:
                raise ValueError(f"terrain DEM {path} has no CRS")
            if src.crs.is_projected and src.crs.linear_units_factor[1] == 1.0 and src.res[0] == src.res[1]:
                # A metric DEM keeps its own pixels: moved, not rotated (only the terrain's shape matters).
                res = float(src.res[0])
                z = src.read(1, masked=True).astype(np.float32).filled(np.nan)
            else:
                res = 10.0 if src.crs.is_geographic else float(abs(src.res[0]))
                transform, width, height = calculate_default_transform(
                    src.crs, "EPSG:3413", src.width, src.height, *src.bounds, resolution=res
                )
                z = np.full((height, width), np.nan, np.float32)
                reproject(rasterio.band(src, 1), z, dst_transform=transform, dst_crs="EPSG:3413",
                          resampling=Resampling.bilinear, dst_nodata=np.nan)  # fmt: skip
        valid = np.isfinite(z)
        if not valid.any():
            raise ValueError(f"terrain DEM {path} has no valid heights")
        if not valid.all():  # gaps and the empty corners of a reprojected DEM: nearest valid height
            idx = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
            z = z[tuple(idx)]
        ox, oy = offset
        if flip:
            z, ox = z[:, ::-1], -ox
        for _ in range(int(turns) % 4):  # np.rot90 turns anticlockwise, with y up: (x, y) → (−y, x)
            z, ox, oy = np.rot90(z), -oy, ox
        h, w = z.shape
        x0 = centre[0] - ox - w * res / 2.0
        y0 = centre[1] - oy + h * res / 2.0
        return cls(z=z.astype(np.float64), x0=x0, y0=y0, resolution=res, source=str(path), sea_level_m=sea_level_m)

    def _index(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Fractional (row, col) of pixel centres: pixel (0, 0) is centred at x0 + res/2, y0 − res/2.
        return (self.y0 - y) / self.resolution - 0.5, (x - self.x0) / self.resolution - 0.5

    def at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Heights (m) at scattered points."""
        x, y = np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(y, np.float64))
        r, c = self._index(x, y)
        out = ndimage.map_coordinates(self._coef, [r.ravel(), c.ravel()], order=3, mode="mirror", prefilter=False)
        return out.reshape(x.shape)

    def on_grid(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Heights (m) on the grid ``x`` (columns) × ``y`` (rows): shape ``(len(y), len(x))``."""
        xx, yy = np.meshgrid(np.asarray(x, np.float64), np.asarray(y, np.float64))
        return self.at(xx, yy)

    def gradient_at(self, x: float, y: float, *, step: float = 1.0) -> tuple[float, float]:
        """(∂z/∂x, ∂z/∂y) of the spline at a point (central differences over ``step`` m)."""
        zx = self.at(np.array([x + step, x - step]), np.array([y, y]))
        zy = self.at(np.array([x, x]), np.array([y + step, y - step]))
        return float((zx[0] - zx[1]) / (2 * step)), float((zy[0] - zy[1]) / (2 * step))
