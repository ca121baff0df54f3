"""Carbon mobilised by RTS: a hand-computed example, σ against Monte Carlo, config errors, the Maier attributes."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

from rtsflow.carbon import (
    DEFAULT_PROFILE,
    CarbonError,
    CarbonModel,
    SocLayer,
    SocProfile,
    loss_layer_columns,
    rts_carbon,
    zone_carbon,
)
from rtsflow.config import ConfigError, parse_config
from rtsflow.graph.densities import assemble_densities

MAIER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "maier2025_ellesmere"
LAYER_COLS = [c for _, _, c in loss_layer_columns()]


def _table(losses, *, sigma, years=6.0, site=None) -> pd.DataFrame:
    """RTS rows from loss volumes per depth layer (positive numbers = m³ lost)."""
    losses = np.asarray(losses, dtype=float)
    df = pd.DataFrame(-losses, columns=LAYER_COLS)
    df["loss_m3"] = -losses.sum(axis=1)
    df["volume_sigma_m3"] = sigma
    df["years"] = years
    if site is not None:
        df["site"] = site
    return df


def test_hand_computed_example():
    # One RTS lost 100, 50, 20 and 10 m³ in the layers 0-1, 1-2, 2-3 and > 3 m, ± 18 m³ (10 % of 180 m³).
    profile = SocProfile(layers=(
        SocLayer(0, 1, soc_kg_m3=40.0, soc_sigma_kg_m3=4.0, excess_ice=0.2, excess_ice_sigma=0.05),
        SocLayer(1, 3, soc_kg_m3=20.0, soc_sigma_kg_m3=2.0),  # covers two measured layers
        SocLayer(3, np.inf, soc_kg_m3=3.0),
    ))  # fmt: skip
    rts = _table([[100, 50, 20, 10]], sigma=18.0, years=6.0)
    out = rts_carbon(rts, model=CarbonModel(profile=profile)).iloc[0]
    # C = 100·40·(1-0.2) + (50+20)·20 + 10·3 = 3200 + 1400 + 30 = 4630 kg
    assert out.carbon_kg == pytest.approx(4630.0, rel=1e-9)
    assert out.carbon_per_year_kg == pytest.approx(4630.0 / 6, rel=1e-9)
    # Var g1 = 40²·0.05² + 0.8²·4² + 4²·0.05² = 4 + 10.24 + 0.04 = 14.28; Var g2 = 4; Var g3 = 0
    # parameter part: 100²·14.28 + 70²·4 = 142800 + 19600 = 162400
    # volume part: ε = 18/180 = 0.1; E[(a·g)²] = 4630² + 162400 = 21599300 → 0.01·21599300 = 215993
    assert out.carbon_sigma_kg == pytest.approx(np.sqrt(162400 + 215993), rel=1e-9)


def test_bulk_density_form_is_the_product():
    layer = SocLayer.from_content(top_m=0, bottom_m=1, bulk_density_kg_m3=1200, carbon_fraction=0.03,
                                  bulk_density_sigma_kg_m3=100, carbon_fraction_sigma=0.01)  # fmt: skip
    assert layer.soc_kg_m3 == pytest.approx(36.0, rel=1e-12)
    rng = np.random.default_rng(1)
    product = rng.normal(1200, 100, 400_000) * rng.normal(0.03, 0.01, 400_000)
    assert layer.soc_sigma_kg_m3 == pytest.approx(product.std(), rel=0.02)


def test_sigma_matches_monte_carlo_per_rts_and_per_zone():
    """The exact variance formula against sampling the same independent errors (within 5 %)."""
    rng = np.random.default_rng(7)
    n = 12
    losses = rng.uniform(0, 400, (n, 4)) * np.array([1, 0.8, 0.5, 0.3])
    sigma = losses.sum(axis=1) * rng.uniform(0.05, 0.4, n)
    site = np.where(np.arange(n) % 3 == 0, "north", "south")
    rts = _table(losses, sigma=sigma, site=site)
    south = SocProfile(layers=(SocLayer(0, 2, 30, 6, 0.3, 0.1), SocLayer(2, np.inf, 8, 3, 0.1, 0.05)))
    model = CarbonModel(profile=DEFAULT_PROFILE, regions={"south": south})
    zone = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, -1])  # one RTS in no zone
    analytic = rts_carbon(rts, model=model)
    z_mean, z_sigma = zone_carbon(rts, zone, n_zones=3, model=model)

    draws = 40_000
    eps = rng.normal(0, 1, (draws, n)) * (sigma / losses.sum(axis=1))
    per_rts = np.zeros((draws, n))
    for prof, rows in ((DEFAULT_PROFILE, site == "north"), (south, site == "south")):
        w = prof.layer_weights()
        v = losses[rows] @ w  # (n_rows, n_profile_layers)
        rho = np.stack([rng.normal(la.soc_kg_m3, la.soc_sigma_kg_m3, draws) for la in prof.layers], axis=1)
        ice = np.stack([rng.normal(la.excess_ice, la.excess_ice_sigma, draws) for la in prof.layers], axis=1)
        g = rho * (1 - ice)  # shared by every RTS of the profile in one draw
        per_rts[:, rows] = (g @ v.T) * (1 + eps[:, rows])
    np.testing.assert_allclose(per_rts.mean(axis=0), analytic.carbon_kg, rtol=0.02)
    np.testing.assert_allclose(per_rts.std(axis=0), analytic.carbon_sigma_kg, rtol=0.05)
    zones = np.stack([per_rts[:, zone == z].sum(axis=1) for z in range(3)], axis=1)
    np.testing.assert_allclose(zones.mean(axis=0), z_mean, rtol=0.02)
    np.testing.assert_allclose(zones.std(axis=0), z_sigma, rtol=0.05)
    # Shared parameters: a zone's σ is more than the RTS σ added in quadrature.
    for z in range(3):
        assert z_sigma[z] > np.sqrt((analytic.carbon_sigma_kg[zone == z] ** 2).sum())


def test_densities_report_carbon_per_region_in_pg_per_year():
    rts = gpd.GeoDataFrame(_table([[100, 50, 20, 10], [300, 0, 0, 0]], sigma=[20.0, 30.0], years=4.0),
                           geometry=[shapely.box(0, 0, 50, 50), shapely.box(1000, 0, 1050, 50)],
                           crs="EPSG:3413")  # fmt: skip
    rts["area_m2"], rts["volume_m3"] = 2500.0, rts["loss_m3"]
    regions = gpd.GeoDataFrame({"name": ["a", "b"]}, geometry=[shapely.box(-10, -10, 500, 500),
                                                              shapely.box(900, -10, 2000, 500)], crs="EPSG:3413")
    valid_land = np.array([[1e6, 2e6], [np.nan, np.nan]])  # per zone: valid and (unknown) land m²
    table = assemble_densities(rts, [valid_land], regions=regions, cell_size=None, years=4.0, name="name",
                               carbon=CarbonModel())  # fmt: skip
    per_rts = rts_carbon(rts, model=CarbonModel())
    np.testing.assert_allclose(table.carbon_kg, per_rts.carbon_kg, rtol=1e-12)
    np.testing.assert_allclose(table.carbon_rate_pg_per_yr, per_rts.carbon_kg / 4.0 / 1e12, rtol=1e-12)
    np.testing.assert_allclose(table.carbon_rate_kg_per_yr_km2, per_rts.carbon_kg / 4.0 / [1.0, 2.0], rtol=1e-12)


@pytest.mark.parametrize(
    ("carbon", "message"),
    [
        ({"profile": [{"top_m": 0, "bottom_m": 1, "soc_kg_m3": 40}]}, "layer 1: the deepest layer must be open-ended"),
        ({"profile": [{"top_m": 0, "bottom_m": 1, "soc_kg_m3": 40}, {"top_m": 2, "bottom_m": ".inf",
                                                                       "soc_kg_m3": 3}]}, "layer 2: top_m 2.0"),
        ({"profile": [{"top_m": 0, "bottom_m": 1.5, "soc_kg_m3": 40}, {"top_m": 1.5, "bottom_m": ".inf",
                                                                         "soc_kg_m3": 3}]}, "depth 1.5 m is not"),
        ({"profile": [{"top_m": 0, "bottom_m": ".inf", "soc_kg_m3": -1}]}, "layer 1: soc_kg_m3 must be in"),
        ({"profile": [{"top_m": 0, "bottom_m": ".inf", "soc_kg_m3": 4, "excess_ice": 1.5}]},
         "layer 1: excess_ice must be in"),
        ({"profile": [{"top_m": 0, "bottom_m": ".inf", "soc": 4}]}, "layer 1: unknown key(s) ['soc']"),
        ({"profile": [{"top_m": 0, "bottom_m": ".inf", "bulk_density_kg_m3": 1200}]}, "bulk_density_kg_m3 and carbon"),
        ({"profil": []}, "unknown key 'profil'"),
        ({"regions": {"x": [{"top_m": 0, "bottom_m": ".inf", "soc_kg_m3": 4}]}}, "needs densities.sites"),
    ],
)
def test_bad_carbon_config_names_the_field(tmp_path, carbon, message):
    (tmp_path / "c.zarr").mkdir()
    with pytest.raises(ConfigError, match="carbon") as err:
        parse_config({"cube": "c.zarr", "pairs": [[2010, 2016]], "carbon": carbon}, base=tmp_path)
    assert message in str(err.value)


def test_config_carbon_defaults_and_off(tmp_path):
    doc = {"cube": "c.zarr", "pairs": [[2010, 2016]]}
    (tmp_path / "c.zarr").mkdir()
    assert parse_config(doc, base=tmp_path).carbon == CarbonModel()
    assert parse_config({**doc, "carbon": False}, base=tmp_path).carbon is None
    custom = parse_config({**doc, "carbon": {"profile": [
        {"top_m": 0, "bottom_m": 1, "bulk_density_kg_m3": 1000, "carbon_fraction": 0.04},
        {"top_m": 1, "bottom_m": None, "soc_kg_m3": 5}]}}, base=tmp_path).carbon  # fmt: skip
    assert custom.profile.layers[0].soc_kg_m3 == pytest.approx(40.0)
    with pytest.raises(CarbonError, match="top_m must be 0"):
        SocProfile(layers=(SocLayer(1, np.inf, 3),))


def test_default_profile_reproduces_the_maier_regional_total():
    """External truth: Maier et al.'s per-RTS SOC attributes (Ellesmere, TP1) from their per-layer volumes.

    Their SOC comes from a spatially varying map, so one profile (our default, the medians) can only match the
    regional total, which it does within 5 %; per RTS the median error is ~10 %.
    """
    ref = gpd.read_file(MAIER / "reference_postprocessed.geojson")
    years = (ref.year_end.astype(int) - ref.year_start.astype(int)).to_numpy()
    layers = ["yearly_volume_change_0_1m", "yearly_volume_change_1_2m", "yearly_volume_change_2_3m",
              "yearly_volume_change_below3m"]  # fmt: skip
    losses = -ref[layers].to_numpy() * years[:, None]
    rts = _table(losses, sigma=ref.tot_volume_error.to_numpy(), years=years)
    ours = rts_carbon(rts, model=CarbonModel()).carbon_kg.to_numpy()
    theirs = (ref.soc0_1m + ref.soc1_2m + ref.soc2_3m + ref.avg_soc_below3m).to_numpy()
    assert ours.sum() / theirs.sum() == pytest.approx(1.0, abs=0.05)
    assert np.median(np.abs(ours / theirs - 1)) < 0.15
    # Their layer totals are consistent with their own 0-3 m total (what the attributes do tell).
    np.testing.assert_allclose(ref.soc0_1m + ref.soc1_2m + ref.soc2_3m, ref.tot_soc0_3m, rtol=1e-9)


def _soc_maps(tmp_path, *, bands=4):
    """Two 1-km pixels side by side (EPSG:3413): SOC per layer and its σ; band k = layer k."""
    import rasterio
    from rasterio.transform import from_origin

    soc = np.array([[[50.0, 20.0]], [[30.0, 10.0]], [[10.0, 5.0]], [[4.0, 1.0]]])[:bands]
    sigma = np.array([[[5.0, 2.0]], [[3.0, 1.0]], [[1.0, 0.5]], [[0.4, 0.1]]])[:bands]
    paths = []
    for name, a in (("soc.tif", soc), ("soc_sigma.tif", sigma)):
        with rasterio.open(tmp_path / name, "w", driver="GTiff", width=2, height=1, count=len(a), dtype="float64",
                           crs="EPSG:3413", transform=from_origin(0, 1000, 1000, 1000), nodata=-9999) as dst:
            dst.write(a)
        paths.append(tmp_path / name)
    return paths


def _boxes(centres, losses, sigma):
    df = _table(losses, sigma=sigma)
    geoms = [shapely.box(x - 20, y - 20, x + 20, y + 20) for x, y in centres]
    return gpd.GeoDataFrame(df, geometry=geoms, crs="EPSG:3413")


def test_soc_from_a_raster_hand_computed_and_monte_carlo(tmp_path):
    from rtsflow.carbon import add_carbon, soc_columns
    from rtsflow.io.soc_raster import SocRaster

    soc, sigma = _soc_maps(tmp_path)
    model = CarbonModel(raster=SocRaster(path=str(soc), sigma_path=str(sigma)))
    # RTS 0 and 1 on the two map pixels, RTS 2 off the map (→ the default profile).
    rts = _boxes([(500, 500), (1500, 500), (5000, 500)], [[100, 50, 20, 10], [10, 10, 10, 10], [1, 1, 1, 1]],
                 sigma=[18.0, 0.0, 0.0])  # fmt: skip
    out = add_carbon(rts, model=model)
    assert list(out.soc_source) == ["raster", "raster", "profile"]
    assert [c for c, _ in soc_columns(DEFAULT_PROFILE)] == ["soc_0_1m_kg_m3", "soc_1_2m_kg_m3", "soc_2_3m_kg_m3",
                                                            "soc_below_3m_kg_m3"]  # fmt: skip
    assert list(out.soc_0_1m_kg_m3) == [50.0, 20.0, 40.0] and list(out.soc_sigma_below_3m_kg_m3) == [0.4, 0.1, 0.64]
    # C0 = 100·50 + 50·30 + 20·10 + 10·4 = 6740; C1 = 10·(20+10+5+1) = 360; C2 = 40 + 35 + 5.9 + 2.9 = 83.8
    np.testing.assert_allclose(out.carbon_kg, [6740.0, 360.0, 83.8], rtol=1e-9)
    # σ0²: parameters 100²·5² + 50²·3² + 20²·1² + 10²·0.4² = 272916; volume 0.1²·(6740² + 272916) = 457005.16
    assert out.carbon_sigma_kg.iloc[0] == pytest.approx(np.sqrt(272916 + 457005.16), rel=1e-9)
    # A zone of all three: the map's error is shared per layer, B_l = Σ V σ: 527.2, 166.2, 27.05, 5.64.
    total, zone_sigma = zone_carbon(out, [0, 0, 0], n_zones=1, model=model)
    assert total[0] == pytest.approx(6740 + 360 + 83.8, rel=1e-9)
    b = np.array([527.2, 166.2, 27.05, 5.64])
    assert zone_sigma[0] == pytest.approx(np.sqrt((b**2).sum() + 457005.16), rel=1e-9)
    # The stored columns are used as they are: no second read of the map (a moved raster does not matter).
    soc.rename(tmp_path / "moved.tif")
    np.testing.assert_allclose(zone_carbon(out, [0, 0, 0], n_zones=1, model=model)[1], zone_sigma, rtol=1e-12)

    # Monte Carlo with excess ice as well: z_l shared by every RTS, e_l per layer, ε per RTS.
    layers = tuple(SocLayer(lay.top_m, lay.bottom_m, lay.soc_kg_m3, lay.soc_sigma_kg_m3, excess_ice=0.3,
                            excess_ice_sigma=0.1) for lay in DEFAULT_PROFILE.layers)  # fmt: skip
    model_ice = CarbonModel(profile=SocProfile(layers=layers), raster=model.raster)
    total, zone_sigma = zone_carbon(out, [0, 0, 0], n_zones=1, model=model_ice)
    rng = np.random.default_rng(1)
    n = 400_000
    mu = out[[c for c, _ in soc_columns(DEFAULT_PROFILE)]].to_numpy()
    sd = out[[c for _, c in soc_columns(DEFAULT_PROFILE)]].to_numpy()
    v = np.array([[100, 50, 20, 10], [10, 10, 10, 10], [1, 1, 1, 1]], float)
    z = rng.standard_normal((n, 1, 4))
    e = 0.3 + 0.1 * rng.standard_normal((n, 1, 4))
    eps = np.array([0.1, 0.0, 0.0])[None, :] * rng.standard_normal((n, 3))
    c = ((v * (mu + sd * z) * (1 - e)).sum(axis=2) * (1 + eps)).sum(axis=1)
    assert c.mean() == pytest.approx(total[0], rel=0.01)
    assert c.std() == pytest.approx(zone_sigma[0], rel=0.05)


def test_soc_raster_config_errors(tmp_path):
    soc, _ = _soc_maps(tmp_path)
    doc = {"cube": str(tmp_path), "pairs": [[2010, 2016]]}
    cfg = parse_config({**doc, "carbon": {"raster": "soc.tif", "relative_sigma": 0.25}}, base=tmp_path)
    assert cfg.carbon.raster.path == str(soc) and cfg.carbon.raster.relative_sigma == 0.25
    rts = _boxes([(500, 500)], [[1, 0, 0, 0]], sigma=0.0)
    assert rts_carbon(rts, model=cfg.carbon).carbon_sigma_kg.iloc[0] == pytest.approx(50 * 0.25, rel=1e-9)
    three = tmp_path / "three"
    three.mkdir()
    _soc_maps(three, bands=3)
    with pytest.raises(ConfigError, match=r"carbon: raster .*three/soc.tif has 3 band\(s\); expected 4"):
        parse_config({**doc, "carbon": {"raster": str(three / "soc.tif")}}, base=tmp_path)
    with pytest.raises(ConfigError, match=r"carbon.raster: .*nope.tif does not exist"):
        parse_config({**doc, "carbon": {"raster": "nope.tif"}}, base=tmp_path)
    with pytest.raises(ConfigError, match="sigma_raster or relative_sigma, not both"):
        parse_config({**doc, "carbon": {"raster": "soc.tif", "sigma_raster": "soc_sigma.tif", "relative_sigma": 0.1}},
                     base=tmp_path)
    with pytest.raises(ConfigError, match="need a raster"):
        parse_config({**doc, "carbon": {"relative_sigma": 0.1}}, base=tmp_path)


def test_zones_without_any_rts_carry_zero_carbon():
    """No RTS in any zone (a cell or site where nothing was kept): zeros, not a dtype error."""
    rts = _table(np.array([[100.0, 50.0, 0.0, 0.0]]), sigma=np.array([20.0]))
    total, sigma = zone_carbon(rts, [-1], n_zones=2)
    assert total.dtype == float and sigma.dtype == float
    assert np.array_equal(total, [0.0, 0.0]) and np.array_equal(sigma, [0.0, 0.0])
    total, sigma = zone_carbon(rts.iloc[:0], [], n_zones=3)
    assert np.array_equal(total, np.zeros(3)) and np.array_equal(sigma, np.zeros(3))
