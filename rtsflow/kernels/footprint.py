"""Which tiles of a window hold data (NumPy only): the entries of the footprint index."""

from __future__ import annotations

import numpy as np

__all__ = ["tile_valid_counts"]


def tile_valid_counts(values: np.ndarray, *, row: int, col: int, tile: int) -> np.ndarray:
    """Finite pixels per grid tile of a tile-aligned window.

    Parameters
    ----------
    values
        ``(height, width)`` layer of the window (NaN = no data); height and
        width are multiples of ``tile``.
    row, col
        Global pixel index of the window's first pixel (multiples of ``tile``).
    tile
        Tile edge (px).

    Returns
    -------
    numpy.ndarray
        ``(n, 3)`` int64 rows ``(tile_row, tile_col, n_valid)`` of the tiles with
        at least one finite pixel, in row-major order.
    """
    h, w = values.shape
    if row % tile or col % tile or h % tile or w % tile:
        raise ValueError(f"window ({row}, {col}, {h}, {w}) is not aligned to {tile}-px tiles")
    finite = np.isfinite(values).reshape(h // tile, tile, w // tile, tile)
    counts = finite.sum(axis=(1, 3))
    tr, tc = np.nonzero(counts)
    return np.stack([tr + row // tile, tc + col // tile, counts[tr, tc]], axis=1).astype(np.int64)
