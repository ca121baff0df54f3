"""The observation cube as an Icechunk repository: snapshots, transactions, history, rollback.

A cube is an Icechunk repository on the local (or shared cluster) filesystem
holding one Zarr v3 group. Its branch ``main`` points at the last committed
*version* (an Icechunk snapshot id); readers open a snapshot and never see a
write in progress.

A write (ingest, mask, reference DEM, footprint index) is one
:func:`transaction`:

1. the caller holds the cube's lock (:func:`rtsflow.ingest.cube_lock`), so
   writers of one cube take turns. Icechunk's local storage is not safe for
   concurrent commits, and two appends along ``obs`` cannot be rebased onto
   each other (``benchmarks/RESULTS.md``, "Icechunk for the cube");
2. the work happens on a private branch ``rtsflow-tx-<id>`` made at ``main``'s
   head: metadata in the coordinator's session, pixels in forked sessions on
   Dask workers, merged back;
3. the last commit on that branch carries the command, the files and their
   hashes; ``main`` is then moved to it with a compare-and-swap on the head it
   started from — one small file replaced, so ``main`` is either the old or the
   new version, whatever is killed when.

A failed or killed transaction leaves ``main`` as it was; its private branch
and unreferenced chunk objects are removed by the next writer (or by
``rtsflow cube check --repair``).
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import icechunk as ic

from rtsflow import __version__

__all__ = [
    "BRANCH",
    "CubeRef",
    "CubeVersion",
    "NotACubeError",
    "Transaction",
    "cleanup",
    "commit_forks",
    "has_versions",
    "head",
    "history",
    "is_plain_zarr",
    "is_repo",
    "open_repo",
    "read_store",
    "resolve_version",
    "rollback",
    "transaction",
    "zarr_store",
]  # fmt: skip

BRANCH = "main"
TX_PREFIX = "rtsflow-tx-"
ROLLBACK_PREFIX = "rtsflow-before-rollback-"
#: Commit metadata key that marks a commit users see in ``cube log`` (intermediate steps lack it).
COMMAND_KEY = "rtsflow_command"

# Icechunk warns on every open of local storage that it is not safe for concurrent commits; rtsflow serialises
# commits with its own lock (module docstring), so the warning would only alarm users. ICECHUNK_LOG overrides.
if "ICECHUNK_LOG" not in os.environ:
    ic.set_logs_filter("icechunk=error")


class NotACubeError(ValueError):
    """The path is not an rtsflow cube (or is one of an older layout)."""


def is_repo(path: str | Path) -> bool:
    """Whether ``path`` is an Icechunk repository."""
    p = Path(path)
    return (p / "refs").is_dir() and (p / "snapshots").is_dir()


def is_plain_zarr(path: str | Path) -> bool:
    """Whether ``path`` is a plain Zarr store (a cube of rtsflow ≤ 0.2, before Icechunk)."""
    return (Path(path) / "zarr.json").is_file()


def _storage(path: str | Path) -> ic.Storage:
    return ic.local_filesystem_storage(str(Path(path).absolute()))


def open_repo(path: str | Path) -> ic.Repository:
    """Open the cube's repository.

    Raises
    ------
    NotACubeError
        If ``path`` is missing, a plain Zarr cube (names the migration command) or something else.
    """
    p = Path(path)
    if is_repo(p):
        return ic.Repository.open(_storage(p))
    if is_plain_zarr(p):
        raise NotACubeError(f"{p}: a cube of an older rtsflow (plain Zarr, without history); convert it with "
                            f"`rtsflow cube migrate {p}` (lossless, checked value by value)")  # fmt: skip
    if not p.exists():
        raise NotACubeError(f"{p}: no such cube")
    raise NotACubeError(f"{p}: not an rtsflow cube (no Icechunk repository there)")


@dataclass(frozen=True)
class CubeRef:
    """A cube at one version: what stage tasks receive (small, picklable) so every task reads the same snapshot."""

    path: str
    version: str

    def store(self) -> ic.IcechunkStore:
        return read_store(self.path, version=self.version)

    def __str__(self) -> str:
        return f"{self.path}@{self.version}"


def has_versions(path: str | Path) -> bool:
    """Whether the repository at ``path`` has a committed cube version (a killed first ingest leaves none)."""
    return any(COMMAND_KEY in (s.metadata or {}) for s in open_repo(path).ancestry(branch=BRANCH))


def head(path: str | Path) -> str:
    """The snapshot id ``main`` points at: the cube's current version."""
    return open_repo(path).lookup_branch(BRANCH)


