"""NumPy kernels of the DEM graph, against closed forms, brute-force loops and properties."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from rtsflow.grid import DEFAULT_GRID, Window
from rtsflow.kernels.composite import weighted_composite
from rtsflow.kernels.coreg import FIT_FIELDS, STATUS, apply_fit, fit_block, nmad, resolve_fallbacks
from rtsflow.kernels.ddem import ddem, ddem_norm, ddem_sigma
from rtsflow.kernels.quality import sar_quality_mask
from rtsflow.kernels.terrain import slope_horn
from rtsflow.synth.observations import render_observation, schedule
from rtsflow.synth.scene import Scene


def test_quality_mask_rules():
    coh = np.array([0.8, 0.29, 0.3, np.nan, 0.9, 0.9])
    ls = np.array([0, 0, 0, 0, 1, np.nan])
    inc = np.array([0.5, 0.5, 0.5, 0.5, 0.5, 1.2])
    assert sar_quality_mask(coh, layover_shadow=ls, incidence=inc).tolist() == [False, True, False, True, True, True]
    # Thresholds are configurable; layers are optional.
    assert sar_quality_mask(coh, min_coherence=0.2).tolist() == [False, False, False, True, False, False]


def _brute_composite(dem, sigma, w):
    n, ny, nx = dem.shape
    comp, sig, cnt = np.full((ny, nx), np.nan), np.full((ny, nx), np.nan), np.zeros((ny, nx), int)
    for i in range(ny):
        for j in range(nx):
            num = den = var = 0.0
            for k in range(n):
                if np.isfinite(dem[k, i, j]) and np.isfinite(w[k, i, j]) and w[k, i, j] > 0:
                    num += w[k, i, j] * dem[k, i, j]
                    den += w[k, i, j]
                    var += w[k, i, j] ** 2 * sigma[k, i, j] ** 2
                    cnt[i, j] += 1
            if cnt[i, j]:
                comp[i, j], sig[i, j] = num / den, np.sqrt(var) / den
    return comp, sig, cnt


def test_composite_matches_brute_force_loop():
    rng = np.random.default_rng(0)
    dem = rng.normal(100, 5, (4, 7, 6))
    dem[rng.random(dem.shape) < 0.3] = np.nan
    sigma = rng.uniform(0.5, 3, dem.shape)
    gamma = rng.uniform(0, 1, dem.shape)
    comp, sig, cnt = weighted_composite(dem, sigma, weights=gamma)
    bc, bs, bn = _brute_composite(dem, sigma, gamma)
    np.testing.assert_allclose(comp, bc, rtol=1e-12)
    np.testing.assert_allclose(sig, bs, rtol=1e-12)
    np.testing.assert_array_equal(cnt, bn)


def test_composite_closed_forms():
    dem = np.array([[[1.0]], [[3.0]], [[np.nan]]])
    sigma = np.array([[[1.0]], [[2.0]], [[1.0]]])
    comp, sig, cnt = weighted_composite(dem, sigma, method="inverse_variance")
    # w = 1, 1/4: h = (1 + 3/4) / 1.25 = 1.4; σ = 1/√(1 + 1/4)
    assert comp[0, 0] == pytest.approx(1.4)
    assert sig[0, 0] == pytest.approx(1 / np.sqrt(1.25))
    assert cnt[0, 0] == 2
    # Equal weights and errors: the mean, and σ/√n.
    comp, sig, _ = weighted_composite(dem[:2], np.ones((2, 1, 1)), weights=np.ones((2, 1, 1)))
    assert comp[0, 0] == pytest.approx(2.0) and sig[0, 0] == pytest.approx(1 / np.sqrt(2))
    with pytest.raises(ValueError, match="needs weights"):
        weighted_composite(dem, sigma)


stacks = arrays(np.float64, (5, 3, 3), elements=st.one_of(st.just(np.nan), st.floats(-100, 100)))


@given(stacks, st.floats(0.1, 10.0))
@settings(max_examples=60)
def test_composite_nan_handling_and_weight_normalisation(dem, scale):
    rng = np.random.default_rng(1)
    w = rng.uniform(0.1, 1.0, dem.shape)
    sigma = rng.uniform(0.5, 2.0, dem.shape)
    comp, sig, cnt = weighted_composite(dem, sigma, weights=w)
    comp2, sig2, _ = weighted_composite(dem, sigma, weights=w * scale)
    np.testing.assert_allclose(comp, comp2, rtol=1e-9, atol=1e-9)  # only relative weights matter
    np.testing.assert_allclose(sig, sig2, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(cnt, np.isfinite(dem).sum(axis=0))
    empty = cnt == 0
    assert np.isnan(comp[empty]).all() and np.isfinite(comp[~empty]).all()
    lo, hi = (
        np.nanmin(np.where(np.isfinite(dem), dem, np.inf), 0),
        np.nanmax(np.where(np.isfinite(dem), dem, -np.inf), 0),
    )
    assert (comp[~empty] >= lo[~empty] - 1e-9).all() and (comp[~empty] <= hi[~empty] + 1e-9).all()


def test_ddem_kernels():
    assert ddem(np.array([10.0]), np.array([12.5]))[0] == -2.5
    assert ddem_sigma(np.array([3.0]), np.array([4.0]))[0] == 5.0
    out = ddem_norm(np.array([-2.5, 1.0, 1.0, 1.0]), np.array([5.0, 0.0, np.nan, np.inf]))
    assert out[0] == pytest.approx(-0.5) and np.isnan(out[1:]).all()


def test_horn_slope_plane_and_brute_force():
    res = 10.0
    yy, xx = np.mgrid[0:20, 0:30] * res
    a, b = 0.1, -0.05
    plane = a * xx + b * yy
    s = slope_horn(plane, resolution=res)
    assert np.isnan(s[0]).all() and np.isnan(s[:, -1]).all()
    np.testing.assert_allclose(s[1:-1, 1:-1], np.degrees(np.arctan(np.hypot(a, b))), rtol=1e-5)
    z = np.random.default_rng(0).normal(0, 3, (8, 9))
    s = slope_horn(z, resolution=res)
    for i in range(1, 7):
        for j in range(1, 8):
            w = z[i - 1 : i + 2, j - 1 : j + 2]
            dx = ((w[0, 2] + 2 * w[1, 2] + w[2, 2]) - (w[0, 0] + 2 * w[1, 0] + w[2, 0])) / (8 * res)
            dy = ((w[2, 0] + 2 * w[2, 1] + w[2, 2]) - (w[0, 0] + 2 * w[0, 1] + w[0, 2])) / (8 * res)
            assert s[i, j] == pytest.approx(np.degrees(np.arctan(np.hypot(dx, dy))), rel=1e-5)


def test_horn_slope_keeps_valid_pixels_next_to_voids():
    """Speckled voids (layover, shadow) cost only their own pixels: on a plane every valid pixel keeps the exact
    slope whatever its neighbours; where all nine are valid the result is Horn's, bit for bit; void pixels stay
    NaN, and a pixel with no valid pair along an axis (an island) too."""
    res = 10.0
    yy, xx = np.mgrid[0:40, 0:50] * res
    a, b = 0.3, 0.2
    rng = np.random.default_rng(1)
    voids = rng.random(yy.shape) < 0.3
    plane = np.where(voids, np.nan, a * xx + b * yy)
    s = slope_horn(plane, resolution=res)
    inner = s[1:-1, 1:-1]
    valid = ~voids[1:-1, 1:-1]
    has_pair = np.isfinite(inner)
    # Nearly all valid pixels keep a slope (before: only those with nine valid neighbours, (0.7)^8 ≈ 6 %).
    assert (has_pair & valid).sum() > 0.95 * valid.sum() and not has_pair[~valid].any()
    np.testing.assert_allclose(inner[has_pair], np.degrees(np.arctan(np.hypot(a, b))), rtol=1e-6)  # float32
    # Where nothing is void, exactly Horn.
    z = rng.normal(0, 3, (30, 30))
    full = slope_horn(z, resolution=res)
    z[10, 10] = np.nan
    holed = slope_horn(z, resolution=res)
    ring = np.zeros(z.shape, bool)
    ring[9:12, 9:12] = True
    ring[10, 10] = False
    np.testing.assert_array_equal(holed[~ring & ~np.isnan(z)][1:], full[~ring & ~np.isnan(z)][1:])
    assert np.isnan(holed[10, 10]) and np.isfinite(holed[ring]).all()
    # The pixel right of the hole: its middle row is one-sided (centre − left), the others central.
    w = z[9:12, 10:13]
    dx = (1 * (w[0, 2] - w[0, 0]) / (2 * res) + 2 * (w[1, 2] - w[1, 1]) / res + 1 * (w[2, 2] - w[2, 0]) / (2 * res)) / 4
    dy = ((w[2, 0] - w[0, 0]) + 2 * (w[2, 1] - w[0, 1]) + (w[2, 2] - w[0, 2])) / (8 * res)  # all central: Horn
    assert holed[10, 11] == pytest.approx(np.degrees(np.arctan(np.hypot(dx, dy))), rel=1e-6)
    island = np.full((5, 5), np.nan)
    island[2, 2] = 1.0
    assert np.isnan(slope_horn(island, resolution=res)).all()

# -- co-registration ------------------------------------------------------------------------


def _pair(shift_m, tilt, n=600, seed=2):
    """Two noisy synthetic winter DEMs; the later one shifted and tilted by known amounts."""
    scene = Scene(seed=seed, slump_density=0.0)
    obs = schedule(scene)[0]
    window = Window(562_000, 380_000, n, n)
    x, y = DEFAULT_GRID.coords(window)
    rng = np.random.default_rng(seed)
    centre = (x.mean(), y.mean())
    early = dataclasses.replace(obs, shift=(0.0, 0.0), tilt=(0.0, 0.0, 0.0), hoa=30.0, coherence_base=0.9)
    late = dataclasses.replace(early, shift=shift_m, tilt=tilt, index=obs.index + 1)
    a = render_observation(scene, early, x, y, noise=rng.standard_normal((3, n, n)).astype("f4"), centre=centre)
    b = render_observation(scene, late, x, y, noise=rng.standard_normal((3, n, n)).astype("f4"), centre=centre)
    stable = (a["coherence"] > 0.3) & (b["coherence"] > 0.3) & ~scene.water(x, y)
    return a, b, stable, DEFAULT_GRID.transform(window)


@pytest.mark.parametrize("shift_px", [(0.5, -0.3), (3.0, 1.0)])
def test_fit_recovers_shift_and_tilt(shift_px):
    shift_m = (shift_px[0] * 10.0, shift_px[1] * 10.0)
    a, b, stable, transform = _pair(shift_m, (3e-5, -2e-5, 0.8))
    fit = fit_block(a["dem"], b["dem"], stable, transform=transform)
    assert fit[FIT_FIELDS.index("status")] == STATUS["fit"]
    # The later DEM shows the ground at p + shift, so the fit moves it back by + shift.
    assert fit[0] / 10.0 == pytest.approx(shift_px[0], abs=0.1)
    assert fit[1] / 10.0 == pytest.approx(shift_px[1], abs=0.1)
    halo = 6
    aligned = apply_fit(np.pad(b["dem"], halo, constant_values=np.nan), fit, resolution=10.0, origin=(0, 0), halo=halo)
    resid = aligned - a["dem"]
    noise = np.median(np.hypot(a["sigma_h"], b["sigma_h"])[stable])
    assert nmad(resid[stable]) == pytest.approx(noise, rel=0.15)
    assert fit[FIT_FIELDS.index("nmad_before")] > 1.15 * fit[FIT_FIELDS.index("nmad_after")]
    # No systematic tilt is left: residual means of the four quadrants agree.
    q = [
        np.nanmean(np.where(stable, resid, np.nan)[sy, sx])
        for sy in (slice(0, 300), slice(300, 600))
        for sx in (slice(0, 300), slice(300, 600))
    ]
    assert np.ptp(q) < 0.1


def test_fit_without_enough_stable_ground_and_fallbacks():
    a, b, stable, transform = _pair((10.0, 0.0), (0.0, 0.0, 0.0), n=200)
    few = np.zeros_like(stable)
    few[:10, :10] = True
    fit = fit_block(a["dem"], b["dem"], few, transform=transform)
    assert fit[FIT_FIELDS.index("status")] == STATUS["none"]
    fits = np.zeros((2, 2, len(FIT_FIELDS)))
    fits[..., FIT_FIELDS.index("status")] = STATUS["fit"]
    fits[0, 0, :3] = (10.0, 0.0, 1.0)
    fits[0, 1, :3] = (20.0, 2.0, 3.0)
    fits[1, 0, :3] = (30.0, 4.0, 5.0)
    fits[1, 1] = fit
    resolved = resolve_fallbacks(fits)
    assert resolved[1, 1, FIT_FIELDS.index("status")] == STATUS["neighbours"]
    np.testing.assert_allclose(resolved[1, 1, :3], (20.0, 2.0, 3.0))
    np.testing.assert_array_equal(resolved[0, 0], fits[0, 0])
    # A block alone without a fit stays unaligned: applying it is the identity.
    lone = resolve_fallbacks(fit[None, None, :])[0, 0]
    assert lone[FIT_FIELDS.index("status")] == STATUS["none"]
    np.testing.assert_array_equal(apply_fit(b["dem"], lone, resolution=10.0, origin=(0, 0), halo=0), b["dem"])


def _stack_composite(dem, sigma, w):
    """The composite as one vectorised reduction over the stack (the pre-streaming implementation)."""
    valid = np.isfinite(dem) & np.isfinite(w) & (w > 0)
    ww = np.where(valid, w, 0.0)
    h = np.where(valid, dem, 0.0)
    s = np.where(valid, sigma, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        comp = (ww * h).sum(axis=0) / ww.sum(axis=0)
        sig = np.sqrt((ww * ww * s * s).sum(axis=0)) / ww.sum(axis=0)
    cnt = valid.sum(axis=0)
    comp[cnt == 0] = np.nan
    sig[cnt == 0] = np.nan
    return comp, sig, cnt


def test_streaming_accumulator_equals_the_stack_reduction_bit_for_bit():
    """Adding observations one at a time gives exactly the stack's float64 sums (same order of additions)."""
    from rtsflow.kernels.composite import CompositeAccumulator

    rng = np.random.default_rng(4)
    for n in (1, 3, 40):
        dem = rng.normal(300, 40, (n, 33, 29)).astype(np.float32)
        dem[rng.random(dem.shape) < 0.2] = np.nan
        sigma = rng.uniform(0.2, 4, dem.shape).astype(np.float32)
        gamma = rng.uniform(-0.1, 1, dem.shape).astype(np.float32)  # some weights ≤ 0: skipped
        acc = CompositeAccumulator(dem.shape[1:], method="coherence")
        for k in range(n):
            acc.add(dem[k], sigma[k], weights=gamma[k])
        comp, sig, cnt = acc.result()
        ref = _stack_composite(dem.astype(np.float64), sigma.astype(np.float64), gamma.astype(np.float64))
        np.testing.assert_array_equal(comp, ref[0].astype(np.float32))
        np.testing.assert_array_equal(sig, ref[1].astype(np.float32))
        np.testing.assert_array_equal(cnt, ref[2])
        assert comp.dtype == np.float32 and cnt.dtype == np.int16


