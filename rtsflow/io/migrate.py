"""Convert cubes of older rtsflow (plain Zarr v3 stores) into Icechunk repositories, losslessly.

rtsflow ≤ 0.2 kept a cube as a plain Zarr store guarded by a pending-backup
log; since 0.3 a cube is an Icechunk repository (:mod:`rtsflow.io.repo`). The
conversion:

1. copies every metadata document and every stored chunk (shard) byte for byte
   into a new repository beside the cube, leaving out observations an
   interrupted old ingest had not committed (``rtsflow_committed_obs``);
2. rewrites fixed-length UTF-32 text coordinates (a Zarr data type without a
   specification) as variable-length strings;
3. commits, then compares every array of the new cube with the old one value
   by value (pixels one shard at a time);
4. only then swaps the directories; the old store is kept beside the cube
   (``<name>.plain-zarr-<time>``) until the user deletes it.

A failure at any step removes the new repository and leaves the old cube as it was.
"""

from __future__ import annotations

import json
import shutil
import uuid
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.errors import UnstableSpecificationWarning
from zarr.storage import LocalStore

from rtsflow.io import repo as cuberepo
from rtsflow.io.cube import COMMITTED_ATTR
from rtsflow.io.footprints import FIELDS, GROUP, INDEXED_ATTR

__all__ = ["MigrationReport", "fixed_length_strings", "migrate_cube"]


@dataclass
class MigrationReport:
    """What :func:`migrate_cube` did."""

    cube: Path
    version: str = ""
    backup: Path | None = None
    n_obs: int = 0
    chunks_copied: int = 0
    strings_rewritten: list[str] = field(default_factory=list)
    dropped_uncommitted: int = 0
    values_checked: int = 0

    def __str__(self) -> str:
        lines = [f"{self.cube}: converted to an Icechunk repository (version {self.version})",
                 f"{self.n_obs} observation(s), {self.chunks_copied} stored chunk(s) copied byte for byte, "
                 f"{self.values_checked:,} values compared equal"]  # fmt: skip
        if self.strings_rewritten:
            lines.append(f"rewrote {', '.join(self.strings_rewritten)} as variable-length strings")
        if self.dropped_uncommitted:
            lines.append(f"left out {self.dropped_uncommitted} observation(s) of an interrupted ingest (never "
                         "committed)")  # fmt: skip
        if self.backup:
            lines.append(f"the old store is kept at {self.backup}; delete it when you are satisfied")
        return "\n".join(lines)


def fixed_length_strings(path: str | Path) -> list[str]:
    """Names of the arrays of a plain-Zarr cube that hold fixed-length (UTF-32) strings."""
    group = zarr.open_group(str(path), mode="r", zarr_format=3)
    return sorted(name for name, arr in group.arrays() if arr.dtype.kind == "U")


def _meta_keys(root: Path) -> list[str]:
    keys = (p.relative_to(root) for p in root.rglob("zarr.json"))
    return sorted(str(k) for k in keys if not any(part.startswith(".") for part in k.parts))  # not .rtsflow-pending


def _obs_first(doc: dict) -> bool:
    dims = doc.get("dimension_names") or []
    return doc.get("node_type") == "array" and bool(dims) and dims[0] == "obs"


