"""``rtsflow cube check``: verify a cube and say what is wrong with it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

from rtsflow.io import repo as cuberepo

__all__ = ["CheckReport", "check_cube"]


@dataclass
class CheckReport:
    """Problems found (the cube is fine when there are none) and what was looked at."""

    cube: Path
    version: str = ""
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    shards_read: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        head = f"{self.cube}: " + ("OK" if self.ok else f"{len(self.problems)} problem(s)")
        head += f" (version {self.version})" if self.version else ""
        return "\n".join([head, *[f"  problem: {p}" for p in self.problems], *[f"  note: {n}" for n in self.notes]])


def check_cube(path: str | Path, *, deep: bool = False) -> CheckReport:
    """Check a cube's repository, metadata, coordinates and footprint index; ``deep`` also decodes every shard.

    Never writes. Problems are described with the array or branch at fault.
    """
    from rtsflow.io.cube import CUBE_VARIABLES, OBS_COORDS, cube_info
    from rtsflow.io.footprints import FIELDS, GROUP, INDEXED_ATTR

    path = Path(path)
    report = CheckReport(cube=path)
    try:
        repo = cuberepo.open_repo(path)
        report.version = repo.lookup_branch(cuberepo.BRANCH)
        ref = cuberepo.CubeRef(str(path), report.version)
        info = cube_info(ref)
        root = zarr.open_group(ref.store(), mode="r", zarr_format=3)
    except Exception as e:  # any failure to open is the finding
        report.problems.append(f"cannot be opened: {e}")
        return report
    stale = [b for b in repo.list_branches() if b.startswith(cuberepo.TX_PREFIX)]
    if stale:
        report.notes.append(f"{len(stale)} unfinished write(s) left by writers that are gone ({', '.join(stale)}); "
                            "they never reached the cube; `rtsflow cube check --repair` or the next write clears "
                            "them")  # fmt: skip
    n = info.n_obs
    for name in OBS_COORDS:
        if name not in root:
            report.problems.append(f"obs coordinate {name!r} is missing")
        elif root[name].shape != (n,):
            report.problems.append(f"obs coordinate {name!r} has {root[name].shape[0]} values for {n} observations")
    for name in CUBE_VARIABLES:
        if name not in root:
            report.problems.append(f"variable {name!r} is missing")
        elif root[name].shape != (n, *info.window.shape):
            report.problems.append(f"variable {name!r} has shape {root[name].shape}, expected "
                                   f"{(n, *info.window.shape)}")  # fmt: skip
    ids = list(info.product_ids)
    dups = sorted({i for i in ids if ids.count(i) > 1})
    if dups:
        report.problems.append(f"product ids present more than once: {', '.join(dups[:10])}")
    if any(len(h) != 64 for h in info.content_hashes):
        report.problems.append("some observations have no sha256 content hash")
    if GROUP not in root:
        report.notes.append(f"no footprint index (runs build it; `rtsflow cube footprints {path}`)")
    else:
        group = root[GROUP]
        indexed = int(group.attrs.get(INDEXED_ATTR, 0))
        lengths = {group[f].shape[0] for f in FIELDS if f in group}
        if len(lengths) != 1 or any(f not in group for f in FIELDS):
            report.problems.append("footprint index arrays are missing or of different lengths")
        elif indexed != n:
            report.problems.append(f"footprint index covers {indexed} of {n} observations")
        else:
            obs = group["obs"][:]
            if len(obs) and (obs.min() < 0 or obs.max() >= n):
                report.problems.append("footprint index has entries of observations the cube does not have")
            t = info.grid.tile_size
            rows, cols = group["tile_row"][:], group["tile_col"][:]
            w = info.window
            inside = (rows >= w.row // t) & (rows < w.row_stop // t) & (cols >= w.col // t) & (cols < w.col_stop // t)
            if not inside.all():
                report.problems.append(f"footprint index has {int((~inside).sum())} tile(s) outside the cube window")
    if deep:
        _read_every_shard(root, report, names=[m for m in CUBE_VARIABLES if m in root])
    return report


def _read_every_shard(root: zarr.Group, report: CheckReport, *, names: list[str]) -> None:
    """Decode every stored shard (catches missing or corrupt chunk objects)."""
    for name in names:
        arr = root[name]
        for i, ys, xs in cuberepo.shard_slices(arr):
            where = f"{name}[{i}, {ys.start}:{ys.stop}, {xs.start}:{xs.stop}]"
            try:
                values = arr[i, ys, xs]
            except Exception as e:  # what the store says is the finding
                report.problems.append(f"{where} cannot be read: {e}")
                continue
            if values.dtype.kind == "f" and np.isinf(values).any():
                report.problems.append(f"{where} holds infinite values")
            report.shards_read += 1
