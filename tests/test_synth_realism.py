"""Realism of the generator (#12, part 1): DEM errors and real terrain, each checked against a stated statistic."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from rtsflow.grid import Window
from rtsflow.synth.errors import blunder_offsets, correlated_noise, halo_px
from rtsflow.synth.fields import rng_for
from rtsflow.synth.generator import SynthConfig, _observation_noise, synthesize


def _correlation_length(field: np.ndarray, max_lag: int = 12) -> float:
    """Lag (px) where the empirical correlation (rows and columns averaged) falls to 1/e, interpolated."""
    f = (field - field.mean()) / field.std()
    rho = [1.0] + [0.5 * ((f[:, k:] * f[:, :-k]).mean() + (f[k:, :] * f[:-k, :]).mean()) for k in range(1, max_lag)]
    rho = np.asarray(rho)
    k = int(np.flatnonzero(rho < np.exp(-1))[0])
    # Linear interpolation between lags k-1 and k.
    return (k - 1) + (rho[k - 1] - np.exp(-1)) / (rho[k - 1] - rho[k])


@pytest.mark.parametrize("length_px", [1.5, 2.0, 3.0])
def test_correlated_noise_has_its_correlation_length_and_unit_variance(length_px):
    h = halo_px(length_px)
    white = np.random.default_rng(7).standard_normal((1024 + 2 * h, 1024 + 2 * h))
    field = correlated_noise(white, length_px=length_px)
    assert field.shape == (1024, 1024)
    assert field.std() == pytest.approx(1.0, rel=0.03)
    assert _correlation_length(field) == pytest.approx(length_px, rel=0.2)
    # The empirical variogram γ(r) = 1 − ρ(r) at r = L is 1 − 1/e of the sill.
    white_only = correlated_noise(white, length_px=0)
    assert _correlation_length(white_only) < 1.0


def test_correlated_dem_noise_does_not_depend_on_the_window():
    config = SynthConfig(seed=4, noise_correlation_px=2.0)
    whole = _observation_noise(config, 3, Window(5000, 7000, 300, 260))
    part = _observation_noise(config, 3, Window(5100, 7090, 120, 100))
    np.testing.assert_array_equal(whole[:, 100:220, 90:190], part)
    assert _correlation_length(whole[0]) == pytest.approx(2.0, rel=0.25)
    # Coherence speckle and water fields are the original generator's.
    plain = _observation_noise(SynthConfig(seed=4), 3, Window(5000, 7000, 300, 260))
    np.testing.assert_array_equal(whole[1:], plain[1:])


def test_unwrapping_blunders_are_multiples_of_the_hoa():
    hoa = 37.3
    rows, cols = np.arange(10_000, 11_024), np.arange(20_000, 21_024)
    coherence = np.full((rows.size, cols.size), 0.3, np.float32)
    coherence[:, 512:] = 0.8  # good coherence: unwrapping holds there

    def cell_rng(r, c):
        return rng_for(1, "blunders", 0, r, c)

    off = blunder_offsets(rows=rows, cols=cols, coherence=coherence, hoa=hoa, rate_per_cell=3.0, rng_for_cell=cell_rng)
    hit = off != 0
    assert hit[:, :512].mean() > 0.01 and not hit[:, 512:].any()
    k = off[hit] / hoa
    np.testing.assert_allclose(k, np.round(k), atol=1e-5)
    assert set(np.unique(np.round(k)).astype(int)) <= {-2, -1, 1, 2}
    # Patches follow the global lattice: a sub-window sees the same offsets.
    sub = blunder_offsets(rows=rows[300:400], cols=cols[100:250], coherence=coherence[300:400, 100:250], hoa=hoa,
                          rate_per_cell=3.0, rng_for_cell=cell_rng)  # fmt: skip
    np.testing.assert_array_equal(sub, off[300:400, 100:250])
    # Rate: patches per cell ~ Poisson(3) with mean area π·E[a]·E[b] ≈ π·23²; covered share of a cell ≈ 1 − exp(−λ).
    cover = blunder_offsets(rows=np.arange(0, 2048), cols=np.arange(0, 2048), coherence=np.zeros((2048, 2048)),
                            hoa=hoa, rate_per_cell=3.0, rng_for_cell=cell_rng) != 0  # fmt: skip
    expected = 1 - np.exp(-3.0 * np.pi * 23.0**2 / 256**2)
    assert cover.mean() == pytest.approx(expected, rel=0.35)


def test_synthesized_products_carry_the_configured_errors(tmp_path):
    """Same region with and without blunders: the DEMs differ by whole multiples of each product's HoA."""
    base = SynthConfig(seed=2, size_km=(1.5, 1.5), winters=(2010, 2016), obs_per_winter=2)
    plain = synthesize(tmp_path / "plain", config=base)
    on = synthesize(tmp_path / "on", config=dataclasses.replace(base, blunders_per_100km2=2000.0))
    n_hit = 0
    for a, b in zip(plain.products, on.products, strict=True):
        doc = json.loads(b.read_text())
        hoa = doc["hoa_m"]
        dems = []
        for p in (a, b):
            with rasterio.open(p.with_name(f"{p.stem}_dem.tif")) as src:
                dems.append(src.read(1).astype(np.float64))
        d = dems[1] - dems[0]
        hit = np.abs(d) > 1e-3
        n_hit += int(hit.sum())
        np.testing.assert_allclose(d[hit] / hoa, np.round(d[hit] / hoa), atol=1e-3)
    assert n_hit > 0
    record = json.loads((tmp_path / "on" / "region.json").read_text())
    assert record["config"]["blunders_per_100km2"] == 2000.0


