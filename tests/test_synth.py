"""The synthetic region: determinism, window independence, truth, realism against real inventories."""

from __future__ import annotations

import tracemalloc

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import rasterio.features

from rtsflow.grid import DEFAULT_GRID, Window
from rtsflow.kernels.error import sigma_h
from rtsflow.products import read_product
from rtsflow.synth.generator import SynthConfig, SynthRegion, synthesize
from rtsflow.synth.observations import render_observation, schedule
from rtsflow.synth.scene import Scene

from .conftest import shared, tree_digest


def _read(path):
    with rasterio.open(path) as src:
        return src.read(1)


def _tif_digest(root):
    return {k: v for k, v in tree_digest(root).items() if k.endswith((".tif", ".json"))}


def test_same_seed_same_files_other_seed_other_files(tmp_path, small_region):
    again = synthesize(tmp_path / "again", config=small_region.config)
    assert _tif_digest(again.root) == _tif_digest(small_region.root)
    a = gpd.read_parquet(small_region.truth_slumps)
    b = gpd.read_parquet(again.truth_slumps)
    pd.testing.assert_frame_equal(a.drop(columns="geometry"), b.drop(columns="geometry"))
    assert a.geometry.geom_equals(b.geometry).all()
    other = synthesize(tmp_path / "other", config=SynthConfig(seed=4, size_km=(1.5, 1.5), winters=(2010, 2016)))
    dem0 = small_region.products[0]
    assert not np.array_equal(
        _read(read_product(dem0).rasters["dem"]), _read(read_product(other.products[0]).rasters["dem"])
    )


def test_output_does_not_depend_on_generation_window(tmp_path, small_region):
    # 1.5 km = 150 px: windows of 64 px split it into many pieces (and noise cells).
    pieces = synthesize(tmp_path / "pieces", config=small_region.config, window_px=64)
    assert _tif_digest(pieces.root) == _tif_digest(small_region.root)


def test_products_are_valid_sidecars_with_all_layers(small_region):
    assert small_region.products
    for p in small_region.products:
        product = read_product(p)
        assert product.kind == "insar"
        assert set(product.rasters) == {"dem", "coherence", "layover_shadow", "incidence"}
        with rasterio.open(product.rasters["dem"]) as src:
            assert src.crs.to_epsg() == 3413
            assert DEFAULT_GRID.window_from_bounds(tuple(src.bounds)) == small_region.window


def test_schedule_has_summer_and_out_of_range_hoa():
    obs = schedule(Scene(seed=0, epochs=(2010, 2013, 2016)), per_winter=3)
    months = np.array([int(str(o.time)[5:7]) for o in obs])
    summer = [o for o in obs if o.winter is None]
    assert summer and all(5 <= int(str(o.time)[5:7]) <= 9 for o in summer)
    winter = [o for o in obs if o.winter is not None]
    assert all(m >= 10 or m <= 4 for m, o in zip(months, obs, strict=True) if o.winter is not None)
    # The winter label is the year the winter starts.
    for o in winter:
        year, month = int(str(o.time)[:4]), int(str(o.time)[5:7])
        assert o.winter == (year if month >= 10 else year - 1)
    hoa = np.array([o.hoa for o in obs])
    assert ((hoa < 15) | (hoa > 80)).any() and ((hoa >= 15) & (hoa <= 80)).any()
    for w in (2010, 2013, 2016):
        first = next(o for o in winter if o.winter == w)
        assert 15 <= first.hoa <= 80
    shifts = np.array([np.hypot(*o.shift) for o in obs]) / 10.0
    assert shifts.min() < 1.0 < shifts.max() <= 3.0  # sub-pixel to a few pixels


