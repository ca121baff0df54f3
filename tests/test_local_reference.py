"""Volumes against a local reference (rtsflow.kernels.local_reference): rings, medians, σ, calibration."""

from __future__ import annotations

import dask.array as da
import geopandas as gpd
import numpy as np
import pytest
import rasterio.features
import shapely
import xarray as xr
from scipy import ndimage

from rtsflow.graph.masswasting import measure
from rtsflow.grid import Grid, Window
from rtsflow.kernels.local_reference import (
    HIST_EDGES,
    N_BINS,
    difference_terms,
    histogram_median,
    ring_labels,
    ring_sums,
)
from rtsflow.kernels.variogram import VariogramModel
from rtsflow.synth.scene import Scene

GRID = Grid(resolution=10.0, tile_size=128, block_tiles=4)  # 512-px blocks
WINDOW = Window(562_176, 380_416, 1536, 1536)


def test_ring_pixels_belong_to_their_nearest_slump_between_30_and_100_m():
    rng = np.random.default_rng(2)
    labels = np.zeros((120, 140), dtype=np.int32)
    for k in range(1, 9):
        r, c = rng.integers(5, 110), rng.integers(5, 130)
        labels[r : r + rng.integers(2, 8), c : c + rng.integers(2, 8)] = k
    ring = ring_labels(labels, resolution=10.0)
    # Brute force: distance from every pixel to every slump's nearest pixel.
    yy, xx = np.mgrid[: labels.shape[0], : labels.shape[1]]
    dist = np.full((8, *labels.shape), np.inf)
    for k in range(1, 9):
        ky, kx = np.nonzero(labels == k)
        if len(ky):
            d = np.hypot(yy[..., None] - ky, xx[..., None] - kx).min(axis=-1) * 10.0
            dist[k - 1] = d
    nearest, d_min = dist.argmin(axis=0) + 1, dist.min(axis=0)
    expected = np.where((d_min >= 30.0) & (d_min <= 100.0), nearest, 0)
    ties = np.sort(dist, axis=0)[1] - d_min < 1e-9  # equidistant pixels may go to either slump
    assert np.array_equal(ring[~ties], expected[~ties])
    assert (ring[labels > 0] == 0).all() and (ring > 0).sum() > 1000


def test_histogram_median_is_the_median_and_refuses_the_open_bins():
    rng = np.random.default_rng(3)
    values = [rng.normal(0.37, 0.5, 4001), rng.normal(-2.2, 1.5, 901), rng.uniform(-0.05, 0.05, 51)]
    hist = np.zeros((len(values) + 2, N_BINS))
    for i, v in enumerate(values):
        hist[i] = np.bincount(np.searchsorted(HIST_EDGES, v, side="right"), minlength=N_BINS)
    hist[-2, -1] = 7  # all beyond +5 m: no stable reference; the last row is empty
    got = histogram_median(hist)
    for g, v in zip(got, values, strict=False):
        assert g == pytest.approx(np.median(v), abs=0.02)
    assert np.isnan(got[-2:]).all()


def test_ring_sums_leave_out_water_the_quality_mask_and_gaps():
    ring = np.zeros((4, 5), dtype=np.int32)
    ring[:, :3] = 1
    ring[:, 3:] = 2
    ddem = np.full(ring.shape, 0.25)
    ddem[0, 0] = np.nan
    water, quality = np.zeros(ring.shape, "uint8"), np.zeros(ring.shape, "uint8")
    water[1, 1], quality[2, 4] = 1, 1
    sums = ring_sums(ring, n_labels=2, ddem=ddem, sigma=np.full(ring.shape, 2.0), water=water, quality=quality)
    assert sums[:, 0].tolist() == [10, 7]  # 12 − gap − water, 8 − quality
    assert sums[:, 1].tolist() == [40.0, 28.0] and sums[:, 3:].sum(axis=1).tolist() == [10, 7]
    assert histogram_median(sums[:, 3:]) == pytest.approx([0.25, 0.25], abs=0.05)


def test_difference_terms_match_the_pixel_pairs_of_a_disk_and_its_ring():
    model = VariogramModel(ranges=(30.0, 3000.0), sills=(0.7, 0.3), forms=("gaussian", "spherical"))
    for radius_px in (4.0, 12.0):
        r = int(radius_px) + 11
        yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
        d = np.hypot(yy, xx)
        disk = np.c_[xx[d <= radius_px], yy[d <= radius_px]] * 10.0
        ring_px = (d >= radius_px + 3) & (d <= radius_px + 10)
        ring = np.c_[xx[ring_px], yy[ring_px]] * 10.0

        def pairs(a, b):
            dist = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
            return float(np.mean(model.sill - model(dist)))

        v_pp, v_rr, v_pr = difference_terms(model, np.array([len(disk) * 100.0]), resolution=10.0)
        brute = (pairs(disk, disk), pairs(ring, ring), pairs(disk, ring))
        assert (v_pp[0], v_rr[0], v_pr[0]) == pytest.approx(brute, rel=0.02)
        # What the volume needs: the variance of the difference, far below the slump's own.
        difference = v_pp[0] + v_rr[0] - 2 * v_pr[0]
        assert difference == pytest.approx(brute[0] + brute[1] - 2 * brute[2], rel=0.1)
        assert difference < 0.75 * v_pp[0]


