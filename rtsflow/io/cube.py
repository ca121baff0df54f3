"""The observation cube: a Zarr v3 store of every ingested observation on the grid.

Layout: dims ``obs x y x``; inner chunk = tile (512²), shard = block (4096²),
Blosc-zstd compressed. Pixels no product covered are never stored (reading
them gives the fill value, NaN, or 255 for the layover/shadow mask).

The cube is created by the first ingest and grows along ``obs``; its spatial
window (block-aligned) is fixed at creation. It lives in an Icechunk repository
(:mod:`rtsflow.io.repo`): readers take a *cube* (a path: the current version,
or a :class:`~rtsflow.io.repo.CubeRef`: one version); writers take the
writable *store* of a transaction.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import rioxarray  # noqa: F401 - registers the .rio accessor
import xarray as xr
import zarr
from zarr.codecs import BloscCodec

from rtsflow import __version__
from rtsflow.grid import GRID_CRS, Grid, Window
from rtsflow.io.footprints import create_footprints
from rtsflow.io.repo import CubeRef, NotACubeError, read_store

__all__ = [
    "CUBE_VARIABLES",
    "OBS_COORDS",
    "Cube",
    "CubeInfo",
    "append_obs_template",
    "create_cube",
    "cube_group",
    "cube_info",
    "cube_store",
    "obs_coords",
    "open_cube",
    "write_block",
]

#: What readers accept: a cube's path (its current version) or one version of it.
Cube = str | Path | CubeRef



@dataclass(frozen=True)
class VariableSpec:
    dtype: str
    fill: float | int
    long_name: str
    units: str
    description: str


CUBE_VARIABLES: dict[str, VariableSpec] = {
    "dem": VariableSpec(
        "float32",
        np.nan,
        "surface elevation",
        "m",
        "Elevation of the observation resampled (bilinear) onto the rtsflow grid.",
    ),
    "coherence": VariableSpec(
        "float32",
        np.nan,
        "interferometric coherence",
        "1",
        "InSAR coherence γ in [0, 1] (bilinear); NaN for DEM-only products.",
    ),
    "layover_shadow": VariableSpec(
        "uint8",
        255,
        "SAR layover/shadow mask",
        "1",
        "1 = layover or shadow, 0 = clear (nearest neighbour); missing where not supplied.",
    ),
    "incidence": VariableSpec(
        "float32",
        np.nan,
        "local incidence angle",
        "rad",
        "Local incidence angle of the radar beam on the terrain (bilinear).",
    ),
    "sigma": VariableSpec(
        "float32",
        np.nan,
        "elevation error (1 sigma) supplied with the product",
        "m",
        "Per-pixel elevation error of DEM-only products (e.g. ArcticDEM); "
        "for InSAR products σ_h is derived from coherence instead.",
    ),
}

#: Per-observation coordinates: name -> (long_name, units, description).
OBS_COORDS: dict[str, tuple[str, str, str]] = {
    "time": ("acquisition time", "", "Acquisition time (UTC)."),
    "hoa": ("height of ambiguity", "m", "InSAR height of ambiguity; NaN for DEM-only products."),
    "orbit": ("orbit direction", "", "ascending, descending or unknown."),
    "sensor": ("sensor", "", "Sensor or mission that acquired the observation."),
    "product_id": ("product id", "", "Unique id from the product sidecar."),
    "kind": ("product kind", "", "insar (DEM + coherence) or dem (DEM-only)."),
    "source": ("source sidecar", "", "Path of the sidecar JSON the observation came from."),
    "content_hash": ("content hash", "", "sha256 of the sidecar metadata and raster bytes."),
}

#: Group attribute of plain-Zarr cubes (rtsflow ≤ 0.2): how many observations were committed.
COMMITTED_ATTR = "rtsflow_committed_obs"

#: Obs coordinates are tiny; long chunks keep the file count low as obs grows.
OBS_COORD_CHUNK = 4096

_COMPRESSORS = {
    "float32": BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"),
    "uint8": BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"),
}


@dataclass(frozen=True)
class CubeInfo:
    """What a cube's metadata says about its grid and extent."""

    path: Path
    grid: Grid
    window: Window
    n_obs: int
    product_ids: tuple[str, ...]
    content_hashes: tuple[str, ...]


