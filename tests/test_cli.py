"""The command line, run as users run it (the installed console script)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

RTSFLOW = shutil.which("rtsflow", path=str(Path(sys.executable).parent))


def run(*args, cwd=None):
    assert RTSFLOW, "the rtsflow console script is not installed next to this Python"
    return subprocess.run([RTSFLOW, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_help_lists_commands():
    r = run("--help")
    assert r.returncode == 0
    for cmd in ("synth", "ingest", "sidecar", "info", "demo"):
        assert cmd in r.stdout


def test_synth_ingest_info(tmp_path):
    r = run(
        "synth",
        str(tmp_path / "region"),
        "--size-km",
        "1",
        "1",
        "--winters",
        "2010,2016",
        "--obs-per-winter",
        "1",
        "--no-summer",
        "--seed",
        "7",
    )
    assert r.returncode == 0, r.stderr
    products = sorted((tmp_path / "region" / "products").glob("*.json"))
    assert len(products) == 2
    r = run("ingest", *map(str, products), "--cube", str(tmp_path / "cube.zarr"), "--workers", "1")
    assert r.returncode == 0, r.stderr
    assert "added 2 observation(s)" in r.stdout
    r = run("info", str(tmp_path / "cube.zarr"))
    assert r.returncode == 0, r.stderr
    assert "observations: 2" in r.stdout and "EPSG:3413" in r.stdout


def test_synth_rejects_bad_winters(tmp_path):
    r = run("synth", str(tmp_path / "x"), "--winters", "2010,soon")
    assert r.returncode == 2 and "--winters" in r.stderr


@pytest.mark.slow
def test_demo_runs_end_to_end_and_is_resumable(tmp_path):
    r = run("demo", "--out", str(tmp_path / "demo"), "--size-km", "1.5")
    assert r.returncode == 0, r.stderr
    assert "observations: 12" in r.stdout
    assert "ingest: 12 added" in r.stdout
    assert "features 2010→2016" in r.stdout and "co-registration block" in r.stdout
    # A second run reuses the region and skips every product already in the cube.
    r = run("demo", "--out", str(tmp_path / "demo"), "--size-km", "1.5")
    assert r.returncode == 0, r.stderr
    assert "ingest: 0 added, 12 already present" in r.stdout
