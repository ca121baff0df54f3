"""The one pan-Arctic EPSG:3413 grid that every rtsflow store shares.

Pure geometry: no xarray, no dask, no I/O. Pixel indices are global (counted
from the grid's fixed north-west corner), so two stores at the same resolution
always share pixel edges and integer tile/block ids are stable across runs.

Vocabulary
----------
pixel
    ``resolution`` metres square (10 m by default).
tile
    ``tile_size`` x ``tile_size`` pixels (512): the model's unit and the Zarr
    inner chunk.
block
    ``block_tiles`` x ``block_tiles`` tiles (8 x 8 = 4096 px): the dask chunk
    and the Zarr shard.
window
    A rectangle of global pixel indices (row/col offset, height/width).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import shapely
from affine import Affine
from pyproj import CRS, Proj, Transformer
from shapely import geometry as sgeom
from shapely import ops as sops
from shapely.prepared import prep

__all__ = ["DEFAULT_GRID", "GRID_CRS", "Grid", "Window"]

GRID_CRS = "EPSG:3413"
#: North-west corner of the pan-Arctic grid (EPSG:3413 metres). The square
#: [-6000 km, 6000 km]^2 covers everything north of ~40 deg N, which contains
#: the whole northern permafrost region.
GRID_ORIGIN = (-6_000_000.0, 6_000_000.0)
GRID_EXTENT_M = 12_000_000.0


@dataclass(frozen=True, order=True)
class Window:
    """A rectangle of global grid pixels: rows ``[row, row+height)``, cols ``[col, col+width)``."""

    row: int
    col: int
    height: int
    width: int

    def __post_init__(self) -> None:
        if self.height < 0 or self.width < 0:
            raise ValueError(f"window size must be >= 0, got {self.height} x {self.width}")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def row_stop(self) -> int:
        return self.row + self.height

    @property
    def col_stop(self) -> int:
        return self.col + self.width

    def intersection(self, other: Window) -> Window | None:
        """The overlap of two windows, or ``None`` if they do not overlap."""
        r0, c0 = max(self.row, other.row), max(self.col, other.col)
        r1, c1 = min(self.row_stop, other.row_stop), min(self.col_stop, other.col_stop)
        if r1 <= r0 or c1 <= c0:
            return None
        return Window(r0, c0, r1 - r0, c1 - c0)

    def union(self, other: Window) -> Window:
        """The smallest window containing both."""
        r0, c0 = min(self.row, other.row), min(self.col, other.col)
        r1, c1 = max(self.row_stop, other.row_stop), max(self.col_stop, other.col_stop)
        return Window(r0, c0, r1 - r0, c1 - c0)

    def contains(self, other: Window) -> bool:
        return (
            self.row <= other.row
            and self.col <= other.col
            and other.row_stop <= self.row_stop
            and other.col_stop <= self.col_stop
        )

    def relative_to(self, outer: Window) -> tuple[slice, slice]:
        """Array slices selecting this window inside an array covering ``outer``."""
        return (
            slice(self.row - outer.row, self.row_stop - outer.row),
            slice(self.col - outer.col, self.col_stop - outer.col),
        )


@dataclass(frozen=True)
class Grid:
    """A square-pixel EPSG:3413 grid anchored at the fixed pan-Arctic origin.

    Parameters
    ----------
    resolution
        Pixel size in metres.
    tile_size
        Tile edge in pixels (model input and Zarr inner chunk).
    block_tiles
        Block edge in tiles (dask chunk and Zarr shard).
    """

    resolution: float = 10.0
    tile_size: int = 512
    block_tiles: int = 8

    def __post_init__(self) -> None:
        if not (self.resolution > 0 and math.isfinite(self.resolution)):
            raise ValueError(f"resolution must be a positive number of metres, got {self.resolution}")
        if self.tile_size < 1 or self.block_tiles < 1:
            raise ValueError("tile_size and block_tiles must be >= 1")

    # -- store attributes ----------------------------------------------------
    def to_attrs(self) -> dict[str, object]:
        """The grid as store attributes (every rtsflow store records its grid this way)."""
        return {
            "grid_crs": GRID_CRS,
            "grid_resolution": self.resolution,
            "grid_tile_size": self.tile_size,
            "grid_block_tiles": self.block_tiles,
        }

    @classmethod
    def from_attrs(cls, attrs) -> Grid:
        """The grid recorded by :meth:`to_attrs` (raises ``KeyError`` if absent)."""
        return cls(
            resolution=float(attrs["grid_resolution"]),
            tile_size=int(attrs["grid_tile_size"]),
            block_tiles=int(attrs["grid_block_tiles"]),
        )

    # -- sizes -------------------------------------------------------------
    @property
    def crs(self) -> str:
        return GRID_CRS

    @property
    def block_size(self) -> int:
        """Block edge in pixels."""
        return self.tile_size * self.block_tiles

    @property
    def n_pixels(self) -> int:
        """Pixels along one edge of the whole pan-Arctic grid."""
        return math.ceil(GRID_EXTENT_M / self.resolution)

    @property
    def n_tiles(self) -> int:
        return math.ceil(self.n_pixels / self.tile_size)

    @property
    def n_blocks(self) -> int:
        return math.ceil(self.n_pixels / self.block_size)

    @property
    def pixel_area_nominal(self) -> float:
        """Grid-cell area in projected m² (not ground area: EPSG:3413 is not equal-area)."""
        return self.resolution**2

    # -- coordinates <-> pixel indices ---------------------------------------
    def pixel_of(self, x: np.ndarray | float, y: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Global (row, col) of the pixels containing EPSG:3413 points ``(x, y)``.

        Points on a pixel edge belong to the pixel to their south-east.
        """
        x0, y0 = GRID_ORIGIN
        col = np.floor((np.asarray(x, dtype=np.float64) - x0) / self.resolution).astype(np.int64)
        row = np.floor((y0 - np.asarray(y, dtype=np.float64)) / self.resolution).astype(np.int64)
        return row, col

    def pixel_center(self, row: np.ndarray | int, col: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
        """EPSG:3413 (x, y) of the centres of global pixels ``(row, col)``."""
        x0, y0 = GRID_ORIGIN
        x = x0 + (np.asarray(col, dtype=np.float64) + 0.5) * self.resolution
        y = y0 - (np.asarray(row, dtype=np.float64) + 0.5) * self.resolution
        return x, y

    def tile_of(self, x: np.ndarray | float, y: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Global (tile_row, tile_col) containing the points."""
        row, col = self.pixel_of(x, y)
        return row // self.tile_size, col // self.tile_size

    def block_of(self, x: np.ndarray | float, y: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Global (block_row, block_col) containing the points."""
        row, col = self.pixel_of(x, y)
        return row // self.block_size, col // self.block_size

    def tile_id(self, tile_row: np.ndarray | int, tile_col: np.ndarray | int) -> np.ndarray:
        """Flat integer id of a tile, stable across runs (row-major over the whole grid)."""
        return np.asarray(tile_row, dtype=np.int64) * self.n_tiles + np.asarray(tile_col, dtype=np.int64)

    def tile_rowcol(self, tile_id: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
        return np.divmod(np.asarray(tile_id, dtype=np.int64), self.n_tiles)

    def block_id(self, block_row: np.ndarray | int, block_col: np.ndarray | int) -> np.ndarray:
        """Flat integer id of a block, stable across runs (row-major over the whole grid)."""
        return np.asarray(block_row, dtype=np.int64) * self.n_blocks + np.asarray(block_col, dtype=np.int64)

    def block_rowcol(self, block_id: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
        return np.divmod(np.asarray(block_id, dtype=np.int64), self.n_blocks)

    # -- windows --------------------------------------------------------------
    def transform(self, window: Window) -> Affine:
        """Affine geotransform (GDAL order, north-up) of a window."""
        x0, y0 = GRID_ORIGIN
        return Affine(
            self.resolution,
            0.0,
            x0 + window.col * self.resolution,
            0.0,
            -self.resolution,
            y0 - window.row * self.resolution,
        )

    def bounds(self, window: Window) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) of a window in EPSG:3413 metres."""
        x0, y0 = GRID_ORIGIN
        r = self.resolution
        return (
            x0 + window.col * r,
            y0 - window.row_stop * r,
            x0 + window.col_stop * r,
            y0 - window.row * r,
        )

    def coords(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-centre coordinate vectors ``(x, y)`` of a window (y decreasing)."""
        x, _ = self.pixel_center(0, np.arange(window.col, window.col_stop))
        _, y = self.pixel_center(np.arange(window.row, window.row_stop), 0)
        return x, y

    def window_from_coords(self, x: np.ndarray, y: np.ndarray) -> Window:
        """Recover the window from its pixel-centre coordinate vectors (checks alignment)."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        row, col = self.pixel_of(x[0], y[0])
        window = Window(int(row), int(col), len(y), len(x))
        ex, ey = self.coords(window)
        tol = 1e-6 * self.resolution
        if not (np.allclose(ex, x, atol=tol, rtol=0) and np.allclose(ey, y, atol=tol, rtol=0)):
            raise ValueError(f"coordinates are not on the {self.resolution} m rtsflow grid")
        return window

    def window_from_bounds(self, bounds: tuple[float, float, float, float]) -> Window:
        """Smallest pixel window covering EPSG:3413 ``(left, bottom, right, top)``."""
        left, bottom, right, top = bounds
        if not (right > left and top > bottom):
            raise ValueError(f"empty bounds {bounds}")
        x0, y0 = GRID_ORIGIN
        r = self.resolution
        # A tiny tolerance (1e-9 px, far above the rounding of ~1e6-px offsets) keeps bounds already on pixel
        # edges from growing by one.
        eps = 1e-9
        col0 = math.floor((left - x0) / r + eps)
        col1 = math.ceil((right - x0) / r - eps)
        row0 = math.floor((y0 - top) / r + eps)
        row1 = math.ceil((y0 - bottom) / r - eps)
        return Window(row0, col0, max(row1 - row0, 1), max(col1 - col0, 1))

    def snap(self, window: Window, *, to: str = "block") -> Window:
        """Grow a window outward to whole tiles (``to="tile"``) or blocks (``to="block"``)."""
        step = {"block": self.block_size, "tile": self.tile_size, "pixel": 1}.get(to)
        if step is None:
            raise ValueError(f"to must be 'block', 'tile' or 'pixel', got {to!r}")
        r0 = (window.row // step) * step
        c0 = (window.col // step) * step
        r1 = -(-window.row_stop // step) * step
        c1 = -(-window.col_stop // step) * step
        return Window(r0, c0, r1 - r0, c1 - c0)

    def blocks(self, window: Window) -> Iterator[tuple[tuple[int, int], Window]]:
        """``((block_row, block_col), block_window ∩ window)`` for every block the window touches."""
        b = self.block_size
        for br in range(window.row // b, -(-window.row_stop // b)):
            for bc in range(window.col // b, -(-window.col_stop // b)):
                part = Window(br * b, bc * b, b, b).intersection(window)
                if part is not None:
                    yield (br, bc), part

    def block_window(self, block_row: int, block_col: int) -> Window:
        b = self.block_size
        return Window(block_row * b, block_col * b, b, b)

    # -- regions ---------------------------------------------------------------
    def region_from_bounds(self, bounds: tuple[float, float, float, float], *, crs: str | CRS = GRID_CRS) -> Window:
        """Block-aligned window covering a bbox given in any CRS.

        The bbox edges are densified before reprojection, so curved edges in
        EPSG:3413 are covered too.
        """
        b3413 = _to_grid_bounds(bounds, crs)
        return self.snap(self.window_from_bounds(b3413), to="block")

    def region_from_geometry(
        self, geometry: sgeom.base.BaseGeometry, *, crs: str | CRS = GRID_CRS
    ) -> tuple[Window, list[tuple[int, int]]]:
        """Block-aligned window covering a (multi)polygon, and the blocks it actually touches.

        Returns
        -------
        window
            Block-aligned bounding window.
        blocks
            ``(block_row, block_col)`` of the blocks that intersect the geometry
            (a sparse region need not compute the whole bounding window).
        """
        geom = _to_grid_geometry(geometry, crs)
        if geom.is_empty:
            raise ValueError("region geometry is empty")
        window = self.snap(self.window_from_bounds(geom.bounds), to="block")
        pg = prep(shapely.from_wkb(geom.wkb))  # a copy: prep() prepares in place, and the geometry is the caller's
        touched = []
        for (br, bc), part in self.blocks(window):
            if pg.intersects(sgeom.box(*self.bounds(part))):
                touched.append((br, bc))
        return window, touched

    # -- ground area --------------------------------------------------------
    @cached_property
    def _to_lonlat(self) -> Transformer:
        return Transformer.from_crs(GRID_CRS, "EPSG:4326", always_xy=True)

    def areal_scale(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """EPSG:3413 areal scale factor at points (projected area / ground area).

        0.94 at the pole, 1.00 at 70°N (true-scale latitude), 1.27 at 46°N.
        """
        lon, lat = self._to_lonlat.transform(np.asarray(x, float), np.asarray(y, float))
        return np.asarray(Proj(GRID_CRS).get_factors(lon, lat).areal_scale, dtype=np.float64)

    def pixel_ground_area(self, window: Window, *, step: int = 1) -> np.ndarray:
        """True ground area (m²) of each pixel of a window.

        The scale of a polar stereographic projection depends only on the
        distance from the pole and varies by < 1e-5 across 100 m, so
        ``step > 1`` evaluates it on every ``step``-th pixel and repeats it.
        """
        x, y = self.coords(window)
        xs, ys = x[::step], y[::step]
        xx, yy = np.meshgrid(xs, ys)
        area = self.pixel_area_nominal / self.areal_scale(xx, yy)
        if step > 1:
            area = np.repeat(np.repeat(area, step, axis=0), step, axis=1)[: window.height, : window.width]
        return area


DEFAULT_GRID = Grid()


def _to_grid_bounds(bounds: tuple[float, float, float, float], crs: str | CRS) -> tuple[float, ...]:
    src = CRS.from_user_input(crs)
    if src == CRS.from_user_input(GRID_CRS):
        return tuple(float(v) for v in bounds)
    t = Transformer.from_crs(src, GRID_CRS, always_xy=True)
    return tuple(float(v) for v in t.transform_bounds(*bounds, densify_pts=64))


def _to_grid_geometry(geom: sgeom.base.BaseGeometry, crs: str | CRS) -> sgeom.base.BaseGeometry:
    src = CRS.from_user_input(crs)
    if src == CRS.from_user_input(GRID_CRS):
        return geom
    t = Transformer.from_crs(src, GRID_CRS, always_xy=True)
    # Densify first so long edges follow their curved image in EPSG:3413.
    dense = geom.segmentize(max_segment_length=_segment_length(geom))
    return sops.transform(t.transform, dense)


def _segment_length(geom: sgeom.base.BaseGeometry) -> float:
    minx, miny, maxx, maxy = geom.bounds
    span = max(maxx - minx, maxy - miny)
    return span / 64 if span > 0 else 1.0