def test_long_range_errors_have_their_configured_size():
    """Ramps: 1σ of the tilts over many observations; undulations: RMS over 40 km of one observation."""
    from rtsflow.synth.observations import render_observation, schedule

    tilts = []
    for seed in range(40):
        obs = schedule(SynthConfig(seed=seed).scene(), per_winter=3, ramp_sigma=2e-4)
        tilts += [o.tilt[k] for o in obs for k in (0, 1)]
    assert np.std(tilts) == pytest.approx(2e-4, rel=0.1)

    scene = SynthConfig(seed=5).scene()
    x = -2_300_000 + 200.0 * np.arange(200)
    y = -300_000 - 200.0 * np.arange(200)
    zero = np.zeros((3, y.size, x.size), np.float32)
    dems = []
    for rms in (0.0, 1.5):
        obs = schedule(scene, per_winter=1, undulation_rms=rms)[0]
        dems.append(render_observation(scene, obs, x, y, noise=zero, centre=(x.mean(), y.mean()))["dem"])
    undulation = dems[1].astype(np.float64) - dems[0]
    assert np.sqrt((undulation**2).mean()) == pytest.approx(1.5, rel=0.2)
    assert undulation.std() > 0.5  # kilometre-scale waves, not a constant offset


DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LONGYEARBYEN = DATA / "longyearbyen" / "DEM_1995.tif"


def test_real_terrain_keeps_the_dem_and_mirrors_beyond_it():
    from rtsflow.synth.terrain import RasterTerrain

    with rasterio.open(LONGYEARBYEN) as src:
        dem = src.read(1).astype(np.float64)
    t = RasterTerrain.from_dem(LONGYEARBYEN, centre=(-2_000_000.0, -500_000.0))
    assert t.z.shape == dem.shape and t.resolution == 20.0
    # Centred on the given point; heights at the DEM's pixel centres are the DEM's (the spline interpolates).
    assert t.x0 + t.z.shape[1] * 10.0 == pytest.approx(-2_000_000.0)
    rows, cols = np.array([0, 17, 500, 984]), np.array([0, 900, 31, 1331])
    xs, ys = t.x0 + (cols + 0.5) * 20.0, t.y0 - (rows + 0.5) * 20.0
    np.testing.assert_allclose(t.at(xs, ys), dem[rows, cols], atol=1e-6)
    # Mirrored across the left edge: no cliff, any region size is covered.
    y = t.y0 - 4000.5
    np.testing.assert_allclose(t.at(t.x0 + 10.0 - 60.0, y), t.at(t.x0 + 10.0 + 60.0, y), atol=1e-9)
    # Sampled at 10 m the slopes are those of the DEM (median within 10 %).
    x = t.x0 + 10.0 * np.arange(5, 2600)
    yy = t.y0 - 10.0 * np.arange(5, 1900)
    gy, gx = np.gradient(t.on_grid(x, yy), 10.0)
    gy0, gx0 = np.gradient(dem, 20.0)
    assert np.median(np.hypot(gx, gy)) == pytest.approx(np.median(np.hypot(gx0, gy0)), rel=0.1)


