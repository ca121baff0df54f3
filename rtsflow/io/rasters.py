"""GeoTIFF inspection, pixel checks and warping onto the rtsflow grid (rasterio)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window as RioWindow
from rasterio.windows import from_bounds

from rtsflow.grid import GRID_CRS, GRID_ORIGIN, Grid, Window
from rtsflow.products import ProductError

__all__ = [
    "LAYER_RULES",
    "RasterInfo",
    "check_layer_values",
    "inspect_raster",
    "read_layer",
    "warp_to_window",
]


@dataclass(frozen=True)
class LayerRule:
    """What a layer's pixel values must look like, and how it is resampled."""

    low: float
    high: float
    resampling: Resampling
    expected: str
    integer_flags: bool = False
    #: Band unit names (GDAL unit type, lower case) accepted for this layer; an
    #: empty band unit is always accepted (most GeoTIFFs declare none).
    units: tuple[str, ...] = ()
    #: Share of valid pixels that may lie outside [low, high] as outliers (set to
    #: NaN on ingest) before the layer is refused as wrongly scaled or with an
    #: undeclared nodata value.
    outlier_fraction: float = 0.0


#: Band unit names that mean metres.
METRES = ("m", "metre", "metres", "meter", "meters")

#: Allowed value range per layer (NaN / nodata always allowed), and resampling:
#: bilinear for continuous layers, nearest for masks.
LAYER_RULES: dict[str, LayerRule] = {
    # InSAR DEMs carry a few wild heights (water, unwrapping errors): up to 0.5 %.
    "dem": LayerRule(
        -1000.0, 9000.0, Resampling.bilinear, "elevations in metres within [-1000, 9000]", outlier_fraction=0.005,
        units=METRES,
    ),
    "coherence": LayerRule(0.0, 1.0, Resampling.bilinear, "coherence values within [0, 1]"),
    "layover_shadow": LayerRule(
        0.0, 1.0, Resampling.nearest, "mask values 0 (clear) or 1 (layover/shadow)", integer_flags=True
    ),
    "incidence": LayerRule(0.0, math.pi, Resampling.bilinear, "local incidence angles in radians within [0, π]"),
    "sigma": LayerRule(0.0, 1.0e4, Resampling.bilinear, "non-negative elevation errors in metres", units=METRES),
    "probability": LayerRule(0.0, 1.0, Resampling.bilinear, "probabilities within [0, 1]"),
    "water": LayerRule(0.0, 1.0, Resampling.nearest, "mask values 0 (land) or 1 (water)", integer_flags=True),
}


@dataclass(frozen=True)
class RasterInfo:
    """Georeferencing of one GeoTIFF."""

    path: Path
    crs: CRS
    transform: Affine
    width: int
    height: int
    nodata: float | None
    dtype: str
    #: Band 1's unit type as GDAL reports it ("" when the file declares none).
    units: str = ""

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        left, top = self.transform @ (0, 0)
        right, bottom = self.transform @ (self.width, self.height)
        return (min(left, right), min(bottom, top), max(left, right), max(bottom, top))

    def grid_bounds(self) -> tuple[float, float, float, float]:
        """Footprint in EPSG:3413 (densified edges)."""
        if self.crs == CRS.from_user_input(GRID_CRS):
            return self.bounds
        return transform_bounds(self.crs, GRID_CRS, *self.bounds, densify_pts=64)

    def checked_grid_bounds(self, *, key: str) -> tuple[float, float, float, float]:
        """:meth:`grid_bounds`, or a :class:`ProductError` saying the CRS cannot place the raster."""
        try:
            bounds = self.grid_bounds()
            if not all(map(math.isfinite, bounds)):
                raise ValueError(f"non-finite bounds {bounds}")
        except Exception as e:  # PROJ/GDAL raise several types
            raise ProductError(self.path, key, f"its bounds {self.bounds} cannot be placed in {GRID_CRS} with its "
                               f"CRS {self.crs.to_string()} ({e}); is the CRS right?") from e  # fmt: skip
        return bounds


def inspect_raster(path: Path, *, sidecar: Path, key: str) -> RasterInfo:
    """Open a GeoTIFF and read its georeferencing.

    Raises
    ------
    ProductError
        If the file cannot be read, has no CRS or no geotransform.
    """
    if not path.exists():
        raise ProductError(sidecar, key, f"file not found: {path}")
    try:
        with rasterio.open(path) as src:
            if src.count < 1:
                raise ProductError(path, key, "has no raster band")
            if src.crs is None:
                raise ProductError(path, key, "has no CRS; expected a georeferenced GeoTIFF")
            if src.transform == Affine.identity():
                raise ProductError(path, key, "has no geotransform; expected a georeferenced GeoTIFF")
            if abs(src.transform.b) > 0 or abs(src.transform.d) > 0:
                raise ProductError(path, key, "is rotated; expected a north-up GeoTIFF")
            return RasterInfo(
                path=path,
                crs=src.crs,
                transform=src.transform,
                width=src.width,
                height=src.height,
                nodata=src.nodata,
                dtype=src.dtypes[0],
                units=(src.units[0] or "").strip(),
            )
    except rasterio.errors.RasterioIOError as e:
        raise ProductError(path, key, f"cannot be read as a GeoTIFF ({e})") from e


