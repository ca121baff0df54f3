"""Properties of the pan-Arctic EPSG:3413 grid."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pyproj import Transformer
from shapely.geometry import Polygon, box

from rtsflow.grid import DEFAULT_GRID, GRID_ORIGIN, Grid, Window

coord = st.floats(min_value=-5.9e6, max_value=5.9e6, allow_nan=False)
grids = st.builds(
    Grid,
    resolution=st.sampled_from([2.0, 10.0, 12.5, 30.0]),
    tile_size=st.sampled_from([256, 512]),
    block_tiles=st.sampled_from([1, 2, 8]),
)


@given(grids, coord, coord)
def test_pixel_roundtrip(grid, x, y):
    row, col = grid.pixel_of(x, y)
    cx, cy = grid.pixel_center(row, col)
    # The centre of the pixel containing a point is within half a pixel of it...
    assert abs(cx - x) <= grid.resolution / 2 + 1e-6
    assert abs(cy - y) <= grid.resolution / 2 + 1e-6
    # ...and maps back to the same pixel.
    assert grid.pixel_of(cx, cy) == (row, col)


@given(grids, coord, coord)
def test_tile_and_block_ids_roundtrip(grid, x, y):
    tr, tc = grid.tile_of(x, y)
    assert grid.tile_rowcol(grid.tile_id(tr, tc)) == (tr, tc)
    br, bc = grid.block_of(x, y)
    assert grid.block_rowcol(grid.block_id(br, bc)) == (br, bc)
    # A block holds block_tiles x block_tiles tiles.
    assert (tr // grid.block_tiles, tc // grid.block_tiles) == (br, bc)
    assert 0 <= grid.tile_id(tr, tc) < grid.n_tiles**2


def test_ids_stable_and_known():
    g = DEFAULT_GRID
    # The grid's north-west corner is pixel/tile/block 0.
    assert g.block_id(*g.block_of(GRID_ORIGIN[0] + 1, GRID_ORIGIN[1] - 1)) == 0
    assert g.block_size == 4096 and g.tile_size == 512
    # The pole (0, 0) lies 600 000 px from the corner on both axes.
    assert tuple(int(v) for v in g.pixel_of(0.0, 0.0)) == (600_000, 600_000)
    assert tuple(int(v) for v in g.block_of(0.0, 0.0)) == (600_000 // 4096, 600_000 // 4096)


@given(grids, coord, coord, st.floats(1, 2e5), st.floats(1, 2e5))
# Found by hypothesis in CI: an edge 1e-8 px past a pixel edge was taken for rounding (tolerance was 1e-9·res px).
@example(grid=Grid(resolution=12.5, tile_size=256, block_tiles=1), x=0.0, y=-1.192092896e-07, w=1.0, h=1.0)
def test_snapped_region_covers_and_aligns(grid, x, y, w, h):
    bounds = (x, y, x + w, y + h)
    win = grid.region_from_bounds(bounds)
    left, b, r, t = grid.bounds(win)
    # Covers the bbox (up to 1e-9 px: edges a rounding error away from a pixel edge snap to it).
    tol = 1e-9 * grid.resolution
    assert left <= bounds[0] + tol and b <= bounds[1] + tol and r >= bounds[2] - tol and t >= bounds[3] - tol
    bs = grid.block_size
    assert win.row % bs == 0 and win.col % bs == 0 and win.height % bs == 0 and win.width % bs == 0
    # Snapping is minimal: growing by less than a block on each side.
    assert left > bounds[0] - bs * grid.resolution and r < bounds[2] + bs * grid.resolution


@given(grids, st.integers(0, 10**6), st.integers(0, 10**6), st.integers(1, 5000), st.integers(1, 5000))
@settings(deadline=None)  # a property, not a timing: the first example took 665 ms on a loaded 2-core CI machine
def test_window_transform_coords_bounds_agree(grid, row, col, h, w):
    win = Window(row, col, h, w)
    x, y = grid.coords(win)
    t = grid.transform(win)
    assert np.allclose((x[0], y[0]), t @ (0.5, 0.5))
    assert np.allclose((x[-1], y[-1]), t @ (w - 0.5, h - 0.5))
    assert grid.window_from_coords(x, y) == win
    assert grid.window_from_bounds(grid.bounds(win)) == win


@given(grids, st.integers(0, 10**5), st.integers(0, 10**5), st.integers(1, 20000), st.integers(1, 20000))
@settings(max_examples=50)
def test_blocks_partition_window(grid, row, col, h, w):
    win = Window(row, col, h, w)
    parts = list(grid.blocks(win))
    assert sum(p.height * p.width for _, p in parts) == h * w
    for (br, bc), p in parts:
        assert grid.block_window(br, bc).contains(p) and win.contains(p)


def test_all_resolutions_share_pixel_edges():
    # Every 10 m pixel edge is also a 2 m and a 5 m pixel edge: stores nest.
    coarse, fine = Grid(resolution=10.0), Grid(resolution=2.0)
    win = Window(123_456, 654_321, 7, 9)
    b = coarse.bounds(win)
    fw = fine.window_from_bounds(b)
    assert fine.bounds(fw) == pytest.approx(b)


def test_region_from_lonlat_bbox_and_polygon():
    g = DEFAULT_GRID
    bbox = (-86.5, 79.5, -84.0, 80.2)  # Fosheim Peninsula, Ellesmere Island
    win = g.region_from_bounds(bbox, crs="EPSG:4326")
    # Every point on the densified bbox boundary lands inside the window.
    lon = np.r_[
        np.linspace(bbox[0], bbox[2], 50), np.full(50, bbox[2]), np.linspace(bbox[2], bbox[0], 50), np.full(50, bbox[0])
    ]
    lat = np.r_[
        np.full(50, bbox[1]), np.linspace(bbox[1], bbox[3], 50), np.full(50, bbox[3]), np.linspace(bbox[3], bbox[1], 50)
    ]
    x, y = Transformer.from_crs("EPSG:4326", "EPSG:3413", always_xy=True).transform(lon, lat)
    left, b, r, t = g.bounds(win)
    assert (x >= left).all() and (x <= r).all() and (y >= b).all() and (y <= t).all()

    # A thin diagonal polygon touches fewer blocks than its bounding window holds.
    poly = Polygon([(0, 0), (2e5, 2e5), (2e5 + 1e3, 2e5), (1e3, 0)])
    pwin, touched = g.region_from_geometry(poly)
    assert not shapely.is_prepared(poly)  # the caller's geometry is left as it was (prepared ones are not thread-safe)
    n_all = (pwin.height // g.block_size) * (pwin.width // g.block_size)
    assert 0 < len(touched) < n_all
    for br, bc in touched:
        assert box(*g.bounds(g.block_window(br, bc))).intersects(poly)


def test_areal_scale_matches_known_values():
    g = DEFAULT_GRID
    to = Transformer.from_crs("EPSG:4326", "EPSG:3413", always_xy=True)
    for lat, expected in [(90.0, 0.94), (70.0, 1.00), (60.0, 1.08), (46.0, 1.27)]:
        x, y = to.transform(-45.0, lat)
        assert g.areal_scale(np.array([x]), np.array([y]))[0] == pytest.approx(expected, abs=0.006)


def test_pixel_ground_area_step_agrees_with_exact():
    g = DEFAULT_GRID
    win = Window(700_000, 110_000, 37, 41)
    exact = g.pixel_ground_area(win)
    coarse = g.pixel_ground_area(win, step=8)
    assert coarse.shape == exact.shape
    assert np.allclose(coarse, exact, rtol=1e-4)


def test_bad_grid_arguments():
    with pytest.raises(ValueError, match="resolution"):
        Grid(resolution=0)
    with pytest.raises(ValueError, match="empty bounds"):
        DEFAULT_GRID.window_from_bounds((0, 0, 0, 10))
    with pytest.raises(ValueError, match="not on the"):
        DEFAULT_GRID.window_from_coords(np.array([1.0, 11.0]), np.array([1.0, -9.0]))