def test_truth_volumes_equal_implanted_change_integrated_over_polygons(small_region):
    truth = gpd.read_parquet(small_region.truth_slumps)
    assert len(truth) >= 3
    window = small_region.window
    grid = DEFAULT_GRID
    transform = grid.transform(window)
    ground = grid.pixel_ground_area(window)
    for (w0, w1), rows in truth.groupby(["winter_start", "winter_end"]):
        dh = _read(small_region.truth_rasters[f"dh_{w0}_{w1}"]).astype("float64")
        label = _read(small_region.truth_rasters[f"rts_mask_{w0}_{w1}"])
        union = np.zeros(dh.shape, bool)
        for _, row in rows.iterrows():
            mask = rasterio.features.rasterize([row.geometry], out_shape=dh.shape, transform=transform).astype(bool)
            assert mask.sum() == row.n_pixels
            assert (dh[mask] * ground[mask]).sum() == pytest.approx(row.volume_m3, rel=1e-5)
            assert dh[mask].sum() * 100.0 == pytest.approx(row.volume_nominal_m3, rel=1e-5)
            assert ground[mask].sum() == pytest.approx(row.area_m2, rel=1e-9)
            union |= mask
        # The training label is exactly the union of the period's polygons.
        np.testing.assert_array_equal(label.astype(bool), union)
        # Slumps remove ground: all net volumes are negative.
        assert (rows.volume_m3 < 0).all()
        # Outside the slumps the truth dDEM is zero except for debris tongues (positive).
        assert (dh[~union] >= -1e-6).all()


def test_products_show_the_implanted_slumps(small_region):
    """Winter DEM differences over each truth polygon follow the implanted mean change."""
    truth = gpd.read_parquet(small_region.truth_slumps)
    rows = truth[(truth.winter_start == 2010) & (truth.winter_end == 2016) & (truth.n_pixels >= 40)]
    assert len(rows) >= 3
    obs = {o.winter: o for o in reversed(small_region.observations) if o.winter is not None and 15 <= o.hoa <= 80}
    dem = {w: _read(small_region.root / "products" / f"{obs[w].id}_dem.tif").astype("float64") for w in (2010, 2016)}
    ddem = dem[2016] - dem[2010]
    ddem -= np.nanmedian(ddem)
    transform = DEFAULT_GRID.transform(small_region.window)
    observed = []
    for _, row in rows.iterrows():
        mask = rasterio.features.rasterize([row.geometry], out_shape=ddem.shape, transform=transform).astype(bool)
        observed.append(np.median(ddem[mask]))
    r = np.corrcoef(observed, rows.mean_dh_m)[0, 1]
    assert r > 0.6, (observed, list(rows.mean_dh_m))
    assert np.median(observed) < -0.5


def test_noise_follows_sigma_h_of_eq1(small_region):
    """Two acquisitions of one winter differ on flat stable ground by √(σ₁² + σ₂²) (Eq. 1)."""
    w = [o for o in small_region.observations if o.winter == 2010][:2]
    root = small_region.root / "products"
    d = _read(root / f"{w[1].id}_dem.tif").astype("float64") - _read(root / f"{w[0].id}_dem.tif")
    s = np.hypot(
        sigma_h(_read(root / f"{w[0].id}_coherence.tif").astype("float64"), w[0].hoa),
        sigma_h(_read(root / f"{w[1].id}_coherence.tif").astype("float64"), w[1].hoa),
    )
    surface = Scene(seed=small_region.config.seed, epochs=small_region.config.winters).base_terrain(
        *DEFAULT_GRID.coords(small_region.window)
    )
    gy, gx = np.gradient(surface, 10.0)
    water = _read(small_region.truth_rasters["water"]).astype(bool)
    flat = (np.hypot(gx, gy) < np.tan(np.deg2rad(1.0))) & ~water & (s < 5)
    assert flat.sum() > 500
    z = (d - np.median(d[flat])) / s
    assert np.std(z[flat]) == pytest.approx(1.0, abs=0.2)


