"""The feature store: pair features on the grid as a Zarr v3 store (tile chunks, block shards)."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import xarray as xr
from zarr.codecs import BloscCodec

from rtsflow.grid import Grid

__all__ = ["open_features", "write_features"]

_COMPRESSOR = BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")


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
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    out = ds.copy()
    out.attrs.update(grid.to_attrs())
    if selection is not None:
        out.attrs["observation_selection"] = json.dumps(
            selection.assign(time=selection.time.astype(str)).to_dict(orient="records")
        )
    try:
        out.to_zarr(str(tmp), mode="w-", encoding=_encoding(out, grid), zarr_format=3, consolidated=False)
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def open_features(path: str | Path, *, chunk: int | None = None) -> xr.Dataset:
    """Open a feature store lazily with dask chunks = blocks (or ``chunk``)."""
    import zarr

    attrs = zarr.open_group(str(path), mode="r", zarr_format=3).attrs
    b = Grid.from_attrs(attrs).block_size if chunk is None else int(chunk)
    return xr.open_zarr(str(path), consolidated=False, chunks={"y": b, "x": b, "winter": 1}, decode_coords="all")