def _obs_dataset(grid: Grid, window: Window, obs: Mapping[str, np.ndarray]) -> xr.Dataset:
    """A lazy (never computed) all-fill dataset for ``len(obs['time'])`` observations."""
    n = len(obs["time"])
    x, y = grid.coords(window)
    data_vars = {}
    for name, spec in CUBE_VARIABLES.items():
        # One dask chunk: the template is never computed, and a pan-Arctic cube would otherwise
        # mean obs x blocks graph keys just to write metadata.
        shape = (n, *window.shape)
        arr = da.full(shape, spec.fill, dtype=spec.dtype, chunks=shape)
        attrs = {
            "long_name": spec.long_name,
            "units": spec.units,
            "description": spec.description,
            "grid_mapping": "spatial_ref",
        }
        data_vars[name] = (("obs", "y", "x"), arr, attrs)
    coords: dict[str, Any] = {
        "x": (
            "x",
            x,
            {"long_name": "x coordinate of projection", "units": "m", "standard_name": "projection_x_coordinate"},
        ),
        "y": (
            "y",
            y,
            {"long_name": "y coordinate of projection", "units": "m", "standard_name": "projection_y_coordinate"},
        ),
    }
    for name, (long_name, units, description) in OBS_COORDS.items():
        values = np.asarray(obs[name])
        if values.dtype.kind in "OUT":
            values = values.astype(object)
        attrs = {"long_name": long_name, "description": description}
        if units:
            attrs["units"] = units
        coords[name] = ("obs", values, attrs)
    ds = xr.Dataset(data_vars, coords=coords).rio.write_crs(GRID_CRS, grid_mapping_name="spatial_ref")
    # Keep the CF link as an attribute: our explicit to_zarr encoding replaces
    # the variable encoding where rioxarray puts it.
    for name in CUBE_VARIABLES:
        ds[name].encoding.pop("grid_mapping", None)
        ds[name].attrs["grid_mapping"] = "spatial_ref"
    return ds


def _encoding(grid: Grid) -> dict[str, dict[str, Any]]:
    t, b = grid.tile_size, grid.block_size
    enc: dict[str, dict[str, Any]] = {}
    for name, spec in CUBE_VARIABLES.items():
        enc[name] = {
            "chunks": (1, t, t),
            "shards": (1, b, b),
            "compressors": [_COMPRESSORS[spec.dtype]],
            "_FillValue": spec.fill,
            "fill_value": spec.fill,
        }
    for name in OBS_COORDS:
        enc[name] = {"chunks": (OBS_COORD_CHUNK,)}
    enc["time"] |= {"units": "seconds since 1970-01-01T00:00:00", "calendar": "proleptic_gregorian", "dtype": "int64"}
    return enc


def cube_store(cube: Cube):
    """A read-only Zarr store of ``cube`` (a path: its current version; a :class:`CubeRef`: that version)."""
    return cube.store() if isinstance(cube, CubeRef) else read_store(cube)


def cube_group(cube: Cube) -> zarr.Group:
    """The cube's root Zarr group, read-only."""
    try:
        return zarr.open_group(cube_store(cube), mode="r", zarr_format=3)
    except zarr.errors.GroupNotFoundError:
        raise NotACubeError(f"{_cube_path(cube)}: has no committed version yet (its first ingest did not finish; "
                            "ingest again)") from None


def _group(store, mode: str = "r+") -> zarr.Group:
    return zarr.open_group(str(store) if isinstance(store, Path) else store, mode=mode, zarr_format=3)


def create_cube(store, *, grid: Grid, window: Window, obs: Mapping[str, np.ndarray]) -> None:
    """Create the store's metadata and obs coordinates for the first batch of observations.

    No pixel is written here; :func:`write_block` fills the blocks each product
    touches. ``window`` must be block-aligned.
    """
    if grid.snap(window, to="block") != window:
        raise ValueError(f"cube window {window} is not aligned to {grid.block_size}-px blocks")
    ds = _obs_dataset(grid, window, obs)
    ds.attrs.update(
        {
            "title": "rtsflow observation cube",
            "Conventions": "CF-1.10",
            "rtsflow_version": __version__,
            **grid.to_attrs(),
            "grid_window": [window.row, window.col, window.height, window.width],
        }
    )
    ds.to_zarr(store, mode="w-", encoding=_encoding(grid), compute=False, zarr_format=3, consolidated=False,
               safe_chunks=False)
    create_footprints(store)


def append_obs_template(store, *, grid: Grid, window: Window, obs: Mapping[str, np.ndarray]) -> slice:
    """Grow the cube by ``len(obs['time'])`` observations (metadata and coordinates only).

    Returns the ``obs`` index slice of the new observations.
    """
    group = _group(store, "r")
    n_before = group["product_id"].shape[0]
    ds = _obs_dataset(grid, window, obs).drop_vars(["x", "y", "spatial_ref"])
    # xarray rewrites the group attributes on append: carry the existing ones over.
    ds.attrs = dict(group.attrs)
    ds.to_zarr(store, append_dim="obs", compute=False, consolidated=False, safe_chunks=False)
    return slice(n_before, n_before + len(obs["time"]))


def write_block(
    store, *, obs_index: int, block: Window, cube_window: Window, layers: Mapping[str, np.ndarray]
) -> None:
    """Write one observation's layers into ``block`` (a tile-aligned window inside one shard).

    Only the tiles of ``block`` are encoded; tiles that are all fill value are
    not stored. Callers must not write the same shard concurrently (ingest
    gives each (observation, block) to exactly one task).
    """
    group = _group(store)
    grid_tile = group.attrs["grid_tile_size"]
    if block.row % grid_tile or block.col % grid_tile or block.height % grid_tile or block.width % grid_tile:
        raise ValueError(f"{block} is not aligned to {grid_tile}-px tiles")
    ys, xs = block.relative_to(cube_window)
    for name, arr in layers.items():
        spec = CUBE_VARIABLES[name]
        if arr.shape != block.shape:
            raise ValueError(f"layer {name}: shape {arr.shape} != block {block.shape}")
        if spec.dtype == "uint8":
            out = np.where(np.isfinite(arr), arr, spec.fill).astype(np.uint8)
        else:
            out = arr.astype(spec.dtype, copy=False)
        group[name][obs_index, ys, xs] = out