def test_a_window_of_real_terrain_mirrored_and_turned():
    """``offset`` names a place on the DEM (its own frame) that lands on the region's centre; flips and
    quarter turns move every height with it, exactly (no resampling)."""
    from rtsflow.synth.terrain import RasterTerrain

    centre = np.array([-2_000_000.0, -500_000.0])
    plain = RasterTerrain.from_dem(LONGYEARBYEN, centre=tuple(centre))
    offset = np.array([-6_020.0, 3_140.0])
    # Points around the place, in the DEM's frame: east/north of it by (dx, dy).
    d = np.array([[0.0, 0.0], [400.0, 0.0], [0.0, 250.0], [-730.0, -90.0], [1_500.0, -2_200.0]])
    expected = plain.at(*(centre + offset + d).T)
    assert np.ptp(expected) > 20.0  # different heights: a wrong turn cannot pass by chance
    for flip in (False, True):
        for turns in range(4):
            t = RasterTerrain.from_dem(LONGYEARBYEN, centre=tuple(centre), offset=tuple(offset), turns=turns,
                                       flip=flip)  # fmt: skip
            v = d * np.array([-1.0, 1.0]) if flip else d.copy()
            for _ in range(turns):  # anticlockwise quarter turns: (x, y) → (−y, x)
                v = np.stack([-v[:, 1], v[:, 0]], axis=1)
            np.testing.assert_allclose(t.at(*(centre + v).T), expected, atol=1e-6, err_msg=f"{flip=} {turns=}")


def test_a_region_on_real_terrain(tmp_path):
    """Slumps on real slopes, facing downhill; lakes only on flat ground; products carry the real heights."""
    import math

    from rtsflow.synth.scene import MAX_LAKE_SLOPE_DEG

    config = SynthConfig(seed=3, size_km=(3.0, 3.0), winters=(2010, 2016), obs_per_winter=1, terrain=str(LONGYEARBYEN))
    region = synthesize(tmp_path / "r", config=config)
    scene = config.scene()
    bounds = config.grid().bounds(config.window())
    slumps = scene.slumps(bounds)
    assert len(slumps) > 0
    for s in slumps:
        gx, gy = scene.base_gradient_at(s.x, s.y)
        slope = math.degrees(math.atan(math.hypot(gx, gy)))
        assert 0.5 <= slope <= 30.0
        assert s.direction[0] * gx + s.direction[1] * gy < 0  # the scar opens downhill
    for lake in scene.lakes(bounds):
        assert math.degrees(math.atan(math.hypot(*scene.base_gradient_at(lake.x, lake.y)))) <= MAX_LAKE_SLOPE_DEG
    with rasterio.open(region.root / "reference_dem.tif") as src:
        ref = src.read(1)
    x, y = config.grid().coords(config.window())
    np.testing.assert_allclose(ref, scene.surface(x, y, 0).astype(np.float32))
    assert 8.0 <= ref.min() and ref.max() <= 1023.0 and ref.std() > 20.0  # Svalbard relief, not the analytic hills


MAIER_REFERENCE = LONGYEARBYEN.parents[1] / "maier2025_ellesmere" / "reference_postprocessed.geojson"
TAYMYR_TP2 = LONGYEARBYEN.parents[1] / "arts_bernhard2022" / "taymyr" / "SHP_RTS_TP2.shp"


def _world_outline(slump, fraction=1.0):
    """The slump's outline polygon in EPSG:3413 metres (inverse of Slump.local_coords)."""
    import shapely

    cx, cy, length, width = slump.geometry_at(fraction)
    dx, dy = slump.direction
    s, t = slump.outline[:, 0], slump.outline[:, 1]
    along, across = (s - 0.5) * length, t * width / 2
    return shapely.Polygon(np.column_stack([cx + along * dx - across * dy, cy + along * dy + across * dx]))


