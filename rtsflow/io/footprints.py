"""The footprint index: which grid tiles every observation of a cube has data in.

A small table beside the pixels, in the cube's ``footprint`` group: one entry
per (observation, tile) with at least one finite DEM pixel, as four 1-D arrays
``obs`` (the observation's position in the store), ``tile_row``, ``tile_col``
(global grid tile indices) and ``n_valid`` (finite pixels in the tile). Ingest
appends the entries of the tiles it wrote in the same transaction as the
pixels, so every version of the cube has the index of its observations. With it, "which observations of epoch
E have data in block B (plus a halo)" is answered without reading a pixel.

``xarray.open_zarr`` of the cube ignores the group, so the cube stays a normal
``obs × y × x`` dataset.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

from rtsflow.grid import Grid, Window

__all__ = [
    "FIELDS",
    "GROUP",
    "FootprintIndex",
    "FootprintIndexError",
    "append_footprints",
    "create_footprints",
    "indexed_count",
    "read_footprints",
]

log = logging.getLogger(__name__)

GROUP = "footprint"
FIELDS = ("obs", "tile_row", "tile_col", "n_valid")
#: Attribute of the group: observations 0 … n_obs-1 are indexed.
INDEXED_ATTR = "n_obs"
_CHUNK = 65536
REBUILD_HINT = "rtsflow cube footprints {cube}"


class FootprintIndexError(ValueError):
    """The cube has no (or an incomplete) footprint index; the message says how to build it."""


def _root(store, mode: str = "r") -> zarr.Group:
    return zarr.open_group(str(store) if isinstance(store, Path) else store, mode=mode, zarr_format=3)


def indexed_count(store) -> int | None:
    """How many observations the footprint index of a cube's store covers (``None``: the cube has no index)."""
    root = _root(store)
    if GROUP not in root:
        return None
    return int(root[GROUP].attrs.get(INDEXED_ATTR, 0))


def create_footprints(store, *, n_obs: int = 0) -> None:
    """Create an empty footprint group (replacing an existing one) that claims ``n_obs`` indexed observations."""
    root = _root(store, "r+")
    group = root.require_group(GROUP)
    for name in FIELDS:
        if name in group:
            del group[name]
        group.create_array(name, shape=(0,), chunks=(_CHUNK,), dtype="int32", fill_value=-1,
                           dimension_names=("entry",))  # fmt: skip
    group.attrs.update({
        INDEXED_ATTR: int(n_obs),
        "description": "Footprint index: one entry per (observation, grid tile) with finite DEM pixels.",
    })  # fmt: skip


def append_footprints(store, entries: np.ndarray, *, n_obs: int) -> None:
    """Append ``(obs, tile_row, tile_col, n_valid)`` rows and mark observations ``< n_obs`` as indexed.

    Entries must belong to observations not yet indexed (ingest appends the new
    observations' tiles just before it commits them).
    """
    group = _root(store, "r+")[GROUP]
    entries = np.asarray(entries, dtype=np.int64).reshape(-1, len(FIELDS))
    before = int(group.attrs[INDEXED_ATTR])
    if len(entries) and entries[:, 0].min() < before:
        raise ValueError("footprint entries for observations already indexed (< {before})")
    order = np.lexsort((entries[:, 2], entries[:, 1], entries[:, 0]))
    entries = entries[order]
    n0 = group["obs"].shape[0]
    for k, name in enumerate(FIELDS):
        arr = group[name]
        arr.resize((n0 + len(entries),))
        if len(entries):
            arr[n0:] = entries[:, k].astype(np.int32)
    group.attrs[INDEXED_ATTR] = int(n_obs)