def create_static(store, *, name: str, dtype: str, attributes: dict) -> None:
    """Add an empty ``y × x`` static layer (a water mask, a reference DEM) to a cube.

    uint8 layers use 255 and float layers NaN for "no data".
    """
    group = _group(store)
    info = _info(group, path=Path("."))
    if name in group:
        raise ValueError(f"the cube already has a variable {name!r}")
    t, b = info.grid.tile_size, info.grid.block_size
    fill = 255 if dtype == "uint8" else np.nan
    group.create_array(
        name, shape=info.window.shape, dtype=dtype, chunks=(t, t), shards=(b, b), fill_value=fill,
        compressors=[_COMPRESSORS[dtype]], dimension_names=("y", "x"),
        # uint8 no-data must be declared for xarray to mask it; NaN (the zarr fill) needs no declaration.
        attributes={**attributes, **({"_FillValue": 255} if dtype == "uint8" else {}), "grid_mapping": "spatial_ref"},
    )  # fmt: skip


def write_static_window(store, *, name: str, window: Window, cube_window: Window, values: np.ndarray) -> None:
    """Write a tile-aligned window of a static layer (NaN → the layer's no-data value)."""
    group = _group(store)
    arr = group[name]
    ys, xs = window.relative_to(cube_window)
    if arr.dtype == np.uint8:
        arr[ys, xs] = np.where(np.isfinite(values), values, 255).astype(np.uint8)
    else:
        arr[ys, xs] = values.astype(arr.dtype)


def cube_info(cube: Cube) -> CubeInfo:
    """Read a cube's grid, window and product ids without touching pixel data."""
    return _info(cube_group(cube), path=_cube_path(cube))


def _cube_path(cube: Cube) -> Path:
    return Path(cube.path) if isinstance(cube, CubeRef) else Path(cube)


def _info(group: zarr.Group, *, path: Path) -> CubeInfo:
    a = group.attrs
    try:
        grid = Grid.from_attrs(a)
        window = Window(*(int(v) for v in a["grid_window"]))
    except KeyError as e:
        raise ValueError(f"{path}: not an rtsflow observation cube (missing attribute {e})") from e
    ids = tuple(str(v) for v in group["product_id"][:])
    hashes = tuple(str(v) for v in group["content_hash"][:])
    return CubeInfo(path=path, grid=grid, window=window, n_obs=len(ids), product_ids=ids, content_hashes=hashes)


def obs_coords(cube: Cube) -> xr.Dataset:
    """The observations' coordinates (``time``, ``hoa``, ``product_id``, …), read in this process.

    A dataset without data variables, in store order: what selection needs, without
    opening the pixel arrays.
    """
    return _obs_coords(_open(cube_store(cube), chunks=None))


def _open(store, *, chunks) -> xr.Dataset:
    with warnings.catch_warnings():
        # The small obs coordinates are stored in long chunks and loaded right away.
        warnings.filterwarnings("ignore", "The specified chunks separate", UserWarning)
        return xr.open_zarr(store, consolidated=False, chunks=chunks, decode_coords="all")


def _obs_coords(ds: xr.Dataset) -> xr.Dataset:
    text = ("orbit", "sensor", "product_id", "kind", "source", "content_hash")
    values = {}
    for name in OBS_COORDS:
        v = ds[name].load()
        values[name] = v.astype(object) if name in text else v
    return xr.Dataset(coords=values, attrs=dict(ds.attrs))


def open_cube(cube: Cube, *, sort_by_time: bool = True, chunk: int | None = None) -> xr.Dataset:
    """Open an observation cube lazily, with dask chunks equal to blocks.

    Parameters
    ----------
    cube
        The cube's path (its current version) or a :class:`~rtsflow.io.repo.CubeRef` (one version).
    sort_by_time
        Return observations in acquisition order (the store keeps ingest order).
    chunk
        Dask chunk edge (px); default the block. Must divide the block.

    Returns
    -------
    xarray.Dataset
        Dask-backed; obs coordinates are loaded (they are small).
    """
    group = cube_group(cube)  # one snapshot for metadata and pixels
    store = group.store
    info = _info(group, path=_cube_path(cube))
    b = info.grid.block_size if chunk is None else int(chunk)
    if info.grid.block_size % b:
        raise ValueError(f"chunk {b} must divide the block size {info.grid.block_size}")
    ds = _open(store, chunks={"obs": 1, "y": b, "x": b})
    coords = _obs_coords(ds)
    ds = ds.assign_coords({name: coords[name] for name in OBS_COORDS})
    if sort_by_time and ds.sizes["obs"] > 1:
        order = np.argsort(ds["time"].values, kind="stable")
        if not np.array_equal(order, np.arange(len(order))):
            ds = ds.isel(obs=order)
    return ds