def test_real_outlines_become_slump_shapes():
    import shapely

    from rtsflow.synth.outlines import load_outlines
    from rtsflow.synth.scene import Slump

    maier = load_outlines(MAIER_REFERENCE)
    taymyr = load_outlines(TAYMYR_TP2)
    assert len(maier) == 279 and len(taymyr) > 1300
    for v in maier + taymyr:
        assert v[:, 0].min() >= -0.02 and v[:, 0].max() <= 1.02 and np.abs(v[:, 1]).max() <= 1.02
    # The normalisation keeps each shape: area over its rectangle is that of the original polygon.
    import geopandas as gpd

    ref = gpd.read_file(MAIER_REFERENCE)
    fill = ref.area / ref.geometry.minimum_rotated_rectangle().area
    np.testing.assert_allclose(np.median([shapely.Polygon(v).area / 2 for v in maier]), fill.median(), rtol=0.03)

    slump = Slump(1, 1000.0, 2000.0, (0.6, -0.8), 300.0, 400.0, 8.0, (0.0, 1.0), outline=maier[17])
    res = 2.0
    x = np.arange(500.0, 1500.0, res) + res / 2
    y = np.arange(2500.0, 1500.0, -res) - res / 2
    mask = slump.footprint(x, y, 1.0)
    truth = _world_outline(slump)
    xx, yy = np.meshgrid(x, y)
    inside = shapely.contains_xy(truth, xx, yy)
    iou = (mask & inside).sum() / (mask | inside).sum()
    assert iou > 0.99, iou
    # The profile: erosion only inside, deepest near the headwall, a debris tongue (accumulation) below the toe.
    dh = slump.elevation_change(x, y, 1.0)
    assert (dh[~mask] >= 0).all() and dh[mask].min() < -0.5 * slump.depth
    s, _ = slump.local_coords(x, y, 1.0)
    s = np.broadcast_to(s, dh.shape)
    assert s[np.unravel_index(np.argmin(dh), dh.shape)] < 0.5
    assert dh[(s > 1.0) & ~mask].max() > 0.05 * slump.depth
    # Any window gives the same heights.
    np.testing.assert_array_equal(slump.elevation_change(x[100:300], y[50:400], 1.0), dh[50:400, 100:300])


def test_a_region_with_real_outlines(tmp_path):
    import geopandas as gpd
    import shapely

    config = SynthConfig(seed=6, size_km=(2.0, 2.0), winters=(2010, 2016), obs_per_winter=1,
                         outlines=(str(MAIER_REFERENCE),))  # fmt: skip
    region = synthesize(tmp_path / "r", config=config)
    truth = gpd.read_parquet(region.truth_slumps)
    assert len(truth) > 0
    slumps = {s.id: s for s in config.scene().slumps(config.grid().bounds(config.window()))}
    ious = []
    for row in truth.itertuples():
        s = slumps[row.slump_id]
        assert s.outline is not None
        world = _world_outline(s)
        if not row.clipped:
            ious.append(shapely.intersection(world, row.geometry).area / shapely.union(world, row.geometry).area)
    assert ious and min(ious) > 0.7 and np.median(ious) > 0.85, ious  # 10 m pixels on outlines of ~100 m


def test_hard_negatives_change_the_ground_by_their_stated_amounts():
    """Every kind, many draws: the dDEM between consecutive epochs shows the drawn change, inside its outline."""
    import shapely

    from rtsflow.synth.confounders import KINDS, make_confounder

    seen = dict.fromkeys(KINDS, 0)
    for k in range(150):
        rng = np.random.default_rng(k)
        c = make_confounder(rng, id=k, x=0.0, y=0.0, priority=0.5, n_epochs=3, gradient=(0.05, -0.02))
        if c is None:
            continue
        seen[c.kind] += 1
        res = 2.0
        x = np.arange(-c.radius, c.radius, res) + res / 2
        y = np.arange(c.radius, -c.radius, -res) - res / 2
        xx, yy = np.meshgrid(x, y)
        for e in (1, 2):
            d = c.elevation_change(x, y, e) - c.elevation_change(x, y, e - 1)
            if c.kind == "gully":
                grown = c.amount[e] - c.amount[e - 1]  # headward growth once it exists (from epoch ``onset``)
                assert e <= c.onset or 10 <= grown <= 80 or c.amount[e] == c.length
                assert d.min() >= -c.depth - 1e-9 and 3 <= c.width <= 12 and 0.5 <= c.depth <= 3
            elif c.kind == "bank":
                assert 5 <= c.amount[e] - c.amount[e - 1] <= 30 or e < c.onset
                assert 1.5 <= c.depth <= 6 and (d.min() == pytest.approx(-c.depth) or e < c.onset)
            elif c.kind == "snow":
                assert np.abs(d).max() == pytest.approx(abs(c.amount[e] - c.amount[e - 1]), rel=0.02, abs=1e-9)
            elif c.kind == "spoil":
                assert 1 <= c.amount[-1] <= 5 and d.max() == pytest.approx(c.amount[e] - c.amount[e - 1], rel=0.02)
            elif c.kind == "ice":
                step = c.amount[e] - c.amount[e - 1]
                assert 1 <= step <= 6 and -d.min() == pytest.approx(step, rel=0.02)
            # Everything that changed lies in the truth outline of the later epoch (or the earlier one).
            changed = np.abs(d) > 0.01
            area = shapely.union(c.outline(e), c.outline(e - 1)).buffer(2 * res)
            assert shapely.contains_xy(area, xx[changed], yy[changed]).all(), c.kind
    assert all(n >= 10 for n in seen.values()), seen