def _slumps(seed: int):
    """True outlines and volumes of a synthetic scene's slumps inside WINDOW (whole, ≥ 10 px)."""
    x, y = GRID.coords(WINDOW)
    scene = Scene(seed=seed, slump_density=2.0, epochs=(2010, 2016))
    truth = scene.slump_change(x, y, 1, since=0)
    area = GRID.pixel_ground_area(WINDOW, step=16)
    geoms, volumes = [], []
    for s in scene.slumps(GRID.bounds(WINDOW)):
        if s.fractions[1] <= 0:
            continue
        mask = s.footprint(x, y, s.fractions[1])
        if mask.sum() < 10 or mask[:12].any() or mask[-12:].any() or mask[:, :12].any() or mask[:, -12:].any():
            continue
        shapes = [shapely.geometry.shape(g) for g, v in rasterio.features.shapes(
            mask.astype("uint8"), mask=mask, transform=GRID.transform(WINDOW)) if v == 1]  # fmt: skip
        geoms.append(shapely.union_all(shapes))
        volumes.append(float((truth * area)[mask].sum()))
    return truth, gpd.GeoDataFrame(geometry=geoms, crs=3413), np.array(volumes)


def _features(ddem: np.ndarray, *, sigma: float, chunks: int) -> xr.Dataset:
    x, y = GRID.coords(WINDOW)
    return xr.Dataset(
        {"ddem": (("y", "x"), da.from_array(ddem.astype("float32"), chunks=chunks)),
         "ddem_sigma": (("y", "x"), da.from_array(np.full(ddem.shape, sigma, "float32"), chunks=chunks))},
        coords={"x": x, "y": y}, attrs={"years": 6.0},
    )  # fmt: skip


def test_a_shared_offset_is_removed_and_chunking_does_not_matter():
    """Noise-free dDEM plus a tilted offset (a residual ramp): the local volume is the true one."""
    truth, slumps, true_volume = _slumps(seed=5)
    assert len(slumps) > 30
    rows = np.arange(WINDOW.height, dtype=float)[:, None]
    offset = 0.6 + 0.4 * rows / WINDOW.height  # 0.6 → 1.0 m across 15 km
    out = [measure(slumps, _features(truth + offset, sigma=1.0, chunks=c), grid=GRID, correlation_length=200.0)
           .compute(scheduler="sync") for c in (256, 512)]  # fmt: skip
    cols = ["reference_dh_m", "reference_n_pixels", "volume_local_m3", "volume_local_sigma_m3"]
    np.testing.assert_allclose(out[0][cols].to_numpy(float), out[1][cols].to_numpy(float), rtol=1e-9)
    local, plain = out[0].volume_local_m3.to_numpy(), out[0].volume_m3.to_numpy()
    assert abs(plain.sum() / true_volume.sum() - 1) > 0.15  # the offset's share of these volumes
    assert local.sum() / true_volume.sum() == pytest.approx(1.0, abs=0.02)
    assert np.median(np.abs(local / true_volume - 1)) < 0.03
    assert (out[0].reference_n_pixels > 100).all()


def test_local_volumes_are_calibrated_and_free_of_the_long_range_error():
    """Short-range plus kilometre-scale noise: ±1σ holds ~68 % of the local volumes' errors, which are
    far smaller than those of the plain volumes."""
    truth, slumps, true_volume = _slumps(seed=4)
    rng = np.random.default_rng(0)
    short = ndimage.gaussian_filter(rng.standard_normal(WINDOW.shape), 1.5)
    long = ndimage.gaussian_filter(rng.standard_normal(WINDOW.shape), 80.0)
    noise = np.sqrt(0.6) * short / short.std() + np.sqrt(0.4) * long / long.std()
    out = measure(slumps, _features(truth + noise, sigma=1.0, chunks=512), grid=GRID).compute(scheduler="sync")
    err_local = np.abs(out.volume_local_m3.to_numpy() - true_volume)
    err_plain = np.abs(out.volume_m3.to_numpy() - true_volume)
    cover = float(np.mean(err_local <= out.volume_local_sigma_m3.to_numpy()))
    print(f"local 1σ coverage {cover:.2f} over {len(slumps)} slumps; RMS error local "
          f"{np.sqrt(np.mean(err_local**2)):.0f} m³, plain {np.sqrt(np.mean(err_plain**2)):.0f} m³")  # fmt: skip
    assert len(slumps) > 30
    assert 0.55 <= cover <= 0.82
    assert np.sqrt(np.mean(err_local**2)) < 0.7 * np.sqrt(np.mean(err_plain**2))
    assert (out.volume_local_sigma_m3 < out.volume_sigma_m3).all()
