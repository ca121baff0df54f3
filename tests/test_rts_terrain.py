"""Where RTS sit: elevation, slope, aspect (true north) and distance to water, checked on analytic terrain."""

from __future__ import annotations

import dask.array as da
import geopandas as gpd
import numpy as np
import pytest
import shapely
import xarray as xr

from rtsflow.graph.rts_terrain import rts_terrain, true_north_azimuth
from rtsflow.grid import Grid, Window

GRID = Grid(resolution=10.0, tile_size=64, block_tiles=2)
WINDOW = Window(row=700_000, col=300_000, height=256, width=256)  # ~ (−1.0e6, −0.9e6): lon ≈ −90°


def _dataarray(values: np.ndarray, chunks: int) -> xr.DataArray:
    x, y = GRID.coords(WINDOW)
    return xr.DataArray(da.from_array(values, chunks=chunks), dims=("y", "x"), coords={"x": x, "y": y})


def _plane(east: float, north: float) -> np.ndarray:
    x, y = GRID.coords(WINDOW)
    return 100.0 + east * (x[None, :] - x[0]) + north * (y[:, None] - y[0])


def _polygons() -> gpd.GeoDataFrame:
    x0, _, _, y1 = GRID.bounds(WINDOW)
    boxes = [shapely.box(x0 + 300, y1 - 800, x0 + 500, y1 - 600),  # inside one 128-px chunk
             shapely.box(x0 + 1200, y1 - 1400, x0 + 1400, y1 - 1200)]  # across the chunk corner  # fmt: skip
    return gpd.GeoDataFrame({"rts_id": [1, 2]}, geometry=boxes, crs="EPSG:3413")


def test_true_north_points_to_the_pole():
    # Polar stereographic: meridians are straight lines through the pole at the grid origin.
    x = np.array([-1.0e6, 2.0e6, 5.0e5, -3.0e5])
    y = np.array([-9.0e5, 1.0e5, -2.0e6, 1.5e6])
    expected = np.degrees(np.arctan2(-x, -y))
    np.testing.assert_allclose((true_north_azimuth(x, y) - expected + 180) % 360 - 180, 0, atol=1e-3)


@pytest.mark.parametrize(("east", "north"), [(0.1, 0.0), (0.0, -0.2), (-0.05, 0.05)])
def test_slope_and_aspect_of_a_plane(east, north):
    polys = _polygons()
    got = rts_terrain(polys, _dataarray(_plane(east, north), 128), grid=GRID).compute(scheduler="sync")
    slope = np.degrees(np.arctan(np.hypot(east, north)))
    np.testing.assert_allclose(got.slope_deg, slope, rtol=1e-9)
    # The slope faces downhill: azimuth of (−east, −north) from grid north, then from true north.
    grid_aspect = np.degrees(np.arctan2(-east, -north)) % 360
    np.testing.assert_allclose(got.aspect_grid_deg, grid_aspect, atol=1e-9)
    c = polys.geometry.centroid
    north_az = true_north_azimuth(c.x.to_numpy(), c.y.to_numpy())
    np.testing.assert_allclose(got.aspect_deg, (grid_aspect - north_az) % 360, atol=1e-9)
    # Mean elevation of a plane over a box = the plane at its centre.
    x, y = GRID.coords(WINDOW)
    np.testing.assert_allclose(got.elevation_m, 100 + east * (c.x - x[0]) + north * (c.y - y[0]), rtol=1e-9)
    assert got.distance_to_water_m.isna().all()  # no water mask


def test_distance_to_water_and_independence_of_chunking():
    water = np.zeros(WINDOW.shape, dtype=np.float32)
    water[70, 10:20] = 1  # left of the first box (rows 60-79, columns 30-49)
    water[200:210, 200:256] = 1  # far from the first box, 16 px below the second box's bottom row (139)
    rng = np.random.default_rng(3)
    dem = _plane(0.05, 0.02) + rng.normal(0, 0.5, WINDOW.shape)
    polys = _polygons()
    tables = [rts_terrain(polys, _dataarray(dem, ch), water=_dataarray(water, ch), grid=GRID).compute(scheduler="sync")
              for ch in (256, 128, (100, 37))]  # fmt: skip
    for t in tables[1:]:
        np.testing.assert_allclose(t.to_numpy(), tables[0].to_numpy(), rtol=1e-12)
    # Box 1: columns 30-49 and rows 60-79; water at row 70, columns 10-19 → 11 px between pixel centres.
    assert tables[0].distance_to_water_m.iloc[0] == pytest.approx(110.0)
    # Box 2: rows 120-139, columns 120-139; nearest water pixel (200, 200): √(61² + 61²) px.
    assert tables[0].distance_to_water_m.iloc[1] == pytest.approx(10 * np.hypot(61, 61))
