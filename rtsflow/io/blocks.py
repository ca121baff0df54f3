"""Reading windows of grid stores (cube, stage stores) and writing blocks of them, inside one task.

Every rtsflow store covers a block-aligned window of the global grid. A stage
task reads the window it needs (its block plus a halo) with
:meth:`GridStore.read`: pixels outside the store, or outside the run's
*domain* (the blocks a run works on), read as missing (NaN, or the layer's
fill), exactly as ``map_overlap`` pads with NaN at an array's edge. Values are
decoded by xarray (fill values → NaN, scale factors), as the lazy API sees them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from rtsflow.grid import Grid, Window

__all__ = ["GridStore", "block_region", "write_block"]


class GridStore:
    """A Zarr store on the grid, opened lazily for window reads.

    Parameters
    ----------
    path
        The store.
    grid
        Its grid.
    domain
        Pixels outside this window read as missing (default: the store's window).
    """

    def __init__(self, path: str | Path, *, grid: Grid, domain: Window | None = None) -> None:
        self.path = Path(path)
        self.grid = grid
        self.ds = xr.open_zarr(str(path), consolidated=False, chunks=None, decode_coords=False)
        self.window = grid.window_from_coords(self.ds["x"].values, self.ds["y"].values)
        self.domain = self.window if domain is None else (domain.intersection(self.window) or Window(0, 0, 0, 0))

    def read(self, variable: str, window: Window, *, index: dict | None = None, dtype=np.float32) -> np.ndarray:
        """The decoded values of ``variable`` over ``window`` (``index`` selects leading dims, e.g. ``{"obs": 3}``).

        Outside the domain the result is NaN (``dtype`` float) or 0 (integer ``dtype``).
        """
        var = self.ds[variable]
        if index:
            var = var.isel(index)
        lead = var.shape[:-2]
        fill = np.nan if np.issubdtype(np.dtype(dtype), np.floating) else 0
        out = np.full((*lead, *window.shape), fill, dtype=dtype)
        part = window.intersection(self.domain)
        if part is None:
            return out
        ys, xs = part.relative_to(self.window)
        oy, ox = part.relative_to(window)
        out[..., oy, ox] = var.isel(y=ys, x=xs).values
        return out

    def read_stack(self, variables: list[str], window: Window, *, dtype=np.float32) -> np.ndarray:
        """``(variable, y, x)``: :meth:`read` of each 2-D variable, decoded straight into one array.

        (The same values as ``np.stack([read(v, window) for v in variables])``, without the
        per-variable fill and the copy of the stack: the inference engine's strips.)
        """
        fill = np.nan if np.issubdtype(np.dtype(dtype), np.floating) else 0
        out = np.full((len(variables), *window.shape), fill, dtype=dtype)
        part = window.intersection(self.domain)
        if part is None:
            return out
        ys, xs = part.relative_to(self.window)
        oy, ox = part.relative_to(window)
        for i, name in enumerate(variables):
            out[i, oy, ox] = self.ds[name].isel(y=ys, x=xs).values
        return out

    def block_slices(self, window: Window) -> dict[str, slice]:
        """``{"y": rows, "x": cols}`` of a window inside the store (for region writes)."""
        ys, xs = window.relative_to(self.window)
        return {"y": ys, "x": xs}


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
    ds.to_zarr(str(path), region=region, mode="r+", zarr_format=3, consolidated=False)
