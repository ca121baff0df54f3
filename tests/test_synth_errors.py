"""Realistic DEM errors of the generator (#12, part 1): each checked against the statistic it is configured by."""

from __future__ import annotations

import dataclasses
import json

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
