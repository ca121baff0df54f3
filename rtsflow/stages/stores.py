"""Stage stores: templates on the grid (metadata only) and the small per-block fit stores.

A template holds every variable's metadata, the ``x``/``y`` coordinates and the
attributes, but no pixel: each block task then writes its own shard (region
writes, so the encoding — dtype, fill value, scale factor — is the template's).

Stage stores are Icechunk repositories, like the cube: block tasks write into
forked sessions and the stage runner commits them in batches
(:func:`rtsflow.stages.base.run_stage`), so a reader sees whole committed
blocks only and a crash loses at most the blocks since the last commit.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import rioxarray  # noqa: F401 - registers the .rio accessor
import xarray as xr

from rtsflow.grid import Grid, Window
from rtsflow.io.blocks import write_target
from rtsflow.io.repo import is_repo, transaction, zarr_store
from rtsflow.kernels.coreg import FIT_FIELDS

__all__ = ["FitStore", "GridVariable", "create_fit_store", "create_grid_store"]


@dataclass(frozen=True)
class GridVariable:
    """One variable of a stage store: ``lead`` dims (name, coordinate values) before ``y × x``."""

    dtype: str
    attrs: dict[str, Any]
    lead: tuple[tuple[str, tuple], ...] = ()
    fill: float | int | None = None  # None: NaN for floats, the zarr default (0) for integers
    encoding: dict[str, Any] | None = None


def create_grid_store(
    path: str | Path,
    *,
    grid: Grid,
    window: Window,
    variables: dict[str, GridVariable],
    attrs: dict[str, Any],
    extra: xr.Dataset | None = None,
    extra_encoding: dict[str, dict] | None = None,
) -> None:
    """Create a store's metadata over ``window`` (tile chunks, block shards), unless it exists.

    ``extra`` adds small non-pixel variables (e.g. per-block fits over
    ``block_y × block_x``), created empty like the rest.
    """
    from rtsflow.io.features import grid_encoding

    path = Path(path)
    if is_repo(path):
        return
    x, y = grid.coords(window)
    data_vars, coords = {}, {"x": ("x", x, _XY_ATTRS["x"]), "y": ("y", y, _XY_ATTRS["y"])}
    for name, v in variables.items():
        lead_dims = tuple(d for d, _ in v.lead)
        for d, values in v.lead:
            coords[d] = (d, np.asarray(values))
        shape = (*(len(vals) for _, vals in v.lead), *window.shape)
        fill = v.fill if v.fill is not None else (np.nan if np.dtype(v.dtype).kind == "f" else 0)
        arr = da.full(shape, fill, dtype=v.dtype, chunks=shape)
        data_vars[name] = ((*lead_dims, "y", "x"), arr, {**v.attrs, "grid_mapping": "spatial_ref"})
    ds = xr.Dataset(data_vars, coords=coords, attrs={**attrs, **grid.to_attrs()})
    ds = ds.rio.write_crs(grid.crs, grid_mapping_name="spatial_ref")
    for name in variables:
        ds[name].encoding.pop("grid_mapping", None)
    enc = grid_encoding(ds, grid, {k: v.encoding for k, v in variables.items() if v.encoding})
    if extra is not None:
        ds = ds.merge(extra)
        enc.update(extra_encoding or {})
    _create(path, ds, enc)


def _create(path: Path, ds: xr.Dataset, enc: dict) -> None:
    """Write the template as the first version of a new repository; it appears complete or not at all."""
    if path.exists():
        raise RuntimeError(f"{path}: a stage store of an older rtsflow (plain Zarr); run again with --force "
                           "(or another output directory) to recompute it")  # fmt: skip
    tmp = path.with_name(f".{path.name}.template-{uuid.uuid4().hex[:8]}")
    try:
        with transaction(tmp, command="stage", message=f"template of {path.name}", create=True) as tx:
            ds.to_zarr(tx.store, mode="w", compute=False, encoding=enc, zarr_format=3, consolidated=False,
                       safe_chunks=False)  # fmt: skip
        tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_XY_ATTRS = {
    "x": {"long_name": "x coordinate of projection", "units": "m", "standard_name": "projection_x_coordinate"},
    "y": {"long_name": "y coordinate of projection", "units": "m", "standard_name": "projection_y_coordinate"},
}


def create_fit_store(path: str | Path, *, grid: Grid, window: Window, members: list[str], attrs: dict) -> None:
    """Create a store of raw per-block fits: ``fit`` over ``member × block_y × block_x × field`` (NaN = no fit).

    One chunk per block (all members), so each block task writes exactly one chunk.
    """
    path = Path(path)
    if is_repo(path):
        return
    b = grid.block_size
    by = np.arange(window.row // b, window.row_stop // b)
    bx = np.arange(window.col // b, window.col_stop // b)
    shape = (len(members), len(by), len(bx), len(FIT_FIELDS))
    ds = xr.Dataset(
        {"fit": (("member", "block_y", "block_x", "field"), da.full(shape, np.nan, chunks=shape), {
            "long_name": "co-registration fit per block", "units": "",
            "description": "Raw Nuth & Kääb (+ ramp) fit of each member in each block, before neighbour "
                           "fallbacks; NaN where the member has no data in the block."})},
        coords={"member": ("member", np.asarray(members, dtype=object)), "block_y": by, "block_x": bx,
                "field": ("field", np.asarray(FIT_FIELDS, dtype=object))},
        attrs={**attrs, **grid.to_attrs()},
    )  # fmt: skip
    enc = {"fit": {"chunks": (len(members), 1, 1, len(FIT_FIELDS))}}
    _create(path, ds, enc)


class FitStore:
    """Reads and writes the raw fits of a :func:`create_fit_store` store."""

    def __init__(self, path: str | Path) -> None:
        import zarr

        self.path = Path(path)
        group = zarr.open_group(zarr_store(path), mode="r", zarr_format=3)
        self.members = [str(m) for m in group["member"][:]]
        self.by0 = int(group["block_y"][0])
        self.bx0 = int(group["block_x"][0])
        self.shape = group["fit"].shape[1:3]
        self._index = {m: i for i, m in enumerate(self.members)}

    def write(self, block: tuple[int, int], fits: dict[str, np.ndarray]) -> None:
        """Store the fits of one block (``{member: fit vector}``; absent members stay NaN)."""
        import zarr

        values = np.full((len(self.members), len(FIT_FIELDS)), np.nan)
        for member, fit in fits.items():
            values[self._index[member]] = fit
        arr = zarr.open_group(write_target(self.path), mode="r+", zarr_format=3)["fit"]
        i, j = block[0] - self.by0, block[1] - self.bx0
        arr[:, i, j, :] = values

    def neighbourhood(self, block: tuple[int, int], members: list[str]) -> tuple[np.ndarray, int, int]:
        """Fits of ``members`` in the 3 × 3 blocks around ``block``, clipped to the store.

        Returns ``(fits, i, j)``: fits ``(member, rows, cols, field)`` with missing fits as
        "none" (status 2, zero shift), and the position of ``block`` in it.
        """
        import zarr

        from rtsflow.kernels.coreg import STATUS

        arr = zarr.open_group(zarr_store(self.path), mode="r", zarr_format=3)["fit"]
        i, j = block[0] - self.by0, block[1] - self.bx0
        r0, r1 = max(i - 1, 0), min(i + 2, self.shape[0])
        c0, c1 = max(j - 1, 0), min(j + 2, self.shape[1])
        rows = [self._index[m] for m in members]
        values = arr[:, r0:r1, c0:c1, :][rows] if rows else np.zeros((0, r1 - r0, c1 - c0, len(FIT_FIELDS)))
        missing = ~np.isfinite(values[..., FIT_FIELDS.index("status")])
        values = np.where(missing[..., None], 0.0, values)
        values[..., FIT_FIELDS.index("status")][missing] = STATUS["none"]
        values[..., FIT_FIELDS.index("nmad_before")][missing] = np.nan
        values[..., FIT_FIELDS.index("nmad_after")][missing] = np.nan
        return values, i - r0, j - c0