def test_hard_negatives_in_a_region_leave_the_slump_truth_alone(tmp_path):
    import geopandas as gpd

    base = SynthConfig(seed=8, size_km=(3.0, 3.0), winters=(2010, 2016), obs_per_winter=1)
    plain = synthesize(tmp_path / "plain", config=base)
    hard = synthesize(tmp_path / "hard", config=dataclasses.replace(base, hard_negatives_per_km2=3.0))
    conf = gpd.read_parquet(hard.truth_confounders)
    kinds = set(conf.kind)
    assert len(kinds - {"pit", "lake"}) >= 3, kinds
    a, b = gpd.read_parquet(plain.truth_slumps), gpd.read_parquet(hard.truth_slumps)
    assert list(a.slump_id) == list(b.slump_id) and np.allclose(a.volume_m3, b.volume_m3)
    negatives = conf[~conf.kind.isin(["pit", "lake"])]
    assert not negatives.intersects(b.union_all()).any()
    # The products differ where the hard negatives are, by their changes.
    p, h = plain.products[-1], hard.products[-1]
    with rasterio.open(p.with_name(f"{p.stem}_dem.tif")) as s1, rasterio.open(h.with_name(f"{h.stem}_dem.tif")) as s2:
        assert np.abs(s2.read(1) - s1.read(1)).max() > 0.5


def test_rtsflow_synth_has_every_realism_switch(tmp_path):
    from click.testing import CliRunner

    from rtsflow.cli import main

    out = tmp_path / "r"
    r = CliRunner().invoke(main, ["synth", str(out), "--size-km", "1", "1", "--winters", "2010,2016",
                                  "--obs-per-winter", "1", "--terrain", str(LONGYEARBYEN), "--outlines",
                                  str(MAIER_REFERENCE), "--noise-correlation-px", "2", "--blunders-per-100km2", "20",
                                  "--ramp-m-per-km", "0.05", "--undulation-rms-m", "0.5",
                                  "--hard-negatives-per-km2", "2", "--slump-slopes", "arts", "--terrain-offset-km",
                                  "-6", "3.5", "--terrain-turns", "3", "--terrain-flip"])  # fmt: skip
    assert r.exit_code == 0, r.output
    config = json.loads((out / "region.json").read_text())["config"]
    assert config["terrain"] == str(LONGYEARBYEN.resolve()) and config["outlines"] == [str(MAIER_REFERENCE.resolve())]
    assert (config["noise_correlation_px"], config["blunders_per_100km2"], config["ramp_m_per_km"],
            config["undulation_rms_m"], config["hard_negatives_per_km2"]) == (2.0, 20.0, 0.05, 0.5, 2.0)  # fmt: skip
    assert config["slump_slopes"] == "arts"
    assert (config["terrain_offset_km"], config["terrain_turns"], config["terrain_flip"]) == ([-6.0, 3.5], 3, True)
    # The region shows that place of the DEM: its reference heights are the turned, mirrored DEM's there.
    region = SynthConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    with rasterio.open(out / "reference_dem.tif") as src:
        ref = src.read(1)
    x, y = region.grid().coords(region.window())
    np.testing.assert_allclose(ref, region.scene().surface(x, y, 0).astype(np.float32))
    plain = dataclasses.replace(region, terrain_offset_km=(0.0, 0.0), terrain_turns=0, terrain_flip=False)
    assert np.abs(ref - plain.scene().surface(x, y, 0)).mean() > 10.0  # not the DEM's centre as it lies


ARTS_INVENTORY = DATA / "arts_bernhard2022" / "RTS_data_Inventory.csv"


def _site_slopes(terrain: str, slump_slopes: str) -> np.ndarray:
    """Hillslope (degrees) under the centre of every slump of three 5-km realistic scenes."""
    from pipelines.scenes import realistic

    out = []
    for seed in (100, 101, 102):
        config = realistic(seed=seed, size_km=5.0, terrain=terrain, slump_slopes=slump_slopes)
        scene = config.scene()
        for s in scene.slumps(config.grid().bounds(config.window())):
            out.append(np.degrees(np.arctan(np.hypot(*scene.base_gradient_at(s.x, s.y)))))
    return np.array(out)


