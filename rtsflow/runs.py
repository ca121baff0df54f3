"""Run directories that survive: resolved config, software versions, and a per-block status table.

The status table (``status.csv``) has one row per (stage, key, block) — the
key is the epoch or pair the stage works on — with ``status`` (done / failed /
skipped / blocked), the error of a failed block (or the input a blocked one
waits for), valid pixels written, seconds, the worker, the session (1 for the
first invocation, 2 for the next, …) that wrote the row and when. Rows are
appended as blocks finish (one line each, so a pan-Arctic run does not rewrite
a large table per block) and the table is compacted to the latest row per
block at the end of each stage; a killed run loses at most the blocks in
flight. Re-running skips blocks that are done (or skipped) and redoes failed,
blocked and missing ones.
"""

from __future__ import annotations

import json
import os
import platform
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import yaml

from rtsflow import __version__

__all__ = ["STATUS_COLUMNS", "RunDirectory", "software_versions"]

STATUS_COLUMNS = ["stage", "key", "block", "status", "error", "n_valid", "seconds", "worker", "session", "finished_at"]
_ROW_ID = ["stage", "key", "block"]


def software_versions() -> dict[str, str]:
    import dask
    import distributed
    import numpy
    import xarray
    import zarr

    out = {
        "rtsflow": __version__,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "dask": dask.__version__,
        "distributed": distributed.__version__,
        "xarray": xarray.__version__,
        "zarr": zarr.__version__,
    }
    try:
        import segmentation_models_pytorch as smp
        import torch

        out.update(torch=torch.__version__, segmentation_models_pytorch=smp.__version__)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    try:
        import xdem

        out["xdem"] = xdem.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


@dataclass
class RunDirectory:
    """A run's folder: ``config.yaml``, ``versions.json``, ``status.csv``, ``timings.csv`` and the outputs."""

    path: Path

    def __post_init__(self):
        self.path = Path(self.path)
        self._lock = threading.Lock()

    @property
    def status_path(self) -> Path:
        return self.path / "status.csv"

    def start(self, config: dict, *, force: bool = False) -> int:
        """Create or reopen the directory; write the resolved config and versions. Returns the session number."""
        self.path.mkdir(parents=True, exist_ok=True)
        cfg_path = self.path / "config.yaml"
        if cfg_path.exists() and not force:
            old = yaml.safe_load(cfg_path.read_text())
            # The run directory's own path may change (a moved or copied run resumes).
            changed = sorted(k for k in set(old) | set(config) if k != "output" and old.get(k) != config.get(k))
            if changed:
                raise ValueError(
                    f"{self.path}: this run directory holds a run with a different configuration "
                    f"(changed: {', '.join(changed)}); use --force to recompute or another output"
                )
        if force and self.status_path.exists():
            self.status_path.unlink()
        _atomic_write(cfg_path, yaml.safe_dump(config, sort_keys=False))
        _atomic_write(self.path / "versions.json", json.dumps(software_versions(), indent=2) + "\n")
        status = self.status()
        self.session = int(status.session.max()) + 1 if len(status) else 1
        return self.session

    def status(self) -> pd.DataFrame:
        """The status table: the latest row of every (stage, key, block)."""
        if not self.status_path.exists():
            return pd.DataFrame({c: pd.Series(dtype=object) for c in STATUS_COLUMNS})
        s = pd.read_csv(self.status_path, dtype={"key": str, "block": str, "error": str, "worker": str},
                        keep_default_na=False)  # fmt: skip
        if "key" not in s and "pair" in s:  # a run directory of rtsflow <= 0.1 (per-pair stages only)
            s = s.rename(columns={"pair": "key"}).assign(worker="")[STATUS_COLUMNS]
        return s.drop_duplicates(_ROW_ID, keep="last").reset_index(drop=True)

    def done(self, stage: str, key: str) -> dict[str, str]:
        """Blocks of a stage that need no work: ``{block: status}`` for done and skipped rows."""
        s = self.status()
        s = s[(s.stage == stage) & (s.key == key) & s.status.isin(["done", "skipped"])]
        return dict(zip(s.block, s.status, strict=True))

    def record(
        self,
        *,
        stage: str,
        key: str,
        block: str,
        status: str,
        seconds: float,
        error: str = "",
        n_valid: int | None = None,
        worker: str = "",
    ) -> None:
        """Append the row of (stage, key, block); it replaces earlier rows of the same block."""
        row = {
            "stage": stage,
            "key": key,
            "block": block,
            "status": status,
            "error": " ".join(error.split())[:500],
            "n_valid": "" if n_valid is None else int(n_valid),
            "seconds": round(seconds, 3),
            "worker": worker,
            "session": self.session,
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        line = pd.DataFrame([row])[STATUS_COLUMNS].to_csv(index=False, header=False)
        with self._lock:
            new = not self.status_path.exists()
            with open(self.status_path, "a") as f:
                if new:
                    f.write(",".join(STATUS_COLUMNS) + "\n")
                f.write(line)

    def compact(self) -> None:
        """Rewrite the status table with the latest row per block only (atomically)."""
        with self._lock:
            if self.status_path.exists():
                _atomic_write(self.status_path, self.status()[STATUS_COLUMNS].to_csv(index=False))

    def timing(self, stage: str, seconds: float) -> None:
        """Append a stage's wall time to ``timings.csv``."""
        with self._lock:
            path = self.path / "timings.csv"
            new = not path.exists()
            with open(path, "a") as f:
                if new:
                    f.write("session,stage,seconds\n")
                f.write(f"{self.session},{stage},{seconds:.3f}\n")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
