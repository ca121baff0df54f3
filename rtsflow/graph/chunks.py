"""Where each dask chunk of a grid-aligned array lies on the grid."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from rtsflow.grid import Window

__all__ = ["chunk_windows"]


def chunk_windows(chunks: tuple[tuple[int, ...], tuple[int, ...]], window: Window) -> Iterator[tuple[int, int, Window]]:
    """``(i, j, grid window)`` of every chunk of a ``y × x`` dask array covering ``window``."""
    y0s = np.cumsum((0, *chunks[0][:-1]))
    x0s = np.cumsum((0, *chunks[1][:-1]))
    for i, y0 in enumerate(y0s):
        for j, x0 in enumerate(x0s):
            yield i, j, Window(window.row + int(y0), window.col + int(x0), chunks[0][i], chunks[1][j])
