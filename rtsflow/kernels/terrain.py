"""Terrain derivatives on a grid (pure NumPy)."""

from __future__ import annotations

import numpy as np

__all__ = ["gradient_horn", "slope_horn"]


def slope_horn(dem: np.ndarray, *, resolution: float) -> np.ndarray:
    """Slope in degrees with Horn's (1981) 3 × 3 finite differences.

    The outermost row and column have no full neighbourhood and are NaN: pass
    a 1-pixel halo (``map_overlap(depth=1)``) to get every pixel of a block.
    NaN anywhere in a 3 × 3 neighbourhood gives NaN.
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
    out[1:-1, 1:-1] = np.degrees(np.arctan(np.hypot(dzdx, dzdy)))
    return out.astype(np.float32)


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
