"""Training samples (pure NumPy): label rasters, block-wise train/validation split, balanced tiles, augmentation.

Tiles never straddle two split cells, and every split cell is either training or
validation, so training and validation tiles never share a pixel. Cells are
anchored to the global grid (global pixel indices), so the split of a place
does not depend on which area was loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

__all__ = ["TilePool", "augment", "candidate_tiles", "cell_ids", "cells_holding", "split_cells", "validation_tiles"]


def _box_sums(a: np.ndarray, size: int, stride: int) -> np.ndarray:
    """Sum of ``a`` over every ``size``² window whose corner lies on a ``stride`` lattice (integral image)."""
    ii = np.zeros((a.shape[0] + 1, a.shape[1] + 1), dtype=np.int64)
    ii[1:, 1:] = a.astype(np.int64).cumsum(0).cumsum(1)
    r = np.arange(0, a.shape[0] - size + 1, stride)
    c = np.arange(0, a.shape[1] - size + 1, stride)
    R, C = np.meshgrid(r, c, indexing="ij")
    return ii[R + size, C + size] - ii[R, C + size] - ii[R + size, C] + ii[R, C], R, C


def split_cells(
    shape: tuple[int, int], *, origin: tuple[int, int], split_size: int, val_fraction: float, seed: int
) -> np.ndarray:
    """Boolean per pixel: True where the pixel's split cell is a validation cell.

    Cells are ``split_size``² squares of the global grid; a seeded hash of the cell
    index decides, so the split of a cell is the same in every run and area. When
    no cell of a small area draws validation, the cell with the lowest draw does
    (the only case where the split depends on the area loaded).
    """
    rows = (origin[0] + np.arange(shape[0])) // split_size
    cols = (origin[1] + np.arange(shape[1])) // split_size
    # A fixed integer hash of (seed, row, col) → [0, 1).
    r = rows[:, None].astype(np.uint64) * np.uint64(73856093)
    h = r ^ (cols[None, :].astype(np.uint64) * np.uint64(19349663))
    h ^= np.uint64(seed * 83492791 + 1)
    h = (h * np.uint64(2654435761)) % np.uint64(1 << 32)
    u = h.astype(np.float64) / float(1 << 32)
    is_val = u < val_fraction
    if not is_val.any() and u.size:
        is_val = u == u.min()
    return is_val


def cell_ids(shape: tuple[int, int], origin: tuple[int, int], split_size: int) -> np.ndarray:
    """Per pixel: an integer naming its split cell on the global grid (equal ids = the same place)."""
    rows = (origin[0] + np.arange(shape[0])) // split_size
    cols = (origin[1] + np.arange(shape[1])) // split_size
    return rows[:, None] * 1_000_003 + cols[None, :]


def cells_holding(mask: np.ndarray, *, origin: tuple[int, int], split_size: int) -> set[tuple[int, int]]:
    """(row, col) on the global grid of every split cell in which ``mask`` has a True pixel."""
    if not mask.size:
        return set()
    rows = (origin[0] + np.arange(mask.shape[0])) // split_size
    cols = (origin[1] + np.arange(mask.shape[1])) // split_size
    r0 = np.flatnonzero(np.diff(rows, prepend=rows[0] - 1))  # first pixel of each cell row / column
    c0 = np.flatnonzero(np.diff(cols, prepend=cols[0] - 1))
    held = np.logical_or.reduceat(np.logical_or.reduceat(mask, r0, axis=0), c0, axis=1)
    i, j = np.nonzero(held)
    return set(zip(rows[r0[i]].tolist(), cols[c0[j]].tolist(), strict=True))


@dataclass(frozen=True)
class TilePool:
    """Tile corners (row, col in the loaded area) of one split, with and without slumps.

    ``hard`` is the subset of ``negative`` that holds a rejected candidate (a hard negative).
    """

    positive: np.ndarray  # (n, 2)
    negative: np.ndarray  # (m, 2)
    hard: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), int))  # (k, 2)

    def __len__(self) -> int:
        return len(self.positive) + len(self.negative)


def candidate_tiles(
    valid: np.ndarray,
    label: np.ndarray,
    is_val: np.ndarray,
    *,
    origin: tuple[int, int],
    tile: int,
    split_size: int,
    stride: int,
    min_valid: float = 0.5,
    min_positive_px: int = 20,
    negative: np.ndarray | None = None,
) -> tuple[TilePool, TilePool]:
    """Tiles (on a ``stride`` lattice) that lie inside one split cell and are at least ``min_valid`` valid.

    Returns ``(train, validation)`` pools, each split into tiles with at least
    ``min_positive_px`` slump pixels and tiles without any; of the latter, those with
    at least ``min_positive_px`` pixels of ``negative`` (rejected candidates) are also
    listed as hard negatives.
    """
    if split_size < tile:
        raise ValueError(f"split_size ({split_size}) must be at least the tile size ({tile})")
    n_valid, R, C = _box_sums(valid, tile, stride)
    n_pos, _, _ = _box_sums(label > 0, tile, stride)
    cell = cell_ids(valid.shape, origin, split_size)
    same_cell = (cell[R, C] == cell[R + tile - 1, C + tile - 1]) if R.size else np.zeros(R.shape, bool)
    ok = same_cell & (n_valid >= min_valid * tile * tile)
    val = is_val[R, C]
    n_hard = _box_sums(negative, tile, stride)[0] if negative is not None else np.zeros(R.shape, np.int64)
    pools = []
    for want_val in (False, True):
        sel = ok & (val == want_val)
        pos = sel & (n_pos >= min_positive_px)
        neg = sel & (n_pos == 0)
        hard = neg & (n_hard >= min_positive_px)
        pools.append(TilePool(*(np.stack([R[m], C[m]], 1) for m in (pos, neg, hard))))
    return pools[0], pools[1]


def validation_tiles(valid: np.ndarray, is_val: np.ndarray, *, tile: int) -> np.ndarray:
    """Non-overlapping tile corners covering the validation cells (every valid pixel once)."""
    out = []
    for r in range(0, valid.shape[0], tile):
        for c in range(0, valid.shape[1], tile):
            win = (slice(r, r + tile), slice(c, c + tile))
            if is_val[win].any() and valid[win].any():
                out.append((r, c))
    return np.asarray(out, dtype=int).reshape(-1, 2)


def augment(x: np.ndarray, y: np.ndarray, valid: np.ndarray, rng: np.random.Generator, *, p: float = 0.5):
    """Flips, 90° rotations and a 3-px Gaussian blur of the inputs, each with probability ``p`` (paper Sec. 2.4).

    ``x`` is ``(band, y, x)``; ``y`` and ``valid`` are ``(y, x)``. Returns new arrays.
    """
    if rng.random() < p:
        x, y, valid = x[:, :, ::-1], y[:, ::-1], valid[:, ::-1]
    if rng.random() < p:
        x, y, valid = x[:, ::-1, :], y[::-1, :], valid[::-1, :]
    if rng.random() < p:
        k = int(rng.integers(1, 4))
        x, y, valid = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k), np.rot90(valid, k)
    x = np.ascontiguousarray(x)
    if rng.random() < p:
        # 3-px kernel: σ = 0.5 px truncated at 1 px (radius 1).
        x = np.stack([ndimage.gaussian_filter(b, sigma=0.5, truncate=2.0, mode="nearest") for b in x])
    return x, np.ascontiguousarray(y), np.ascontiguousarray(valid)