def read_layer(
    info: RasterInfo, window: RioWindow | None = None, *, valid_range: tuple[float, float] | None = None
) -> np.ndarray:
    """Read band 1 as float32 with nodata (and values outside ``valid_range``) as NaN."""
    with rasterio.open(info.path) as src:
        a = src.read(1, window=window, out_dtype="float32")
    if info.nodata is not None and not math.isnan(info.nodata):
        a[a == np.float32(info.nodata)] = np.nan
    if valid_range is not None:
        with np.errstate(invalid="ignore"):
            a[(a < valid_range[0]) | (a > valid_range[1])] = np.nan
    return a


def check_layer_values(info: RasterInfo, *, key: str, rows_per_read: int = 2048) -> int:
    """Check every pixel of a layer against :data:`LAYER_RULES`, strip by strip; return the number of valid pixels.

    Raises
    ------
    ProductError
        Naming the file, the layer and the offending range of values.
    """
    rule = LAYER_RULES[key]
    if rule.units and info.units and info.units.lower() not in rule.units:
        raise ProductError(info.path, key, f"band unit is {info.units!r}; expected {rule.expected}")
    tol = 1e-6 * max(1.0, abs(rule.high))
    lo, hi = math.inf, -math.inf
    n_valid = n_out = 0
    bad_flags = False
    for row in range(0, info.height, rows_per_read):
        h = min(rows_per_read, info.height - row)
        try:
            a = read_layer(info, RioWindow(0, row, info.width, h))
        except rasterio.errors.RasterioIOError as e:
            raise ProductError(info.path, key, f"pixels from row {row} cannot be read (a truncated or damaged "
                               f"GeoTIFF?): {e}") from e  # fmt: skip
        finite = a[np.isfinite(a)]
        if np.isinf(a).any():
            raise ProductError(info.path, key, f"contains infinite values; expected {rule.expected}")
        if finite.size:
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
            n_valid += finite.size
            n_out += int(((finite < rule.low - tol) | (finite > rule.high + tol)).sum())
            if rule.integer_flags and not np.isin(finite, (0.0, 1.0)).all():
                bad_flags = True
    if bad_flags:
        raise ProductError(info.path, key, f"has values other than 0 and 1; expected {rule.expected}")
    if n_out > rule.outlier_fraction * n_valid:
        share = f" ({n_out / n_valid:.2%} of valid pixels)" if rule.outlier_fraction else ""
        raise ProductError(info.path, key, f"values span [{lo:.6g}, {hi:.6g}]{share}; expected {rule.expected}")
    return n_valid


def _grid_offset(info: RasterInfo, grid: Grid) -> tuple[int, int] | None:
    """(row, col) of the raster's first pixel on the grid, if it lies exactly on the grid."""
    if info.crs != CRS.from_user_input(GRID_CRS):
        return None
    t, r = info.transform, grid.resolution
    if abs(t.a - r) > 1e-9 * r or abs(t.e + r) > 1e-9 * r or t.b != 0 or t.d != 0:
        return None
    x0, y0 = GRID_ORIGIN
    col, row = (t.c - x0) / r, (y0 - t.f) / r
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    return round(row), round(col)


def warp_to_window(
    info: RasterInfo,
    *,
    grid: Grid,
    window: Window,
    resampling: Resampling,
    valid_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Resample one layer onto a window of the grid (float32, NaN outside / nodata / outside ``valid_range``).

    Only the part of the source that covers the window (plus a 2-pixel margin
    for the interpolation kernel) is read, so memory is bounded by the window.
    """
    dst = np.full(window.shape, np.nan, dtype=np.float32)
    dst_transform = grid.transform(window)
    offset = _grid_offset(info, grid)
    if offset is not None:
        # Already on the grid (same CRS, pixel size and pixel edges): resampling is the
        # identity, so copy the overlapping pixels instead of warping them.
        src_win = Window(window.row - offset[0], window.col - offset[1], window.height, window.width)
        inside = src_win.intersection(Window(0, 0, info.height, info.width))
        if inside is not None:
            a = read_layer(
                info, RioWindow(inside.col, inside.row, inside.width, inside.height), valid_range=valid_range
            )
            ys, xs = inside.relative_to(src_win)
            dst[ys, xs] = a
        return dst
    left, bottom, right, top = grid.bounds(window)
    src_crs = info.crs
    if src_crs != CRS.from_user_input(GRID_CRS):
        left, bottom, right, top = transform_bounds(GRID_CRS, src_crs, left, bottom, right, top, densify_pts=21)
    full = RioWindow(0, 0, info.width, info.height)
    try:
        win = from_bounds(left, bottom, right, top, transform=info.transform)
    except rasterio.errors.WindowError:
        return dst
    win = win.round_offsets(op="floor").round_lengths(op="ceil")
    margin = 2
    win = RioWindow(win.col_off - margin, win.row_off - margin, win.width + 2 * margin, win.height + 2 * margin)
    try:
        win = win.intersection(full)
    except rasterio.errors.WindowError:
        return dst
    if win.width <= 0 or win.height <= 0:
        return dst
    src = read_layer(info, win, valid_range=valid_range)
    if not np.isfinite(src).any():
        return dst
    reproject(
        source=src,
        destination=dst,
        src_transform=rasterio.windows.transform(win, info.transform),
        src_crs=src_crs,
        src_nodata=np.nan,
        dst_transform=dst_transform,
        dst_crs=GRID_CRS,
        dst_nodata=np.nan,
        resampling=resampling,
    )
    return dst
