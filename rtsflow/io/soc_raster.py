"""Soil-organic-carbon density from a raster: one band per depth layer, sampled at each RTS.

A SOC map (e.g. a regional soil-carbon product resampled to the layers of the
carbon profile) is a GeoTIFF with one band per layer of the profile, in
kg C per m³ of ice-free ground; its 1σ comes from a second raster with the
same bands or from a relative σ. Each RTS takes the values at its centroid
(SOC maps are kilometre-scale, RTS hectare-scale); where the centroid falls
outside the map or on nodata, the profile's own value is used and the RTS
says so (``soc_source``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["SocRaster"]


@dataclass(frozen=True)
class SocRaster:
    """SOC density rasters (kg C m⁻³), one band per profile layer.

    Parameters
    ----------
    path
        GeoTIFF (any format rasterio reads) with one band per layer, top layer first.
    sigma_path
        Raster of the 1σ of each band (same bands); or
    relative_sigma
        1σ as a fraction of the value (used when ``sigma_path`` is not given; default 0).
    """

    path: str
    sigma_path: str | None = None
    relative_sigma: float = 0.0

    def check(self, *, n_layers: int, where: str) -> None:
        """Raise ``CarbonError`` naming the file and what was expected unless the rasters can be sampled."""
        import rasterio

        from rtsflow.carbon import CarbonError

        if not np.isfinite(self.relative_sigma) or self.relative_sigma < 0:
            raise CarbonError(f"{where}: relative_sigma must be ≥ 0, got {self.relative_sigma!r}")
        for name, p in (("raster", self.path), ("sigma_raster", self.sigma_path)):
            if p is None:
                continue
            if not Path(p).exists():
                raise CarbonError(f"{where}: {name} {p} does not exist")
            try:
                with rasterio.open(p) as src:
                    count, crs = src.count, src.crs
            except rasterio.errors.RasterioIOError as e:
                raise CarbonError(f"{where}: {name} {p} is not a readable raster: {e}") from None
            if crs is None:
                raise CarbonError(f"{where}: {name} {p} has no CRS")
            if count != n_layers:
                raise CarbonError(f"{where}: {name} {p} has {count} band(s); expected {n_layers}, one per layer of "
                                  "the carbon profile (top layer first)")  # fmt: skip

    def sample(self, rts) -> tuple[np.ndarray, np.ndarray]:
        """``(soc, sigma)``, each ``(n_rts, n_bands)``, at the RTS centroids; NaN outside the map or on nodata."""
        soc = _sample(self.path, rts)
        if self.sigma_path is not None:
            sigma = _sample(self.sigma_path, rts)
        else:
            sigma = np.abs(soc) * self.relative_sigma
        bad = ~(np.isfinite(soc) & np.isfinite(sigma) & (soc >= 0) & (sigma >= 0))
        soc[bad] = np.nan
        sigma[bad] = np.nan
        return soc, sigma

    def to_dict(self) -> dict:
        return {"raster": self.path, "sigma_raster": self.sigma_path, "relative_sigma": self.relative_sigma}


def _sample(path: str, rts) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as src:
        out = np.full((len(rts), src.count), np.nan)
        if not len(rts):
            return out
        points = rts.geometry.centroid.to_crs(src.crs)
        inside = np.flatnonzero(points.notna().to_numpy() & ~points.is_empty.to_numpy())
        xy = [(points.iloc[i].x, points.iloc[i].y) for i in inside]
        left, bottom, right, top = src.bounds
        for i, (x, y), values in zip(inside, xy, src.sample(xy, masked=True), strict=True):
            if left <= x < right and bottom < y <= top:
                out[i] = np.ma.filled(values.astype(np.float64), np.nan)
    return out