def test_slumps_sit_on_the_slopes_of_the_arts_inventory():
    import pandas as pd

    from rtsflow.synth.scene import SLUMP_STATS, Scene

    # The fitted log-normal is the inventory's (1 832 TanDEM-X RTS, their mean slope).
    arts = pd.read_csv(ARTS_INVENTORY, skipinitialspace=True, index_col=False)["dem_avg_slope"].to_numpy(float)
    assert len(arts) == 1832
    assert np.log(arts).mean() == pytest.approx(SLUMP_STATS["log_slope_mean"], abs=0.01)
    assert np.log(arts).std() == pytest.approx(SLUMP_STATS["log_slope_sd"], abs=0.01)
    median = np.median(arts)  # 7.95°
    # On a real Arctic DEM with every slope on offer, the slumps' slopes are the inventory's (median within 20 %,
    # quartiles within 30 %); on any slope they would follow the mountains (median ~19°).
    lyb = _site_slopes("longyearbyen", "arts")
    assert len(lyb) > 100
    assert np.median(lyb) == pytest.approx(median, rel=0.2)
    for q in (25, 75):
        assert np.percentile(lyb, q) == pytest.approx(np.percentile(arts, q), rel=0.3)
    assert np.median(_site_slopes("longyearbyen", "any")) > 1.8 * median
    # Terrain without such slopes leans towards the ones it has, but the placement moves every terrain towards them.
    for terrain in ("analytic", "st_helens"):
        near, anywhere = (abs(np.log(np.median(_site_slopes(terrain, m)) / median)) for m in ("arts", "any"))
        assert near < 0.5 * anywhere, terrain
    with pytest.raises(ValueError, match="slump_slopes"):
        Scene(slump_slopes="steep")


def _ddem_sigma_over_slumps(winter_coherence: float) -> np.ndarray:
    """dDEM σ over slump pixels as the pipeline propagates it (masked, coherence-weighted composites, 2010–2016)."""
    from rtsflow.kernels.composite import CompositeAccumulator
    from rtsflow.kernels.quality import sar_quality_mask
    from rtsflow.synth.observations import render_observation, schedule

    config = SynthConfig(seed=100, size_km=(3.0, 3.0), winters=(2010, 2016), slump_density=3.0,
                         winter_coherence=winter_coherence)  # fmt: skip
    scene, grid, window = config.scene(), config.grid(), config.window()
    x, y = grid.coords(window)
    rng = np.random.default_rng(0)
    composites = {}
    for obs in schedule(scene, per_winter=3, summer=False, winter_coherence=winter_coherence):
        if not 15.0 <= obs.hoa <= 80.0:  # the paper's selection
            continue
        layers = render_observation(scene, obs, x, y, noise=rng.standard_normal((3, len(y), len(x))),
                                    centre=(float(x.mean()), float(y.mean())))  # fmt: skip
        bad = sar_quality_mask(layers["coherence"], layover_shadow=layers["layover_shadow"],
                               incidence=layers["incidence"])  # fmt: skip
        acc = composites.setdefault(obs.epoch, CompositeAccumulator(window.shape))
        acc.add(np.where(bad, np.nan, layers["dem"]), layers["sigma_h"], weights=layers["coherence"])
    (_, s1, _), (_, s2, _) = (composites[e].result() for e in sorted(composites))
    slumps = scene.slump_change(x, y, 1, since=0) < -0.5
    sigma = np.sqrt(s1.astype(float) ** 2 + s2.astype(float) ** 2)[slumps]
    return sigma[np.isfinite(sigma)]


def test_winter_coherence_gives_the_ddem_error_of_real_tandemx_slumps():
    """The realistic setting (0.97) puts the dDEM σ over slumps inside the Maier et al. reference RTS' range."""
    import geopandas as gpd

    ref = gpd.read_file(DATA / "maier2025_ellesmere" / "reference_postprocessed.geojson").avg_height_error
    p10, p50, p90 = np.percentile(ref, [10, 50, 90])  # 0.35, 0.62, 1.03 m
    realistic = np.median(_ddem_sigma_over_slumps(0.97))
    assert p10 < realistic < p90 and realistic / p50 < 1.4, (realistic, p50)
    assert np.median(_ddem_sigma_over_slumps(0.8)) > p90  # the demo's world is noisier than every real slump