def shard_slices(arr) -> Iterator[tuple[int, slice, slice]]:
    """``(obs, rows, cols)`` of every shard of an ``obs × y × x`` array (what check and migrate read one at a time)."""
    sy, sx = (arr.shards or arr.chunks)[1:]
    for i in range(arr.shape[0]):
        for y0 in range(0, arr.shape[1], sy):
            for x0 in range(0, arr.shape[2], sx):
                yield i, slice(y0, y0 + sy), slice(x0, x0 + sx)


def zarr_store(path: str | Path):
    """What ``zarr``/``xarray`` should open for reading any rtsflow store: a repository's current
    version (cube, stage stores), or the path of a plain Zarr store (outputs of the lazy API)."""
    return read_store(path) if is_repo(path) else str(path)


def commit_forks(path: str | Path, forks: list, *, message: str, metadata: dict[str, Any] | None = None) -> str:
    """Merge forked sessions (block writes of Dask tasks) into ``main`` as one commit; returns the version.

    For stage stores, written by one run at a time (the run directory's lock).
    """
    repo = open_repo(path)
    session = repo.writable_session(BRANCH)
    session.merge(*forks)
    return session.commit(message, metadata={COMMAND_KEY: "stage", **(metadata or {})})


def read_store(path: str | Path, *, version: str | None = None) -> ic.IcechunkStore:
    """A read-only Zarr store of the cube at ``version`` (default: the current version)."""
    repo = open_repo(path)
    if version is None:
        return repo.readonly_session(branch=BRANCH).store
    return repo.readonly_session(snapshot_id=version).store


class Transaction:
    """One write to a cube; see :func:`transaction`."""

    def __init__(self, repo: ic.Repository, branch: str, base: str) -> None:
        self.repo, self.branch, self.base = repo, branch, base
        self.session = repo.writable_session(branch)
        self.steps = 0
        #: Recorded in the final commit (files, hashes); shown by ``rtsflow cube log``.
        self.metadata: dict[str, Any] = {}

    @property
    def store(self) -> ic.IcechunkStore:
        """The coordinator's writable store (metadata, small arrays)."""
        return self.session.store

    def checkpoint(self, message: str) -> None:
        """Commit what the coordinator wrote so far on the private branch (needed before :meth:`fork`)."""
        if self.session.has_uncommitted_changes:
            self.session.commit(message, metadata={"rtsflow_step": message})
            self.steps += 1
        self.session = self.repo.writable_session(self.branch)

    def fork(self) -> ic.ForkSession:
        """A session for one Dask task's writes (return it from the task; pass them all to :meth:`merge`)."""
        return self.session.fork()

    def merge(self, forks: list[ic.ForkSession]) -> None:
        if forks:
            self.session.merge(*forks)

    @property
    def changed(self) -> bool:
        return self.steps > 0 or self.session.has_uncommitted_changes


def _who() -> dict[str, Any]:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        user = ""
    return {"user": user, "host": socket.gethostname(), "pid": os.getpid(), "argv": " ".join(sys.argv),
            "rtsflow_version": __version__}  # fmt: skip


@contextmanager
def transaction(path: str | Path, *, command: str, message: str, create: bool = False) -> Iterator[Transaction]:
    """Write to a cube all-or-nothing; the caller holds the cube's lock.

    Parameters
    ----------
    path
        The cube.
    command
        What is writing (``ingest``, ``mask``, ``reference``, ``footprints``, ``migrate``); shown by ``cube log``.
    message
        The commit message (what was done, for ``cube log``).
    create
        Create the repository (a new cube). If the transaction fails, the directory is removed again.

    Yields
    ------
    Transaction
        Write through ``tx.store``; add ``tx.metadata`` entries (files, hashes) before the block ends.

    Notes
    -----
    Nothing is committed to ``main`` unless the block finishes without an error and wrote something.
    """
    p = Path(path)
    if create:
        if is_repo(p) and not has_versions(p):
            shutil.rmtree(p)  # what a first write killed before its commit left: no version, nothing to keep
        if p.exists() and any(p.iterdir()):
            raise NotACubeError(f"{p}: exists and is not an rtsflow cube; refusing to overwrite it")
        repo = ic.Repository.create(_storage(p))
    else:
        repo = open_repo(p)
        cleanup(p, repo=repo)  # cheap when a caller (ingest, to report it) has cleared already
    base = repo.lookup_branch(BRANCH)
    branch = f"{TX_PREFIX}{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    repo.create_branch(branch, base)
    tx = Transaction(repo, branch, base)
    try:
        yield tx
        if tx.changed:
            meta = {COMMAND_KEY: command, **_who(), **tx.metadata}
            final = tx.session.commit(message, metadata=meta) if tx.session.has_uncommitted_changes else None
            final = final or repo.lookup_branch(branch)
            # Compare-and-swap: fails (and changes nothing) if main moved since this transaction began.
            repo.reset_branch(BRANCH, final, from_snapshot_id=base)
    except BaseException:
        if create:
            shutil.rmtree(p, ignore_errors=True)
        else:
            _drop_branch(repo, branch)
            _collect_garbage(repo)
        raise
    _drop_branch(repo, branch)


