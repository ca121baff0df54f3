"""A lock on a directory that works on shared cluster filesystems (no ``flock``).

The lock is a directory created with ``mkdir`` (atomic on local disks, NFS and
Lustre) holding ``owner.json``: host, pid, start time, command and a
heartbeat the owner rewrites every ``heartbeat`` seconds. A lock is stale when
its owner is on this host and its process is gone, or when its heartbeat is
older than ``stale_after`` (an owner on another node that died); a stale lock
is taken over by renaming it aside (atomic, so two takers cannot both win).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psutil

__all__ = ["DirectoryLock", "LockedError"]


class LockedError(RuntimeError):
    """The directory is locked by another live process."""


class DirectoryLock:
    """``with DirectoryLock(run_dir / ".lock"): ...``; see the module docstring."""

    def __init__(self, path: str | Path, *, what: str, heartbeat: float = 30.0, stale_after: float = 300.0) -> None:
        self.path = Path(path)
        self.what = what
        self.heartbeat, self.stale_after = heartbeat, stale_after
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.took_over: dict | None = None

    @property
    def owner_file(self) -> Path:
        return self.path / "owner.json"

    def owner(self) -> dict | None:
        """The current owner's record (``None`` if unlocked or unreadable mid-write)."""
        try:
            return json.loads(self.owner_file.read_text())
        except (OSError, ValueError):
            return None

    def _write_owner(self, started: str) -> None:
        record = {"host": socket.gethostname(), "pid": os.getpid(), "started": started,
                  "heartbeat": time.time(), "command": " ".join(sys.argv)}  # fmt: skip
        tmp = self.path / f".owner.{uuid.uuid4().hex}"
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.owner_file)

    def _stale(self, owner: dict | None) -> bool:
        if owner is None:  # mkdir done, owner.json not yet written (or a crash between): judge by age
            try:
                return time.time() - self.path.stat().st_mtime > self.stale_after
            except OSError:
                return False
        if owner.get("host") == socket.gethostname():
            try:
                proc = psutil.Process(int(owner["pid"]))
                return proc.status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return True
        return time.time() - float(owner.get("heartbeat", 0)) > self.stale_after

    def acquire(self, *, wait: float = 0.0, say=None) -> None:
        """Take the lock, or raise :class:`LockedError` naming the owner (host, pid, start time).

        ``wait``: seconds to wait for a live owner to finish first (``say`` is told once whom we wait for).
        """
        deadline = time.monotonic() + wait
        told = False
        while True:
            try:
                return self._try_acquire()
            except LockedError:
                if time.monotonic() >= deadline:
                    raise
                if say is not None and not told:
                    owner = self.owner() or {}
                    say(f"waiting for pid {owner.get('pid')} on {owner.get('host')} (since {owner.get('started')}) "
                        f"to finish with {self.what}")  # fmt: skip
                    told = True
                time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))

    def _try_acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(10):
            try:
                os.mkdir(self.path)
            except FileExistsError:
                owner = self.owner()
                if not self._stale(owner):
                    if owner is None:
                        time.sleep(0.2)  # being created right now
                        continue
                    raise LockedError(
                        f"{self.what} is in use by pid {owner['pid']} on {owner['host']} since {owner['started']} "
                        f"({owner.get('command', '?')}); lock: {self.path}. A lock whose process is gone is taken "
                        f"over automatically (on another host {self.stale_after:.0f} s after its last heartbeat)."
                    ) from None
                aside = self.path.with_name(f"{self.path.name}.stale-{uuid.uuid4().hex[:8]}")
                try:
                    os.rename(self.path, aside)  # only one taker wins
                except OSError:
                    continue
                self.took_over = owner
                _remove(aside)
                continue
            self._write_owner(datetime.now(UTC).isoformat(timespec="seconds"))
            self._thread = threading.Thread(target=self._beat, daemon=True, name="rtsflow-lock-heartbeat")
            self._thread.start()
            return
        raise LockedError(f"{self.what}: could not take the lock {self.path} (contended)")

    def _beat(self) -> None:
        started = (self.owner() or {}).get("started", "")
        while not self._stop.wait(self.heartbeat):
            try:
                self._write_owner(started)
            except OSError:
                pass

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        owner = self.owner()
        if owner and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
            _remove(self.path)

    def __enter__(self) -> DirectoryLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _remove(path: Path) -> None:
    for p in [*path.glob("*"), *path.glob(".*")]:  # owner.json and a half-written .owner.* temp file
        try:
            p.unlink()
        except OSError:
            pass
    try:
        path.rmdir()
    except OSError:
        pass
