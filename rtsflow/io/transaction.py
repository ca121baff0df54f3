"""All-or-nothing growth of a cube along ``obs``.

Before an ingest touches an existing cube, every metadata file and every
(small) obs-coordinate chunk is copied into ``<cube>/.rtsflow-pending/``; the
manifest written last marks the backup complete. A rollback shrinks the
arrays (dropping the new observations' shards) and restores those files, so
the store is byte-identical to before. A process killed mid-ingest leaves the
backup behind, and the next ingest rolls back from it.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from rtsflow.io.cube import truncate_obs
from rtsflow.io.footprints import GROUP as FOOTPRINT_GROUP

__all__ = ["PENDING_DIR", "CubeTransaction", "recover"]

log = logging.getLogger(__name__)

PENDING_DIR = ".rtsflow-pending"
_MANIFEST = "manifest.json"


def _protected_files(cube: Path) -> list[Path]:
    """Metadata documents and chunks of 1-D (obs coordinate) arrays: small, rewritten on append."""
    files = [cube / "zarr.json"]
    # Arrays of the root group and of the footprint group (nothing deeper exists).
    for meta in sorted([*cube.glob("*/zarr.json"), *cube.glob(f"{FOOTPRINT_GROUP}/*/zarr.json")]):
        if meta.relative_to(cube).parts[0] == PENDING_DIR:
            continue
        files.append(meta)
        doc = json.loads(meta.read_text())
        if doc.get("node_type") == "array" and len(doc.get("shape", [])) <= 1:
            files += [p for p in sorted((meta.parent / "c").rglob("*")) if p.is_file()]
    return files


class CubeTransaction:
    """Backup → change → commit, or rollback, of an existing cube."""

    def __init__(self, cube: str | Path) -> None:
        self.cube = Path(cube)
        self.backup = self.cube / PENDING_DIR

    def begin(self, *, n_obs: int) -> None:
        if self.backup.exists():
            raise RuntimeError(f"{self.cube}: an unfinished ingest is pending; run recover() first")
        for f in _protected_files(self.cube):
            dest = self.backup / f.relative_to(self.cube)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dest)
        (self.backup / _MANIFEST).write_text(json.dumps({"n_obs": n_obs}))

    def commit(self) -> None:
        shutil.rmtree(self.backup, ignore_errors=True)

    def rollback(self) -> None:
        manifest = self.backup / _MANIFEST
        if not manifest.exists():  # backup never completed: the cube was not touched
            shutil.rmtree(self.backup, ignore_errors=True)
            return
        n_obs = json.loads(manifest.read_text())["n_obs"]
        _drop_obs_shards(self.cube, n_obs)  # first: frees the space a full disk needs for the rest
        truncate_obs(self.cube, n_obs)  # drops chunks past n_obs
        # Coordinate chunks appended after the backup disappear; the rest is restored.
        saved = {p.relative_to(self.backup) for p in self.backup.rglob("*") if p.is_file()} - {Path(_MANIFEST)}
        for f in _protected_files(self.cube):
            if f.relative_to(self.cube) not in saved:
                f.unlink()
        for rel in saved:
            shutil.copy2(self.backup / rel, self.cube / rel)
        shutil.rmtree(self.backup)


def _drop_obs_shards(cube: Path, n_obs: int) -> None:
    """Delete the pixel shards of observations ``>= n_obs`` (``obs × y × x`` arrays, one obs per chunk)."""
    for meta in cube.glob("*/zarr.json"):
        doc = json.loads(meta.read_text())
        dims = doc.get("dimension_names") or []
        if doc.get("node_type") != "array" or len(dims) != 3 or dims[0] != "obs":
            continue
        for d in (meta.parent / "c").glob("*"):
            if d.name.isdigit() and int(d.name) >= n_obs:
                shutil.rmtree(d, ignore_errors=True)


def recover(cube: str | Path) -> bool:
    """Roll back an ingest that was killed before it committed; True if there was one."""
    tx = CubeTransaction(cube)
    if not tx.backup.exists():
        return False
    complete = (tx.backup / _MANIFEST).exists()
    tx.rollback()
    if complete:
        log.warning("%s: rolled back the observations of an interrupted ingest", cube)
    return complete
