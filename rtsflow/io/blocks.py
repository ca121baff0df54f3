"""Reading windows of grid stores (cube, stage stores) and writing blocks of them, inside one task.

Every rtsflow store covers a block-aligned window of the global grid. A stage
task reads the window it needs (its block plus a halo) with
:meth:`GridStore.read`: pixels outside the store, or outside the run's
*domain* (the blocks a run works on), read as missing (NaN, or the layer's
fill), exactly as ``map_overlap`` pads with NaN at an array's edge. Values are
decoded by xarray (fill values → NaN, scale factors), as the lazy API sees them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import xarray as xr

from rtsflow.grid import Grid, Window

__all__ = ["GridStore", "block_region", "write_block", "write_target", "writing_into"]

# Stage stores are Icechunk repositories: a block task writes into a forked session the stage runner
# gives it (see rtsflow.stages.base), registered here for the task's thread.
_FORKS = threading.local()


@contextmanager
def writing_into(path: str | Path, fork) -> Iterator[None]:
    """Within the block, writes to the store at ``path`` go to ``fork`` (an Icechunk fork session)."""
    forks = _FORKS.__dict__.setdefault("by_path", {})
    key = str(Path(path).absolute())
    forks[key] = fork
    try:
        yield
    finally:
        forks.pop(key, None)


def write_target(path: str | Path):
    """The Zarr store a block write to ``path`` goes to: the task's fork, or the plain store at ``path``."""
    fork = getattr(_FORKS, "by_path", {}).get(str(Path(path).absolute()))
    if fork is not None:
        return fork.store
    from rtsflow.io.repo import is_repo

    if is_repo(path):
        raise RuntimeError(f"{path}: a versioned store is written only by a stage task (given a fork by run_stage)")
    return str(path)


class GridStore:
    """A Zarr store on the grid, opened lazily for window reads.

    Parameters
    ----------
    path
        The store: a stage store's path, or a cube (its path, or a
        :class:`~rtsflow.io.repo.CubeRef` for one version: what stage tasks get).
    grid
        Its grid.
    domain
        Pixels outside this window read as missing (default: the store's window).
    """

    def __init__(self, path, *, grid: Grid, domain: Window | None = None) -> None:
        from rtsflow.io.repo import CubeRef, zarr_store

        self.path = Path(path.path) if isinstance(path, CubeRef) else Path(path)
        self.grid = grid
        store = path.store() if isinstance(path, CubeRef) else zarr_store(path)
        self.ds = xr.open_zarr(store, consolidated=False, chunks=None, decode_coords=False)
        self.window = grid.window_from_coords(self.ds["x"].values, self.ds["y"].values)
        self.domain = self.window if domain is None else (domain.intersection(self.window) or Window(0, 0, 0, 0))

    def read(self, variable: str, window: Window, *, index: dict | None = None, dtype=np.float32) -> np.ndarray:
        """The decoded values of ``variable`` over ``window`` (``index`` selects leading dims, e.g. ``{"obs": 3}``).

        Outside the domain the result is NaN (``dtype`` float) or 0 (integer ``dtype``).
        """
        var = self.ds[variable]
        if index:
            var = var.isel(index)
        out = np.full((*var.shape[:-2], *window.shape), _fill(dtype), dtype=dtype)
        if (where := self._placement(window)) is not None:
            (ys, xs), (oy, ox) = where
            out[..., oy, ox] = var.isel(y=ys, x=xs).values
        return out

    def read_stack(self, variables: list[str], window: Window, *, dtype=np.float32) -> np.ndarray:
        """``(variable, y, x)``: :meth:`read` of each 2-D variable, decoded straight into one array.

        (The same values as ``np.stack([read(v, window) for v in variables])``, without the
        per-variable fill and the copy of the stack: the inference engine's strips.)
        """
        out = np.full((len(variables), *window.shape), _fill(dtype), dtype=dtype)
        if (where := self._placement(window)) is not None:
            (ys, xs), (oy, ox) = where
            for i, name in enumerate(variables):
                out[i, oy, ox] = self.ds[name].isel(y=ys, x=xs).values
        return out

    def _placement(self, window: Window):
        """``((rows, cols) in the store, (rows, cols) in the window)`` of the window's part inside the
        domain, or ``None`` when nothing of it is."""
        part = window.intersection(self.domain)
        if part is None:
            return None
        return part.relative_to(self.window), part.relative_to(window)

    def block_slices(self, window: Window) -> dict[str, slice]:
        """``{"y": rows, "x": cols}`` of a window inside the store (for region writes)."""
        ys, xs = window.relative_to(self.window)
        return {"y": ys, "x": xs}


def _fill(dtype) -> float | int:
    """What a pixel outside the domain reads as: NaN for float ``dtype``, else 0."""
    return np.nan if np.issubdtype(np.dtype(dtype), np.floating) else 0


def block_region(window: Window, domain: Window) -> dict[str, slice]:
    """``{"y": rows, "x": cols}`` of a window inside a store that covers ``domain`` (for region writes)."""
    ys, xs = window.relative_to(domain)
    return {"y": ys, "x": xs}


def write_block(path: str | Path, data: dict[str, tuple[tuple[str, ...], np.ndarray]], *, region: dict) -> None:
    """Write NumPy arrays into a region of an existing store, encoded as the store's template says.

    ``data`` maps variable names to ``(dims, values)``; ``region`` maps dims to
    slices (block-aligned in ``y``/``x``, so every task writes whole shards).
    """
    ds = xr.Dataset({name: (dims, values) for name, (dims, values) in data.items()})
    ds.to_zarr(write_target(path), region=region, mode="r+", zarr_format=3, consolidated=False)