def _drop_branch(repo: ic.Repository, branch: str) -> None:
    try:
        repo.delete_branch(branch)
    except Exception:  # best effort: a leftover branch is removed by the next writer
        pass


def _collect_garbage(repo: ic.Repository) -> None:
    """Delete chunks, manifests and snapshots no branch or tag reaches (what a failed transaction wrote).

    Only called with the cube's lock held, so no other writer has objects in flight.
    """
    try:
        repo.garbage_collect(datetime.now(UTC) + timedelta(seconds=1))
    except Exception:  # a full disk may refuse even this; the objects are unreachable anyway
        pass


def cleanup(path: str | Path, *, repo: ic.Repository | None = None) -> list[str]:
    """Remove what dead writers left (private branches, unreferenced objects); returns the branches removed.

    Callers hold the cube's lock.
    """
    repo = repo or open_repo(path)
    stale = sorted(b for b in repo.list_branches() if b.startswith(TX_PREFIX))
    for b in stale:
        _drop_branch(repo, b)
    if stale:
        _collect_garbage(repo)
    return stale


@dataclass(frozen=True)
class CubeVersion:
    """One entry of a cube's history (``rtsflow cube log``)."""

    version: str
    time: datetime
    message: str
    metadata: dict[str, Any]

    @property
    def command(self) -> str:
        return str(self.metadata.get(COMMAND_KEY, ""))


def history(path: str | Path, *, tag: str | None = None) -> list[CubeVersion]:
    """The cube's versions, newest first: every commit an rtsflow command made to ``main`` (or behind ``tag``)."""
    repo = open_repo(path)
    where = {"tag": tag} if tag else {"branch": BRANCH}
    return [CubeVersion(s.id, s.written_at, s.message, dict(s.metadata or {}))
            for s in repo.ancestry(**where) if COMMAND_KEY in (s.metadata or {})]  # fmt: skip


def resolve_version(path: str | Path, version: str) -> str:
    """The full id of a version given as a unique prefix (at least 4 characters) of one in :func:`history`.

    Raises
    ------
    ValueError
        Naming the cube and listing what matched (or that nothing did).
    """
    versions = [v.version for v in history(path)]
    for tag in tagged_versions(path):  # versions a rollback stepped back from
        versions += [v.version for v in history(path, tag=tag) if v.version not in versions]
    if version in versions:
        return version
    hits = [v for v in dict.fromkeys(versions) if len(version) >= 4 and v.startswith(version.upper())]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise ValueError(f"{path}: no version {version!r} in its history (`rtsflow cube log {path}` lists them)")
    raise ValueError(f"{path}: version {version!r} is ambiguous ({', '.join(hits)}); give more characters")


def rollback(path: str | Path, *, version: str) -> tuple[str, str]:
    """Make ``version`` the cube's current version again; the caller holds the cube's lock.

    Nothing is deleted: the version rolled back from is kept under a tag
    (``rtsflow-before-rollback-<time>``), so a rollback can itself be undone
    with ``rollback(path, version=<that version>)``. Returns ``(old head, tag)``.
    """
    repo = open_repo(path)
    target = resolve_version(path, version)
    old = repo.lookup_branch(BRANCH)
    tag = f"{ROLLBACK_PREFIX}{datetime.now(UTC):%Y%m%dT%H%M%S}-{old[:8]}"
    repo.create_tag(tag, old)
    repo.reset_branch(BRANCH, target, from_snapshot_id=old)
    return old, tag


def tagged_versions(path: str | Path) -> dict[str, str]:
    """``{tag: version}`` of the versions kept by rollbacks (still reachable, listed by ``cube log --all``)."""
    repo = open_repo(path)
    return {t: repo.lookup_tag(t) for t in sorted(repo.list_tags()) if t.startswith(ROLLBACK_PREFIX)}
