"""The fitted dDEM error model (rtsflow.kernels.variogram, rtsflow.graph.error_model) against brute force."""

from __future__ import annotations

import dask.array as da
import geopandas as gpd
import numpy as np
import pytest
import shapely
import xarray as xr
from scipy import ndimage

from rtsflow.graph.error_model import error_model, sample_plan
from rtsflow.graph.masswasting import measure
from rtsflow.grid import Grid, Window
from rtsflow.kernels.variogram import VariogramModel, fit_variogram, semivariance_sums
from rtsflow.stages.polygons import fit_error_model

GRID = Grid(resolution=10.0, tile_size=128, block_tiles=4)  # 512-px blocks: several per test region
WINDOW = Window(562_176, 380_416, 1536, 1536)  # block-aligned: 3 x 3 blocks


def _noise(shape, *, seed: int, short_px: float, long_px: float = 0.0, long_share: float = 0.0) -> np.ndarray:
    """Unit-variance noise: Gaussian-filtered white noise, plus an optional long-range share."""
    rng = np.random.default_rng(seed)
    z = ndimage.gaussian_filter(rng.standard_normal(shape), short_px)
    z /= z.std()
    if long_share:
        lz = ndimage.gaussian_filter(rng.standard_normal(shape), long_px)
        z = np.sqrt(1 - long_share) * z + np.sqrt(long_share) * lz / lz.std()
    return z


def _disk_mean_sd(z: np.ndarray, radius_px: float) -> tuple[float, float]:
    """Brute force: SD of the mean of ``z`` over (rasterised) disks, and the disks' area in px."""
    r = int(np.ceil(radius_px))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    k = (xx**2 + yy**2 <= radius_px**2).astype(float)
    means = ndimage.convolve(z, k / k.sum(), mode="constant")[r:-r:3, r:-r:3]
    return float(means.std()), float(k.sum())


def test_semivariance_of_white_noise_is_its_variance_at_every_lag():
    z = np.random.default_rng(1).standard_normal((400, 400))
    z[::7, ::5] = np.nan  # gaps are skipped, not zeros
    sums, counts = semivariance_sums(z)
    assert np.allclose(sums / counts, 1.0, atol=0.03)
    assert counts[0] < 2 * 400 * 399


def test_mean_error_variance_matches_the_pair_average_over_a_rasterised_disk():
    """The disk integral equals the average covariance over all pixel pairs of a disk (brute force)."""
    model = VariogramModel(ranges=(40.0, 600.0), sills=(0.8, 0.2), forms=("gaussian", "spherical"))
    for radius_px in (3.0, 8.0, 15.0):
        r = int(radius_px)
        yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
        inside = xx**2 + yy**2 <= radius_px**2
        p = np.c_[xx[inside], yy[inside]] * 10.0
        d = np.sqrt(((p[:, None, :] - p[None, :, :]) ** 2).sum(-1))
        brute = float(np.mean(model.sill - model(d)))
        exact = float(model.mean_error_variance(np.array(inside.sum() * 100.0)))
        assert exact == pytest.approx(brute, rel=0.05), radius_px
    assert float(VariogramModel.single(1e7).mean_error_variance(np.array(1e4))) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("short_px, long_share", [(1.0, 0.0), (2.0, 0.1), (4.0, 0.0)])
def test_fitted_model_predicts_the_error_of_area_means(short_px, long_share):
    """What volumes need: the SD of the mean error over RTS-sized disks, within 15 % of brute force."""
    z = _noise((1536, 1536), seed=3, short_px=short_px, long_px=40.0, long_share=long_share)
    sums, counts = semivariance_sums(z[:512, :512])
    model = fit_variogram(sums, counts, resolution=10.0, variance=float(np.var(z[:512, :512])))
    for radius_px in (1.5, 3.0, 5.0, 9.0):
        sd, n_px = _disk_mean_sd(z, radius_px)
        predicted = float(np.sqrt(model.mean_error_variance(np.array(n_px * 100.0))))
        assert predicted == pytest.approx(sd, rel=0.15), (radius_px, model)


def test_a_slow_rise_of_the_variogram_is_kept_for_hectare_sized_means():
    """Short-range error with a few-pixel tail and 5 % of its variance over kilometres (as on the realistic
    scenes): the tail takes a range of its own, and the long share still reaches 2–7 ha means (within 15 %)."""
    rng = np.random.default_rng(11)

    def part(field):
        return field / field.std()

    z = (np.sqrt(0.75) * part(ndimage.gaussian_filter(rng.standard_normal((2048, 2048)), 1.5))
         + np.sqrt(0.20) * part(ndimage.uniform_filter(rng.standard_normal((2048, 2048)), 4))
         + np.sqrt(0.05) * part(ndimage.gaussian_filter(rng.standard_normal((2048, 2048)), 40.0)))  # fmt: skip
    sample = z[:512, :512]
    sums, counts = semivariance_sums(sample)
    model = fit_variogram(sums, counts, resolution=10.0, variance=float(np.var(sample)))
    assert len(model.ranges) == 3
    # The sill extrapolated beyond the longest lag is bounded by the sample's variance.
    assert model.sill <= max(float(np.var(sample)), float(model(1280.0))) + 1e-9
    for radius_px in (1.5, 5.0, 9.0, 15.0):
        sd, n_px = _disk_mean_sd(z, radius_px)
        predicted = float(np.sqrt(model.mean_error_variance(np.array(n_px * 100.0))))
        assert predicted == pytest.approx(sd, rel=0.15), (radius_px, model)


