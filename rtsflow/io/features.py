"""The feature store: pair features on the grid as a Zarr v3 store (tile chunks, block shards)."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import xarray as xr
from zarr.codecs import BloscCodec

from rtsflow.grid import Grid

__all__ = ["grid_encoding", "open_features", "write_features", "write_grid_dataset"]

_COMPRESSOR = BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")


def grid_encoding(ds: xr.Dataset, grid: Grid, extra: dict | None = None) -> dict:
    """Zarr encoding of a grid dataset (tile chunks, block shards, zstd) plus per-variable ``extra`` keys."""
    enc = _encoding(ds, grid)
    for name, keys in (extra or {}).items():
        enc.setdefault(name, {}).update(keys)
    return enc


def _encoding(ds: xr.Dataset, grid: Grid) -> dict:
    t, b = grid.tile_size, grid.block_size
    enc = {}
    for name, var in ds.data_vars.items():
        if var.dims[-2:] != ("y", "x"):
            continue
        lead = (1,) * (var.ndim - 2)
        enc[name] = {"chunks": (*lead, t, t), "shards": (*lead, b, b), "compressors": [_COMPRESSOR]}
    return enc


def write_features(ds: xr.Dataset, path: str | Path, *, grid: Grid, selection=None, overwrite: bool = False) -> Path:
    """Compute and write a feature dataset (this is where the graph runs).

    Written to a temporary sibling and renamed into place, so a failed or
    killed run never leaves a half-written store at ``path``.

    Parameters
    ----------
    selection
        Optional observation-selection table (pandas) stored as JSON in the attributes.
    """
    out = ds.copy()
    if selection is not None:
        out.attrs["observation_selection"] = json.dumps(
            selection.assign(time=selection.time.astype(str)).to_dict(orient="records")
        )
    return write_grid_dataset(out, path, grid=grid, overwrite=overwrite)


def write_grid_dataset(
    ds: xr.Dataset,
    path: str | Path,
    *,
    grid: Grid,
    overwrite: bool = False,
    encoding: dict | None = None,
    compute_kwargs: dict | None = None,
) -> Path:
    """Write a dataset on the grid (tile chunks, block shards) atomically: temporary sibling, then rename.

    ``encoding`` adds per-variable keys (e.g. ``dtype``, ``scale_factor``);
    ``compute_kwargs`` go to ``dask.compute`` through a distributed client when
    one is active (e.g. ``resources={"GPU": 1}``).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    out = ds.copy()
    out.attrs.update(grid.to_attrs())
    enc = grid_encoding(out, grid, encoding)
    try:
        job = out.to_zarr(str(tmp), mode="w-", encoding=enc, zarr_format=3, consolidated=False, compute=False)
        _compute(job, compute_kwargs or {})
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _compute(job, kwargs: dict) -> None:
    if not kwargs:
        job.compute()
        return
    from distributed import default_client

    default_client().compute(job, **kwargs).result()


def open_features(path: str | Path, *, chunk: int | None = None) -> xr.Dataset:
    """Open a feature store lazily with dask chunks = blocks (or ``chunk``)."""
    import zarr

    from rtsflow.io.repo import zarr_store

    store = zarr_store(path)  # a stage store (versioned) or the lazy API's output (plain Zarr)
    attrs = zarr.open_group(store, mode="r", zarr_format=3).attrs
    b = Grid.from_attrs(attrs).block_size if chunk is None else int(chunk)
    return xr.open_zarr(store, consolidated=False, chunks={"y": b, "x": b, "winter": 1}, decode_coords="all")