def test_tile_valid_counts_and_the_footprint_queries():
    from rtsflow.grid import Grid
    from rtsflow.io.footprints import FootprintIndex
    from rtsflow.kernels.footprint import tile_valid_counts

    grid = Grid(tile_size=4, block_tiles=2)  # 8-px blocks
    values = np.full((8, 12), np.nan, np.float32)
    values[0, 0] = 1.0  # tile (10, 20)
    values[5:8, 9:12] = 2.0  # tile (11, 22): 9 pixels
    counts = tile_valid_counts(values, row=40, col=80, tile=4)
    assert counts.tolist() == [[10, 20, 1], [11, 22, 9]]
    with pytest.raises(ValueError, match="not aligned"):
        tile_valid_counts(values, row=41, col=80, tile=4)
    # obs 0 in tile (10, 20) of block (5, 10); obs 1 in tile (11, 22) of block (5, 11); obs 2 far away.
    index = FootprintIndex(grid=grid, entries=np.array([[0, 10, 20, 1], [1, 11, 22, 9], [2, 30, 30, 16]]), n_obs=4)
    assert index.obs_by_block([(5, 10)])[(5, 10)].tolist() == [0]
    # A 1-px halo around block (5, 10) reaches the first column of block (5, 11): tile (11, 22) is there.
    assert index.obs_by_block([(5, 10)], halo=1)[(5, 10)].tolist() == [0, 1]
    # ... unless the run's domain stops at the block edge.
    domain = Window(40, 80, 8, 8)
    assert index.obs_by_block([(5, 10)], halo=1, domain=domain)[(5, 10)].tolist() == [0]
    assert index.blocks_of(1) == [(5, 11)] and index.valid_pixels(1) == 9
    assert index.obs_in_window(Window(0, 0, 8, 8)).size == 0  # obs 3 has no data anywhere