def test_long_range_error_beyond_the_lags_is_bounded_by_the_sampled_variance():
    """A ~2 km long-range share (25 % of the variance) beyond the 1.28 km lags: the slope over the lags is
    extrapolated, the sill bounded by the variance over the whole sample; hectare means within 15 %."""
    rng = np.random.default_rng(0)
    z = ndimage.gaussian_filter(rng.standard_normal((2048, 2048)), 2.0)
    z *= np.sqrt(0.75) / z.std()
    coarse = ndimage.gaussian_filter(rng.standard_normal((128, 128)), 6.0)
    z += np.kron(coarse * (np.sqrt(0.25) / coarse.std()), np.ones((16, 16)))
    windows = [z[r : r + 256, c : c + 256] for r in range(0, 2048, 512) for c in range(0, 2048, 512)]
    sums, counts = (np.sum(a, axis=0) for a in zip(*(semivariance_sums(w) for w in windows), strict=True))
    variance = float(np.var(np.concatenate([w.ravel() for w in windows])))
    model = fit_variogram(sums, counts, resolution=10.0, variance=variance)
    assert model.sill <= variance + 1e-9
    for radius_px in (3.0, 9.0, 15.0):
        sd, n_px = _disk_mean_sd(z, radius_px)
        predicted = float(np.sqrt(model.mean_error_variance(np.array(n_px * 100.0))))
        assert predicted == pytest.approx(sd, rel=0.15), (radius_px, model)


def _features(z: np.ndarray, chunks: int) -> xr.Dataset:
    x, y = GRID.coords(Window(WINDOW.row, WINDOW.col, *z.shape))
    sigma = np.full(z.shape, 2.0, "float32")
    return xr.Dataset(
        {"ddem": (("y", "x"), da.from_array((2.0 * z).astype("float32"), chunks=chunks)),
         "ddem_sigma": (("y", "x"), da.from_array(sigma, chunks=chunks))},
        coords={"x": x, "y": y}, attrs={"years": 6.0},
    )  # fmt: skip


def test_lazy_and_eager_fits_agree_and_do_not_depend_on_chunking():
    z = _noise(WINDOW.shape, seed=5, short_px=2.0)
    x, y = GRID.coords(WINDOW)
    rts = gpd.GeoDataFrame(geometry=[shapely.box(x[100], y[300], x[300], y[100])], crs=3413)
    lazy = [error_model(_features(z, c), rts, grid=GRID).compute(scheduler="sync") for c in (256, 768)]
    eager = fit_error_model(_features(z, 512), rts, grid=GRID)
    assert lazy[0] == lazy[1] == eager
    # Samples come from several blocks, in a fixed order, and stop at the target.
    plan = sample_plan(WINDOW, grid=GRID)
    assert len(plan) == 9 and all(len(w) == 4 for _, w in plan)
    assert 1_000_000 <= eager.n_pairs <= 2_600_000


def test_too_little_stable_terrain_falls_back_to_the_fixed_length():
    z = _noise(WINDOW.shape, seed=6, short_px=2.0)
    z[:, 10:] = np.nan  # 15 000 pixels: too few pairs (< 50 000) for a variogram
    feats = _features(z, 512)
    assert fit_error_model(feats, None, grid=GRID) is None
    x, y = GRID.coords(WINDOW)
    rts = gpd.GeoDataFrame(geometry=[shapely.box(x[2], y[60], x[12], y[40])], crs=3413)
    out = measure(rts, feats, grid=GRID).compute(scheduler="sync")
    assert out.attrs["error_model"] == {"correlation_length_m": 200.0}
    assert np.isfinite(out.volume_sigma_m3).all()


def test_bad_correlation_length_is_refused():
    with pytest.raises(ValueError, match="correlation_length: expected 'auto'"):
        measure(gpd.GeoDataFrame(geometry=[], crs=3413), _features(np.zeros((16, 16)), 16), grid=GRID,
                correlation_length="fitted")  # fmt: skip


def test_white_noise_gives_one_over_n():
    """Pixel-independent errors: the mean of N pixels has variance 1/N, not less (the short range's floor)."""
    z = np.random.default_rng(8).standard_normal((1024, 1024))
    sums, counts = semivariance_sums(z[:512, :512])
    model = fit_variogram(sums, counts, resolution=10.0)
    for radius_px in (3.0, 9.0):
        sd, n_px = _disk_mean_sd(z, radius_px)
        predicted = float(np.sqrt(model.mean_error_variance(np.array(n_px * 100.0))))
        assert predicted == pytest.approx(1 / np.sqrt(n_px), rel=0.15) and sd == pytest.approx(predicted, rel=0.15)
