"""Terrain derivatives on a grid (pure NumPy)."""

from __future__ import annotations

import numpy as np

__all__ = ["downslope_horn", "gradient_horn", "slope_horn"]


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


def downslope_horn(dem: np.ndarray, *, resolution: float) -> tuple[np.ndarray, np.ndarray]:
    """``(east, north)`` horizontal components of the unit surface normal: which way is downhill, and how steeply.

    The normal ``(-∂z/∂x, -∂z/∂y, 1) / √(1 + |∇z|²)`` leans downslope; its
    horizontal part is the downslope unit vector times sin(slope), so it is
    continuous (0 on flat ground, where an aspect angle is undefined) and lies
    in [-1, 1]. Horn's weights; the outermost row and column are NaN as in
    :func:`slope_horn` (pass a 1-pixel halo).
    """
    z = np.asarray(dem, dtype=np.float64)
    east = np.full(z.shape, np.nan, dtype=np.float32)
    north = np.full(z.shape, np.nan, dtype=np.float32)
    if z.shape[0] >= 3 and z.shape[1] >= 3:
        dzdx, dzdn = gradient_horn(z, resolution=resolution)
        # √(1 + |∇z|²), in place (a 4096² block: no more float64 temporaries than the slope)
        norm = np.square(dzdx)
        norm += 1.0
        norm += np.square(dzdn)
        np.sqrt(norm, out=norm)
        np.divide(dzdx, norm, out=dzdx)
        np.divide(dzdn, norm, out=dzdn)
        np.negative(dzdx, out=east[1:-1, 1:-1], casting="same_kind")
        np.negative(dzdn, out=north[1:-1, 1:-1], casting="same_kind")
    return east, north
