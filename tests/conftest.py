"""Shared fixtures: paths to the real reference data and small synthetic regions."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import pytest

# Under pytest-xdist each worker gets its share of the cores for its math libraries (torch, BLAS; inherited
# by the CLI processes and Dask workers it starts): two workers each running torch on every core slow each
# other down far more than twice (OpenMP threads spin while they wait).
if _workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")):
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, str(max(1, (os.cpu_count() or 1) // _workers)))

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
#: The installed console script next to this Python, as users run it.
RTSFLOW = shutil.which("rtsflow", path=str(Path(sys.executable).parent))


def shared(*parts: str) -> Path:
    """Path into ../shared/data; the suite needs it (CI has the same layout)."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        raise FileNotFoundError(f"reference data missing: {p} (tests expect ../shared/data beside the repo)")
    return p


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Group tests for pytest-xdist's ``--dist loadgroup`` (``make test`` runs two workers).

    A module's tests stay on one worker, so its module-scoped fixtures (a region, a run) are built
    once; every test that reads the shared demo run is on one worker, so the demo runs once.
    """
    for item in items:
        group = "demo_run" if "demo_run" in getattr(item, "fixturenames", ()) else item.path.stem
        item.add_marker(pytest.mark.xdist_group(group))


def tree_digest(path: Path) -> dict[str, str]:
    """sha256 of every file under a directory, keyed by relative path."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="session")
def small_region(tmp_path_factory):
    """A 1.5 x 1.5 km synthetic region, two winters + summer, generated once per session."""
    from rtsflow.synth.generator import SynthConfig, synthesize

    out = tmp_path_factory.mktemp("region")
    config = SynthConfig(seed=3, size_km=(1.5, 1.5), winters=(2010, 2016), obs_per_winter=2, slump_density=4.0)
    return synthesize(out, config=config)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """`rtsflow demo` as the README runs it (the installed console script), once per session.

    Returns the output directory and the finished process (stdout/stderr). The demo test checks
    what a user sees; other tests read its stores (5 × 5 km region, seed 0, co-registration on).
    """
    import subprocess

    assert RTSFLOW, "the rtsflow console script is not installed next to this Python"
    out = tmp_path_factory.mktemp("demo") / "demo"
    r = subprocess.run([RTSFLOW, "demo", "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r