def migrate_cube(path: str | Path, *, keep_old: bool = True) -> MigrationReport:
    """Convert the plain-Zarr cube at ``path`` into an Icechunk repository in place; see the module docstring.

    Takes the cube's lock. ``keep_old=False`` deletes the old store after the check.

    Raises
    ------
    NotACubeError
        If ``path`` is already an Icechunk cube or not a cube at all.
    RuntimeError
        If the converted cube does not read back equal (nothing is changed then).
    """
    from rtsflow.ingest import cube_lock

    path = Path(path)
    if cuberepo.is_repo(path):
        raise cuberepo.NotACubeError(f"{path}: already an Icechunk cube; nothing to migrate")
    if not cuberepo.is_plain_zarr(path):
        raise cuberepo.NotACubeError(f"{path}: not a plain-Zarr rtsflow cube")
    report = MigrationReport(cube=path)
    with cube_lock(path), warnings.catch_warnings():
        # Old stores hold our pending-ingest folder and UTF-32 text; both are handled here.
        warnings.filterwarnings("ignore", "Object at .* is not recognized as a component", UserWarning)
        warnings.filterwarnings("ignore", category=UnstableSpecificationWarning)
        old = zarr.open_group(str(path), mode="r", zarr_format=3)
        total = old["product_id"].shape[0]
        n = min(int(old.attrs.get(COMMITTED_ATTR, total)), total)
        report.n_obs, report.dropped_uncommitted = n, total - n
        tmp = path.parent / f".{path.name}.migrating-{uuid.uuid4().hex[:8]}"
        try:
            with cuberepo.transaction(tmp, command="migrate", message=f"converted from the plain-Zarr cube {path}",
                                      create=True) as tx:  # fmt: skip
                report.chunks_copied = _copy(path, tx.store, n_obs=n)
                report.strings_rewritten = _rewrite_strings(old, zarr.open_group(tx.store, mode="r+"), n_obs=n)
                _trim_footprints(zarr.open_group(tx.store, mode="r+"), n_obs=n)
                tx.metadata = {"source": str(path.absolute()), "n_obs": n, "dropped_uncommitted": total - n,
                               "chunks_copied": report.chunks_copied}  # fmt: skip
            report.values_checked = _compare(old, zarr.open_group(cuberepo.read_store(tmp), mode="r"), n_obs=n)
            report.version = cuberepo.head(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        backup = path.parent / f"{path.name}.plain-zarr-{datetime.now(UTC):%Y%m%dT%H%M%S}"
        path.rename(backup)
        tmp.rename(path)
        if keep_old:
            report.backup = backup
        else:
            shutil.rmtree(backup)
    return report


def _copy(src: Path, dest, *, n_obs: int) -> int:
    """Copy metadata and chunks byte for byte (obs-first arrays cut to ``n_obs``); returns the chunks copied."""
    proto = default_buffer_prototype()
    source = LocalStore(str(src), read_only=True)
    docs = {key: json.loads((src / key).read_text()) for key in _meta_keys(src)}
    cut = {str(Path(k).parent) for k, d in docs.items() if _obs_first(d)}

    async def run() -> int:
        copied = 0
        for key, doc in docs.items():
            if str(Path(key).parent) in cut:
                doc["shape"][0] = n_obs
            if key == "zarr.json":
                doc.get("attributes", {}).pop(COMMITTED_ATTR, None)
            await dest.set(key, proto.buffer.from_bytes(json.dumps(doc).encode()))
        async for key in source.list():
            if key.endswith("zarr.json") or any(part.startswith(".") for part in key.split("/")):
                continue
            parent, _, rest = key.partition("/c/")
            if not rest:
                continue
            if parent in cut and int(rest.split("/")[0]) >= n_obs:
                continue  # a shard of an observation the old cube never committed
            await dest.set(key, await source.get(key, prototype=proto))
            copied += 1
        return copied

    return sync(run())


def _rewrite_strings(old: zarr.Group, new: zarr.Group, *, n_obs: int) -> list[str]:
    names = []
    for name, arr in old.arrays():
        if arr.dtype.kind != "U":
            continue
        values = arr[:n_obs] if _obs_first(arr.metadata.to_dict()) else arr[...]
        del new[name]
        out = new.create_array(name, shape=values.shape, dtype=str, chunks=arr.chunks, fill_value="",
                               dimension_names=arr.metadata.dimension_names, attributes=dict(arr.attrs))  # fmt: skip
        out[...] = values.astype(object)
        names.append(name)
    return sorted(names)


def _trim_footprints(new: zarr.Group, *, n_obs: int) -> None:
    """Drop footprint entries of observations the old cube never committed."""
    if GROUP not in new:
        return
    group = new[GROUP]
    obs = group["obs"][:]
    keep = obs < n_obs
    if not keep.all():
        data = {name: group[name][:][keep] for name in FIELDS}
        for name in FIELDS:
            group[name].resize((int(keep.sum()),))
            group[name][...] = data[name]
    group.attrs[INDEXED_ATTR] = min(int(group.attrs.get(INDEXED_ATTR, 0)), n_obs)


def _equal(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype.kind in "UOT" or b.dtype.kind in "UOT":
        return a.shape == b.shape and [str(v) for v in a.ravel()] == [str(v) for v in b.ravel()]
    return a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


def _compare(old: zarr.Group, new: zarr.Group, *, n_obs: int, prefix: str = "") -> int:
    """Compare every array value by value (obs-first arrays per observation and shard); returns values compared."""
    checked = 0
    for name, arr in old.arrays():
        where = f"{prefix}{name}"
        other = new[name]
        if name in FIELDS and prefix == f"{GROUP}/":
            keep = old["obs"][:] < n_obs
            a, b = arr[:][keep], other[...]
            if not _equal(a, b):
                raise RuntimeError(f"{where}: the converted values differ; the cube is unchanged")
            checked += a.size
            continue
        obs_first = _obs_first(arr.metadata.to_dict())
        if obs_first and arr.ndim == 3:
            for i, ys, xs in cuberepo.shard_slices(other):  # the new array: cut to the committed observations
                a = arr[i, ys, xs]
                if not _equal(a, other[i, ys, xs]):
                    raise RuntimeError(f"{where}[{i}, {ys.start}:, {xs.start}:]: the converted values differ; "
                                       "the cube is unchanged")  # fmt: skip
                checked += a.size
            continue
        a = arr[:n_obs] if obs_first else arr[...]
        if not _equal(a, other[...]):
            raise RuntimeError(f"{where}: the converted values differ; the cube is unchanged")
        if dict(arr.attrs) != dict(other.attrs):
            raise RuntimeError(f"{where}: the converted attributes differ; the cube is unchanged")
        checked += a.size
    for name, sub in old.groups():
        checked += _compare(sub, new[name], n_obs=n_obs, prefix=f"{prefix}{name}/")
    return checked
