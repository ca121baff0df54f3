"""Terrain derivatives on a grid (pure NumPy)."""

from __future__ import annotations

import numpy as np

__all__ = ["gradient_horn", "slope_horn"]

_GATHER = 1 << 18  # pixels next to voids handled per batch by slope_horn (~20 MB of (n, 3, 3) float64)


def slope_horn(dem: np.ndarray, *, resolution: float) -> np.ndarray:
    """Slope in degrees with Horn's (1981) 3 × 3 finite differences, tolerant of voids.

    The outermost row and column have no full neighbourhood and are NaN: pass
    a 1-pixel halo (``map_overlap(depth=1)``) to get every pixel of a block.
    A valid pixel next to a void keeps a slope: each of the three rows (columns)
    of its neighbourhood gives a central difference where both sides are valid,
    else a one-sided one against the middle pixel, and the rows present are
    averaged with Horn's weights 1, 2, 1 (:func:`_derivative_with_voids`); with
    all nine pixels valid this is Horn's formula exactly. Why: layover, shadow
    and low coherence leave DEMs with speckled voids on steep slopes, and a
    slope that is NaN wherever a neighbour is void took up to a tenth of the
    valid dDEM on a crater's walls out of the detector's input
    (``benchmarks/RESULTS.md``). A void pixel stays NaN.
    """
    z = np.asarray(dem, dtype=np.float64)
    out = np.full(z.shape, np.nan)
    if z.shape[0] < 3 or z.shape[1] < 3:
        return out.astype(np.float32)
    a, b, c = z[:-2, :-2], z[:-2, 1:-1], z[:-2, 2:]
    d, f = z[1:-1, :-2], z[1:-1, 2:]
    g, h, i = z[2:, :-2], z[2:, 1:-1], z[2:, 2:]
    dzdx = ((c + 2 * f + i) - (a + 2 * d + g)) / (8.0 * resolution)
    dzdy = ((g + 2 * h + i) - (a + 2 * b + c)) / (8.0 * resolution)
    inner = np.degrees(np.arctan(np.hypot(dzdx, dzdy)))
    inner[np.isnan(z[1:-1, 1:-1])] = np.nan  # Horn's formula skips the centre: a void pixel has no slope
    # Valid pixels with a void among their neighbours: gathered in batches of _GATHER pixels, so that a 4096²
    # block full of speckled voids needs no (n, 3, 3) temporaries of many times the block's size.
    iy, ix = np.nonzero(np.isnan(inner) & np.isfinite(z[1:-1, 1:-1]))
    step = np.arange(-1, 2)
    for k in range(0, iy.size, _GATHER):
        ry, rx = iy[k : k + _GATHER] + 1, ix[k : k + _GATHER] + 1
        near = z[ry[:, None, None] + step[None, :, None], rx[:, None, None] + step[None, None, :]]  # (n, 3, 3)
        gx = _derivative_with_voids(near, resolution=resolution)
        gy = _derivative_with_voids(near.transpose(0, 2, 1), resolution=resolution)
        inner[ry - 1, rx - 1] = np.degrees(np.arctan(np.hypot(gx, gy)))
    out[1:-1, 1:-1] = inner
    return out.astype(np.float32)


def _derivative_with_voids(near: np.ndarray, *, resolution: float) -> np.ndarray:
    """Derivative along the last axis of ``(n, 3, 3)`` neighbourhoods with NaN (valid centres): per row the central
    difference, else a one-sided one against the row's middle pixel; rows averaged with weights 1, 2, 1 (NaN where
    no row has two valid pixels)."""
    left, mid, right = near[..., 0], near[..., 1], near[..., 2]
    with np.errstate(invalid="ignore"):
        per_row = np.where(
            np.isfinite(left) & np.isfinite(right),
            (right - left) / (2.0 * resolution),
            np.where(np.isfinite(right), right - mid, mid - left) / resolution,
        )
    weights = np.where(np.isfinite(per_row), np.array([1.0, 2.0, 1.0]), 0.0)
    total = weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, np.nansum(per_row * weights, axis=1) / total, np.nan)


def gradient_horn(dem: np.ndarray, *, resolution: float) -> tuple[np.ndarray, np.ndarray]:
    """``(dz/dx east, dz/dy north)`` of the inner pixels (the outer row and column are the halo), Horn's weights.

    ``dem`` is a block with a 1-pixel halo; the result has the block's shape.
    Rows run southward, hence the sign of the northward derivative.
    """
    z = np.asarray(dem, dtype=np.float64)
    a, b, c = z[:-2, :-2], z[:-2, 1:-1], z[:-2, 2:]
    d, f = z[1:-1, :-2], z[1:-1, 2:]
    g, h, i = z[2:, :-2], z[2:, 1:-1], z[2:, 2:]
    dzdx = ((c + 2 * f + i) - (a + 2 * d + g)) / (8.0 * resolution)
    dzdn = ((a + 2 * b + c) - (g + 2 * h + i)) / (8.0 * resolution)
    return dzdx, dzdn
