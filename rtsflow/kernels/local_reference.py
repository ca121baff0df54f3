"""A local reference for RTS volumes: the median dDEM of the stable ground around each slump (pure NumPy).

Long-range dDEM errors (residual ramps, undulations and tilts over kilometres)
offset a slump and the ground around it alike; a few tens of slumps do not
average them away, so regional volumes carry them (−7 % on the analytic bench
scene, ``benchmarks/RESULTS.md``). Subtracting the median dDEM of a ring of
stable ground around each slump removes the shared offset, and the volume's
error becomes the error of the difference of two area means, in which the
long range cancels.

The ring of a slump is the ground between ``RING_M`` metres (pixel centre to
the nearest pixel of the slump) whose nearest slump it is — so rings never
overlap and one label raster holds them all — without water, the quality mask
or a missing dDEM. A median is not additive across blocks; each ring's dDEM is
kept as a histogram (``HIST_EDGES``, 0.1 m bins) whose sums are, and the median
is read off the summed histogram.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage, signal

__all__ = ["HIST_EDGES", "MIN_RING_PIXELS", "RING_FIELDS", "RING_M", "difference_terms", "histogram_median",
           "ring_halo_px", "ring_labels", "ring_sums"]  # fmt: skip

#: Inner and outer distance (m) of the stable ring from the slump's outline. Inside 30 m the dDEM
#: still carries the slump's smoothed edge and its debris; beyond 100 m the ground no longer shares the
#: slump's long-range error as closely (measured on the bench scenes: RESULTS.md).
RING_M = (30.0, 100.0)
#: Histogram of the ring's dDEM: 0.1 m bins over ±5 m, plus one open bin below and one above.
HIST_EDGES = np.round(np.linspace(-5.0, 5.0, 101), 10)
N_BINS = len(HIST_EDGES) + 1
#: Fewest stable ring pixels for a reference (else NaN).
MIN_RING_PIXELS = 20
_RING_TILE = 512  # px: the distance transform's tile (see ring_labels)

RING_FIELDS = ("ring_n_pixels", "ring_sum_sigma2", "ring_n_sigma", *(f"ring_hist_{k:03d}" for k in range(N_BINS)))


def ring_halo_px(*, resolution: float, ring: tuple[float, float] = RING_M) -> int:
    """Pixels a block must be read beyond its edges so that every ring pixel in it is assigned right."""
    return math.ceil(ring[1] / resolution)


def ring_labels(labels: np.ndarray, *, resolution: float, ring: tuple[float, float] = RING_M) -> np.ndarray:
    """Label of the slump each ring pixel belongs to (0 = in no ring).

    Parameters
    ----------
    labels
        Polygon index + 1 under each pixel (0 = no polygon), read ``ring_halo_px`` beyond
        the block so that slumps next door are seen.
    resolution
        Pixel size (m).
    ring
        Inner and outer distance (m) from the nearest pixel of the nearest slump.
    """
    out = np.zeros(labels.shape, dtype=labels.dtype)
    pad = ring_halo_px(resolution=resolution, ring=ring) + 1
    height, width = labels.shape
    # Tile by tile, each with a pad of the ring's reach: a pixel's nearest slump, if within the ring,
    # lies in its tile's pad, and the transform's float64 distances and indices stay small (a 4096² block
    # at once would need ~400 MB). Tiles with no slump within reach are skipped.
    for r in range(0, height, _RING_TILE):
        for c in range(0, width, _RING_TILE):
            r0, c0 = max(r - pad, 0), max(c - pad, 0)
            r1, c1 = min(r + _RING_TILE + pad, height), min(c + _RING_TILE + pad, width)
            sub = labels[r0:r1, c0:c1]
            if not sub.any():
                continue
            distance, (ri, ci) = ndimage.distance_transform_edt(sub == 0, sampling=resolution, return_indices=True)
            part = np.where((distance >= ring[0]) & (distance <= ring[1]), sub[ri, ci], 0)
            h, w = min(_RING_TILE, height - r), min(_RING_TILE, width - c)
            out[r : r + h, c : c + w] = part[r - r0 : r - r0 + h, c - c0 : c - c0 + w]
    return out


def ring_sums(
    ring: np.ndarray,
    *,
    n_labels: int,
    ddem: np.ndarray,
    sigma: np.ndarray,
    water: np.ndarray | None = None,
    quality: np.ndarray | None = None,
) -> np.ndarray:
    """Per-slump sums over its stable ring: pixel count, Σσ², σ count and the dDEM histogram.

    Returns ``(n_labels, len(RING_FIELDS))``; additive across blocks.
    """
    lab = np.asarray(ring).ravel()
    d = np.asarray(ddem, dtype=np.float64).ravel()
    stable = (lab > 0) & np.isfinite(d)
    for mask in (water, quality):
        if mask is not None:
            stable &= np.asarray(mask).ravel() != 1
    lab, d = lab[stable] - 1, d[stable]
    s = np.asarray(sigma, dtype=np.float64).ravel()[stable]
    sok = np.isfinite(s)
    out = np.zeros((n_labels, len(RING_FIELDS)))
    out[:, 0] = np.bincount(lab, minlength=n_labels)[:n_labels]
    out[:, 1] = np.bincount(lab, weights=np.where(sok, s, 0.0) ** 2, minlength=n_labels)[:n_labels]
    out[:, 2] = np.bincount(lab, weights=sok.astype(np.float64), minlength=n_labels)[:n_labels]
    bins = np.searchsorted(HIST_EDGES, d, side="right")  # 0: below −5 m, N_BINS − 1: at or above +5 m
    hist = np.bincount(lab * N_BINS + bins, minlength=n_labels * N_BINS)[: n_labels * N_BINS]
    out[:, 3:] = hist.reshape(n_labels, N_BINS)
    return out


def histogram_median(hist: np.ndarray) -> np.ndarray:
    """Median of each row's histogram (``N_BINS`` counts over ``HIST_EDGES``), linear within its bin.

    NaN where a row is empty or its median lies in an open bin (beyond ±5 m: no stable reference there).
    """
    hist = np.atleast_2d(np.asarray(hist, dtype=np.float64))
    n = hist.sum(axis=1)
    cum = np.cumsum(hist, axis=1)
    half = 0.5 * n
    k = np.argmax(cum >= half[:, None], axis=1)  # first bin whose cumulative count reaches half
    below = np.take_along_axis(cum, k[:, None], axis=1)[:, 0] - hist[np.arange(len(k)), k]
    inner = (k >= 1) & (k <= N_BINS - 2) & (n > 0)
    kk = np.clip(k, 1, N_BINS - 2)
    lo, width = HIST_EDGES[kk - 1], HIST_EDGES[kk] - HIST_EDGES[kk - 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = (half - below) / hist[np.arange(len(k)), kk]
    return np.where(inner, lo + np.clip(frac, 0.0, 1.0) * width, np.nan)


def _terms_one(model, radius: float, *, ring: tuple[float, float], pixel: float) -> tuple[float, float]:
    """(v_RR, v_PR) for a disk of ``radius`` and its ring, on a raster of ``pixel`` m, by FFT correlation."""
    outer = radius + ring[1]
    n = math.ceil(outer / pixel) + 1
    yy, xx = np.mgrid[-n : n + 1, -n : n + 1] * pixel
    r = np.hypot(yy, xx)
    disk = (r <= radius).astype(np.float64)
    if not disk.any():
        disk[n, n] = 1.0
    annulus = ((r >= radius + ring[0]) & (r <= outer)).astype(np.float64)
    lag = np.mgrid[-2 * n : 2 * n + 1, -2 * n : 2 * n + 1] * pixel
    covariance = model.sill - model(np.hypot(lag[0], lag[1]))

    def mean_cov(a, b):  # Σ over pixel pairs of C(|x − y|), as the count of pairs at each lag × C(lag)
        pairs = signal.fftconvolve(a, b[::-1, ::-1], mode="full")
        return float(np.sum(np.clip(pairs, 0.0, None) * covariance) / (a.sum() * b.sum()))

    return mean_cov(annulus, annulus), mean_cov(disk, annulus)


def difference_terms(
    model, area: np.ndarray, *, resolution: float, ring: tuple[float, float] = RING_M
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standardised error (co)variances of a slump's mean and its ring's mean.

    For a disk of ``area`` (m²) and the ring ``ring`` m around it, under ``model``
    (a :class:`rtsflow.kernels.variogram.VariogramModel` of dh / σ): the variance
    of the disk's mean ``v_PP`` (exact, :meth:`VariogramModel.mean_error_variance`),
    of the ring's mean ``v_RR`` and their covariance ``v_PR`` (pixel pairs on a
    raster at ``resolution``, at most 256 pixels across; computed on a grid of
    areas and interpolated in log-area). The error of mean(dh) − mean(ring) is
    ``σ_P² v_PP + σ_R² v_RR − 2 σ_P σ_R v_PR``: a long-range error shared by both
    cancels. (The ring's median, not its mean, is subtracted; for a ring of
    hundreds of pixels the difference is in the short-range part only, which is
    small beside the slump's own.)
    """
    area = np.asarray(area, dtype=float)
    v_pp = model.mean_error_variance(np.nan_to_num(area))
    ok = np.isfinite(area) & (area > 0)
    v_rr, v_pr = np.full(area.shape, np.nan), np.full(area.shape, np.nan)
    if not ok.any():
        return v_pp, v_rr, v_pr
    lo, hi = float(area[ok].min()), float(area[ok].max())
    nodes = np.geomspace(lo, hi, 24) if hi > lo * 1.01 else np.array([lo])
    terms = []
    for a in nodes:
        radius = math.sqrt(a / math.pi)
        pixel = max(resolution / 2.0, (radius + ring[1]) / 128.0)
        terms.append(_terms_one(model, radius, ring=ring, pixel=pixel))
    terms = np.array(terms)
    if len(nodes) == 1:
        v_rr[ok], v_pr[ok] = terms[0]
    else:
        x = np.log(area[ok])
        v_rr[ok] = np.interp(x, np.log(nodes), terms[:, 0])
        v_pr[ok] = np.interp(x, np.log(nodes), terms[:, 1])
    return v_pp, v_rr, v_pr
