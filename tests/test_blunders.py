"""The phase-unwrapping blunder screen of the composites (rtsflow.kernels.quality.unwrapping_blunders)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rtsflow.graph.dem import CompositeConfig, seasonal_composites
from rtsflow.grid import Grid
from rtsflow.ingest import ingest, ingest_mask, ingest_reference_dem
from rtsflow.io.cube import open_cube
from rtsflow.kernels.composite import CompositeAccumulator, weighted_composite
from rtsflow.kernels.quality import unwrapping_blunders
from rtsflow.selection import SelectionRules

GRID = Grid(resolution=10.0, tile_size=64, block_tiles=2)  # 128-px blocks


def test_the_screen_flags_whole_hoa_offsets_and_keeps_noise_and_gaps():
    rng = np.random.default_rng(0)
    reference = rng.normal(100.0, 20.0, (200, 200)).astype(np.float32)
    hoa = 37.5
    noise = rng.normal(0.0, 3.0, reference.shape)  # σ_h of poor coherence: still far within HoA/2
    k = rng.integers(-2, 3, reference.shape)  # blunders of -2..2 cycles
    dem = (reference + noise + k * hoa).astype(np.float32)
    dem[::17, ::13] = np.nan
    flags = unwrapping_blunders(dem, reference, hoa)
    finite = np.isfinite(dem)
    assert not flags[~finite].any()  # a gap is a gap, not a blunder
    np.testing.assert_array_equal(flags[finite], (k != 0)[finite])
    # The limit scales with the fraction and with each product's HoA.
    assert not unwrapping_blunders(reference + 0.4 * hoa, reference, hoa).any()
    assert unwrapping_blunders(reference + 0.4 * hoa, reference, hoa, fraction=0.3).all()


def test_the_composite_leaves_out_flagged_observations_unless_all_agree():
    """Per pixel: the unflagged observations where there are some; all where two or more are flagged
    alike (real change beyond HoA/2 since the reference); nothing where a lone observation is flagged."""
    # Reference 100 m, HoA 30 m. Pixel 0: observation 1 is 30 m off (a blunder); pixels 1-2: all three
    # show the ground 20 m lower (a slump since the reference); pixel 3: only observation 0, 30 m off.
    h = np.array([[100.0, 80.0, 80.0, 130.0], [130.0, 80.0, 80.0, np.nan], [100.0, 80.0, 80.0, np.nan]])[:, None, :]
    flags = unwrapping_blunders(h, np.full(h.shape[1:], 100.0), 30.0)  # > 15 m off
    sigma = np.ones_like(h)
    weights = np.array([1.0, 2.0, 1.0])[:, None, None] * np.ones_like(h)
    comp, sig, count = weighted_composite(h, sigma, weights=weights, blunder=flags)
    np.testing.assert_allclose(comp[0], [100.0, 80.0, 80.0, np.nan])  # pixel 0: obs 1 (130 m) left out
    np.testing.assert_array_equal(count[0], [2, 3, 3, 0])
    np.testing.assert_allclose(sig[0, :3], [np.sqrt(2.0) / 2.0, np.sqrt(6.0) / 4.0, np.sqrt(6.0) / 4.0])
    # Without flags: the plain weighted mean; the accumulator gives the same one observation at a time.
    plain, _, n = weighted_composite(h, sigma, weights=weights)
    np.testing.assert_allclose(plain[0, :3], [115.0, 80.0, 80.0])
    assert n[0, 3] == 1
    acc = CompositeAccumulator(h.shape[1:])
    for i in range(3):
        acc.add(h[i], sigma[i], weights=weights[i], blunder=flags[i])
    for a, b in zip(acc.result(), (comp, sig, count), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def cubes(tmp_path_factory):
    """One region with and without unwrapping blunders (same noise, same everything else), ingested."""
    from rtsflow.synth.generator import SynthConfig, synthesize

    root = tmp_path_factory.mktemp("blunders")
    base = SynthConfig(seed=4, size_km=(2.0, 2.0), winters=(2010, 2016), obs_per_winter=3, summer=False)
    out = {}
    for name, rate in (("plain", 0.0), ("blunders", 3000.0)):
        synth = synthesize(root / name, config=dataclasses.replace(base, blunders_per_100km2=rate))
        cube = root / f"{name}.zarr"
        ingest(synth.products, cube=cube, grid=GRID, scheduler="threads")
        ingest_mask(synth.truth_rasters["water"], cube=cube, scheduler="threads")
        ingest_reference_dem(synth.truth_rasters["reference_dem"], cube=cube, scheduler="threads")
        out[name] = cube
    return out


def _composite_errors(cube, config: CompositeConfig) -> np.ndarray:
    """The first winter's composite minus the truth (the reference DEM is the noise-free first-epoch surface).

    Every observation is used (HoA 8-98 m here; the paper's 15-80 m rule would leave one or two a winter).
    """
    config = dataclasses.replace(config, rules=SelectionRules(hoa_range=(1.0, 200.0)))
    ds = open_cube(cube)
    comps, _ = seasonal_composites(ds, winters=[2010], config=config, reference=ds["reference_dem"],
                                   water=ds["water"])  # fmt: skip
    return (comps["dem"].isel(winter=0) - ds["reference_dem"]).compute(scheduler="threads").values


def test_blunders_in_one_of_three_observations_no_longer_move_the_composite(cubes):
    """Off: a k·HoA blunder in one observation moves the composite by ~k·HoA/3 over its patch; on: the
    composite there is the other observations' mean, as accurate as where no blunder struck."""
    plain = _composite_errors(cubes["plain"], CompositeConfig())
    on = _composite_errors(cubes["blunders"], CompositeConfig())
    off = _composite_errors(cubes["blunders"], CompositeConfig(blunder_hoa_fraction=None))
    both = np.isfinite(plain) & np.isfinite(on) & np.isfinite(off)
    struck = both & (np.abs(off - plain) > 5.0)  # where a blunder reached the unscreened composite
    assert struck.sum() > 300
    assert np.median(np.abs(off[struck])) > 8.0  # ~HoA/3 of 20-80 m HoA
    # Screened: as close to the truth as the blunder-free region's composite there (same noise, one
    # observation fewer), and unbiased.
    assert np.median(np.abs(on[struck])) < 1.5 * np.median(np.abs(plain[struck]))
    assert abs(np.median(on[struck])) < 1.0
    # Without blunders the screen changes nothing: no height of a clean product is HoA/2 off the reference.
    np.testing.assert_array_equal(plain, _composite_errors(cubes["plain"], CompositeConfig(blunder_hoa_fraction=None)))