def test_coherence_low_on_water_and_layover_where_steep():
    scene = Scene(seed=0)
    obs = schedule(scene)[0]
    window = Window(562_000, 380_000, 400, 400)
    x, y = DEFAULT_GRID.coords(window)
    # Find a window with a lake and a steep valley wall.
    for dr in range(0, 4000, 400):
        w = Window(window.row + dr, window.col, 400, 400)
        x, y = DEFAULT_GRID.coords(w)
        water = scene.water(x + obs.shift[0], y + obs.shift[1])
        noise = np.random.default_rng(0).standard_normal((3, 400, 400)).astype("float32")
        layers = render_observation(scene, obs, x, y, noise=noise, centre=(x.mean(), y.mean()))
        ls = layers["layover_shadow"].astype(bool)
        if water.sum() > 500 and ls.sum() > 10:
            break
    else:
        pytest.fail("no window with both a lake and layover/shadow found")
    coh = layers["coherence"]
    assert coh[water].mean() < 0.25 and coh[~water].mean() > 0.5
    inc = layers["incidence"]
    # Layover has no positive local incidence; shadow is at or beyond grazing (π/2).
    assert np.all((inc[ls] <= 1e-6) | (inc[ls] >= np.pi / 2 - 1e-6))
    assert np.all((inc[~ls] > 0) & (inc[~ls] < np.pi / 2))


def test_slump_sizes_and_depths_follow_real_inventories():
    """Areas and mean depths of synthetic slumps match Maier et al. (Ellesmere) and Taymyr TP2."""
    scene = Scene(seed=11, slump_density=1.5)
    slumps = scene.slumps((-2.35e6, 0.45e6, -2.30e6, 0.50e6))  # 2 500 km² catalogue, no rasters
    assert len(slumps) > 1000
    area = np.array([np.pi * s.length * s.width / 4 for s in slumps])
    from rtsflow.synth.scene import SHAPE_MEAN

    mean_depth = np.array([s.depth * SHAPE_MEAN for s in slumps])
    ref = gpd.read_file(shared("maier2025_ellesmere", "reference_postprocessed.geojson"))
    ref_area = ref["area"].to_numpy()
    ref_depth = -(ref["tot_volume_change"] / ref["area"]).to_numpy()
    taymyr = gpd.read_file(shared("arts_bernhard2022", "taymyr", "SHP_RTS_TP2.shp")).to_crs(3413).area.to_numpy()
    for q in (0.25, 0.5, 0.75):
        assert np.quantile(area, q) == pytest.approx(np.quantile(ref_area, q), rel=0.35)
        assert np.quantile(area, q) == pytest.approx(np.quantile(taymyr, q), rel=0.45)
        assert np.quantile(mean_depth, q) == pytest.approx(np.quantile(ref_depth, q), rel=0.25)
    assert area.min() >= 1_000 * (1 - 1e-9) and area.max() <= 100_000 * (1 + 1e-9)
    peak = np.array([s.depth for s in slumps])
    assert peak.max() <= 20.0 and np.quantile(peak, 0.99) > 8.0
    # Slumps never overlap (hard-core placement) and are not on a visible lattice.
    xy = np.array([(s.x, s.y) for s in slumps])
    frac = np.mod(xy, 400.0) / 400.0
    assert np.histogram(frac[:, 0], bins=4)[0].min() > 0.15 * len(slumps)


def test_generation_memory_is_bounded_by_the_window(tmp_path):
    """A 10 x 10 km region (12 products x 4 layers x 4 MB) is generated in small windows."""
    config = SynthConfig(seed=5, size_km=(10.0, 10.0))
    tracemalloc.start()
    region = synthesize(tmp_path / "r", config=config, window_px=256)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    whole_layer = 1000 * 1000 * 4
    assert len(region.products) == 12
    # Holding the region would need >= 48 layers x 4 MB; one window needs far less.
    assert peak < 10 * whole_layer, f"peak {peak / 1e6:.0f} MB"


def test_region_reloads(small_region):
    again = SynthRegion.load(small_region.root)
    assert again.window == small_region.window
    assert [o.id for o in again.observations] == [o.id for o in small_region.observations]
    assert again.n_slumps == small_region.n_slumps > 0