@dataclass
class FootprintIndex:
    """Observation → tiles table of a cube, with the queries the stages need.

    Parameters
    ----------
    grid
        The cube's grid.
    entries
        ``(n, 4)`` int64 rows ``(obs, tile_row, tile_col, n_valid)``.
    n_obs
        Observations indexed (every one of them, with or without entries).
    """

    grid: Grid
    entries: np.ndarray
    n_obs: int
    _by_tile: dict[tuple[int, int], np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        e = np.asarray(self.entries, dtype=np.int64).reshape(-1, len(FIELDS))
        self.entries = e
        if len(e):
            order = np.lexsort((e[:, 0], e[:, 2], e[:, 1]))
            e = e[order]
            keys = e[:, 1:3]
            cut = np.nonzero(np.any(np.diff(keys, axis=0) != 0, axis=1))[0] + 1
            starts = np.concatenate([[0], cut])
            stops = np.concatenate([cut, [len(e)]])
            self._by_tile = {(int(e[a, 1]), int(e[a, 2])): e[a:b, 0] for a, b in zip(starts, stops, strict=True)}

    def obs_in_window(self, window: Window) -> np.ndarray:
        """Store positions of the observations with data in any tile the window touches (sorted)."""
        t = self.grid.tile_size
        parts = [
            self._by_tile[(r, c)]
            for r in range(window.row // t, -(-window.row_stop // t))
            for c in range(window.col // t, -(-window.col_stop // t))
            if (r, c) in self._by_tile
        ]
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)

    def obs_by_block(self, blocks: Iterable[tuple[int, int]], *, halo: int = 0,
                     domain: Window | None = None) -> dict[tuple[int, int], np.ndarray]:  # fmt: skip
        """``{block: observations with data in the block ± halo px}`` (clipped to ``domain``)."""
        out = {}
        for br, bc in blocks:
            w = self.grid.block_window(br, bc)
            w = Window(w.row - halo, w.col - halo, w.height + 2 * halo, w.width + 2 * halo)
            if domain is not None:
                w = w.intersection(domain)
            out[(br, bc)] = self.obs_in_window(w) if w is not None else np.zeros(0, dtype=np.int64)
        return out

    def extents_in_window(self, window: Window) -> dict[int, Window]:
        """``{obs: the part of the window its data tiles cover (their bounding box ∩ window)}``."""
        t = self.grid.tile_size
        boxes: dict[int, list[int]] = {}
        for r in range(window.row // t, -(-window.row_stop // t)):
            for c in range(window.col // t, -(-window.col_stop // t)):
                for o in self._by_tile.get((r, c), ()):
                    b = boxes.setdefault(int(o), [r, c, r, c])
                    b[0], b[1], b[2], b[3] = min(b[0], r), min(b[1], c), max(b[2], r), max(b[3], c)
        out = {}
        for o, (r0, c0, r1, c1) in sorted(boxes.items()):
            box = Window(r0 * t, c0 * t, (r1 - r0 + 1) * t, (c1 - c0 + 1) * t).intersection(window)
            if box is not None:
                out[o] = box
        return out

    def extents_by_block(self, blocks: Iterable[tuple[int, int]], *, halo: int = 0,
                         domain: Window | None = None) -> dict[tuple[int, int], dict[int, Window]]:  # fmt: skip
        """``{block: {obs: its data extent within the block ± halo px}}`` (clipped to ``domain``)."""
        out = {}
        for br, bc in blocks:
            w = self.grid.block_window(br, bc)
            w = Window(w.row - halo, w.col - halo, w.height + 2 * halo, w.width + 2 * halo)
            if domain is not None:
                w = w.intersection(domain)
            out[(br, bc)] = self.extents_in_window(w) if w is not None else {}
        return out

    def blocks_of(self, obs: int) -> list[tuple[int, int]]:
        """Grid blocks in which one observation has data."""
        b = self.grid.block_tiles
        rows = self.entries[self.entries[:, 0] == obs]
        return sorted({(int(r) // b, int(c) // b) for r, c in rows[:, 1:3]})

    def valid_pixels(self, obs: int) -> int:
        """Finite DEM pixels of one observation in the cube."""
        return int(self.entries[self.entries[:, 0] == obs, 3].sum())


def read_footprints(cube, *, grid: Grid, n_obs: int) -> FootprintIndex:
    """The footprint index of the first ``n_obs`` observations of a cube (a path or a ``CubeRef``).

    Raises
    ------
    FootprintIndexError
        If the cube has no index or it covers fewer observations (a cube from an
        older rtsflow): the message gives the command that builds it.
    """
    from rtsflow.io.cube import cube_store

    root = _root(cube_store(cube))
    cube = getattr(cube, "path", cube)
    hint = REBUILD_HINT.format(cube=cube)
    if GROUP not in root:
        raise FootprintIndexError(f"{cube}: the cube has no footprint index; build it with `{hint}`")
    group = root[GROUP]
    indexed = int(group.attrs.get(INDEXED_ATTR, 0))
    if indexed < n_obs:
        raise FootprintIndexError(
            f"{cube}: the footprint index covers {indexed} of {n_obs} observations; rebuild it with `{hint}`"
        )
    cols = [group[name][:].astype(np.int64) for name in FIELDS]
    entries = np.stack(cols, axis=1) if len(cols[0]) else np.zeros((0, len(FIELDS)), dtype=np.int64)
    entries = entries[entries[:, 0] < n_obs]
    return FootprintIndex(grid=grid, entries=entries, n_obs=n_obs)


def _stored_obs_blocks(store, variable: str = "dem") -> dict[tuple[int, int], list[int]]:
    """``{(block_y, block_x) in the cube window: [obs, …]}`` of the shards the store holds (no pixel read)."""
    from zarr.core.sync import sync

    async def keys():
        # Icechunk lists by array ("dem"), not by chunk folder; chunk keys are "dem/c/<obs>/<y>/<x>".
        return [k async for k in store.list_prefix(variable) if k.startswith(f"{variable}/c/")]

    out: dict[tuple[int, int], list[int]] = {}
    for key in sync(keys()):
        parts = key.split("/")[2:]
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            continue
        obs, by, bx = (int(p) for p in parts)
        out.setdefault((by, bx), []).append(obs)
    return out


def _block_entries(cube, *, obs: list[int], block: tuple[int, int], window: Window, grid: Grid) -> np.ndarray:
    """Footprint entries of the listed observations in one block of the cube (reads their DEM shards)."""
    from rtsflow.io.cube import cube_store
    from rtsflow.kernels.footprint import tile_valid_counts

    dem = _root(cube_store(cube))["dem"]
    b = grid.block_size
    ys, xs = slice(block[0] * b, (block[0] + 1) * b), slice(block[1] * b, (block[1] + 1) * b)
    rows = []
    for i in sorted(obs):
        counts = tile_valid_counts(dem[i, ys, xs], row=window.row + ys.start, col=window.col + xs.start,
                                   tile=grid.tile_size)  # fmt: skip
        rows.append(np.column_stack([np.full(len(counts), i), counts]))
    return np.concatenate(rows) if rows else np.zeros((0, len(FIELDS)), dtype=np.int64)


def footprint_entries(cube, *, grid: Grid, window: Window, n_obs: int, scheduler=None) -> np.ndarray:
    """The footprint entries of observations ``< n_obs`` of a cube version, from its stored DEM shards.

    Only shards the store holds are read (one task per block, on the active Dask scheduler).
    """
    import dask

    from rtsflow.io.cube import cube_store

    todo = {blk: [i for i in obs if i < n_obs] for blk, obs in _stored_obs_blocks(cube_store(cube)).items()}
    tasks = [dask.delayed(_block_entries)(cube, obs=obs, block=blk, window=window, grid=grid)
             for blk, obs in sorted(todo.items()) if obs]  # fmt: skip
    parts = dask.compute(*tasks, scheduler=scheduler) if tasks else []
    return np.concatenate(parts) if parts else np.zeros((0, len(FIELDS)), dtype=np.int64)


def build_footprints(cube: str | Path, *, grid: Grid, window: Window, n_obs: int, scheduler=None) -> int:
    """(Re)build the footprint index of a cube from its stored DEM shards, as one transaction.

    Takes the cube's lock; returns the number of entries.
    """
    from rtsflow.ingest import cube_lock
    from rtsflow.io.repo import CubeRef, head, transaction

    cube = Path(cube)
    with cube_lock(cube):
        ref = CubeRef(str(cube), head(cube))
        entries = footprint_entries(ref, grid=grid, window=window, n_obs=n_obs, scheduler=scheduler)
        with transaction(cube, command="footprints", message=f"footprint index rebuilt ({len(entries)} entries)") as tx:
            create_footprints(tx.store, n_obs=0)
            append_footprints(tx.store, entries, n_obs=n_obs)
    log.info("%s: footprint index rebuilt (%d entries, %d observations)", cube, len(entries), n_obs)
    return len(entries)
