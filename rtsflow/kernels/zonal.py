"""Vectorised zonal sums under many polygons at once (one pass over a block, ``np.bincount``).

Sums are additive across blocks, so a polygon spanning blocks is summed per
block and the partial sums are added; maxima combine with ``max``.
"""

from __future__ import annotations

import numpy as np

from rtsflow.kernels.local_reference import RING_FIELDS, ring_sums

__all__ = ["DEPTH_LAYERS", "ZONAL_FIELDS", "combine_zonal", "zonal_sums"]

#: Loss-depth layers (m) whose volumes are reported (the last is open-ended).
DEPTH_LAYERS = ((0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, np.inf))

ZONAL_FIELDS = (
    "n_pixels",  # pixels with a finite dDEM
    "n_total",  # all pixels of the polygon in the raster
    "area_m2",  # true ground area of the finite pixels
    "area_all_m2",  # true ground area of all pixels
    "sum_dh",  # Σ dh (for the mean)
    "sum_dh2",  # Σ dh² (for the spread of dh inside the polygon)
    "volume_m3",  # Σ dh · a (net)
    "loss_m3",  # Σ min(dh, 0) · a
    "gain_m3",  # Σ max(dh, 0) · a
    "var_volume_m6",  # Σ (σ · a)²: uncorrelated error of the volume (Eq. 8)
    "sum_sigma2",  # Σ σ² (for the RMS σ)
    "n_sigma",  # pixels with a finite σ
    "n_water",
    "n_quality",
    *(f"loss_layer_{i}_m3" for i in range(len(DEPTH_LAYERS))),
    *RING_FIELDS,  # the stable ring around each polygon (rtsflow.kernels.local_reference)
)
MAX_FIELDS = ("max_abs_dh", "max_loss_m")


def zonal_sums(
    labels: np.ndarray,
    *,
    n_labels: int,
    ddem: np.ndarray,
    sigma: np.ndarray,
    pixel_area: np.ndarray,
    water: np.ndarray | None = None,
    quality: np.ndarray | None = None,
    ring: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-label sums and maxima over one block.

    Parameters
    ----------
    labels
        Integer raster: polygon index + 1 under each pixel, 0 = outside every polygon.
    n_labels
        Number of polygons (labels run 1..n_labels).
    ddem, sigma
        Elevation change and its 1σ (m).
    pixel_area
        True ground area of each pixel (m²).
    water, quality
        Masks (1 = water / unusable) counted per polygon.
    ring
        Label (as ``labels``) of the polygon whose stable ring each pixel lies in
        (:func:`rtsflow.kernels.local_reference.ring_labels`); ``None``: no ring sums.

    Returns
    -------
    sums
        ``(n_labels, len(ZONAL_FIELDS))``.
    maxima
        ``(n_labels, len(MAX_FIELDS))`` (0 where a polygon has no pixel here).
    """
    lab = np.asarray(labels).ravel()
    inside = lab > 0
    lab = lab[inside] - 1
    d = np.asarray(ddem, dtype=np.float64).ravel()[inside]
    s = np.asarray(sigma, dtype=np.float64).ravel()[inside]
    a = np.broadcast_to(np.asarray(pixel_area, dtype=np.float64), np.shape(labels)).ravel()[inside]
    ok = np.isfinite(d)
    sok = ok & np.isfinite(s)
    dz = np.where(ok, d, 0.0)
    sz = np.where(sok, s, 0.0)
    loss = np.minimum(dz, 0.0)

    def bc(weights):
        return np.bincount(lab, weights=weights, minlength=n_labels)[:n_labels].astype(np.float64)

    def count(mask):
        if mask is None:
            return np.zeros(n_labels)
        return bc((np.asarray(mask).ravel()[inside] == 1).astype(np.float64))

    cols = {
        "n_pixels": bc(ok.astype(np.float64)),
        "n_total": bc(None),
        "area_m2": bc(np.where(ok, a, 0.0)),
        "area_all_m2": bc(a),
        "sum_dh": bc(dz),
        "sum_dh2": bc(dz**2),
        "volume_m3": bc(dz * a),
        "loss_m3": bc(loss * a),
        "gain_m3": bc(np.maximum(dz, 0.0) * a),
        "var_volume_m6": bc((sz * a) ** 2),
        "sum_sigma2": bc(sz**2),
        "n_sigma": bc(sok.astype(np.float64)),
        "n_water": count(water),
        "n_quality": count(quality),
    }
    depth = -loss  # loss depth ≥ 0
    for i, (top, bottom) in enumerate(DEPTH_LAYERS):
        # Part of each pixel's loss column that lies between depths top and bottom.
        part = np.clip(depth - top, 0.0, bottom - top)
        cols[f"loss_layer_{i}_m3"] = bc(-part * a)
    if ring is None:
        rings = np.zeros((n_labels, len(RING_FIELDS)))
    else:
        rings = ring_sums(ring, n_labels=n_labels, ddem=ddem, sigma=sigma, water=water, quality=quality)
    sums = np.concatenate([np.stack([cols[f] for f in ZONAL_FIELDS[: -len(RING_FIELDS)]], axis=1), rings], axis=1)
    maxima = np.zeros((n_labels, len(MAX_FIELDS)))
    if lab.size:
        np.maximum.at(maxima[:, 0], lab, np.abs(dz))
        np.maximum.at(maxima[:, 1], lab, depth)
    return sums, maxima


def combine_zonal(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Add sums and take maxima of per-block results for the same polygons."""
    sums = np.sum([p[0] for p in parts], axis=0)
    maxima = np.max([p[1] for p in parts], axis=0)
    return sums, maxima
