"""Fault matrix of the cube store: kill -9 at every stage of an ingest, concurrent ingests, history, check.

Every case ends with the same two questions: does the cube open holding exactly
its last committed products, and does re-running the command reach the result
of a plain sequential ingest, value for value? (Table: benchmarks/RESULTS.md,
"Cube store fault matrix".)
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from rtsflow.cli import main
from rtsflow.ingest import ingest
from rtsflow.io.check import check_cube
from rtsflow.io.cube import CUBE_VARIABLES, OBS_COORDS, cube_info, open_cube
from rtsflow.io.footprints import read_footprints
from rtsflow.io.repo import head, history, open_repo

from .test_ingest import BLOCK_A, BLOCK_B, GRID, make_product

RTSFLOW = str(Path(sys.executable).parent / "rtsflow")


def content(cube: Path) -> dict:
    """Everything a cube holds, keyed by product id (independent of the order products landed in)."""
    ds = open_cube(cube, sort_by_time=False)
    ids = [str(v) for v in ds.product_id.values]
    assert len(set(ids)) == len(ids), f"a product is present twice: {ids}"
    out = {"window": cube_info(cube).window}
    for i, pid in enumerate(ids):
        out[pid] = {name: ds[name].isel(obs=i).values for name in CUBE_VARIABLES}
        out[pid] |= {name: str(ds[name].values[i]) for name in OBS_COORDS if name != "source"}
    entries = read_footprints(cube, grid=GRID, n_obs=len(ids)).entries
    out["footprints"] = sorted((ids[o], r, c, n) for o, r, c, n in entries.tolist())
    return out


def assert_same_content(a: dict, b: dict) -> None:
    assert a.keys() == b.keys(), (sorted(map(str, a)), sorted(map(str, b)))
    assert a["window"] == b["window"] and a["footprints"] == b["footprints"]
    for pid in a.keys() - {"window", "footprints"}:
        for name, v in a[pid].items():
            if isinstance(v, np.ndarray):
                np.testing.assert_array_equal(v, b[pid][name], err_msg=f"{pid} {name}")
            else:
                assert v == b[pid][name], (pid, name)


@pytest.fixture(scope="module")
def products(tmp_path_factory):
    """Five small products: 'a' in block A; 'b', 'c', 'd', 'e' in blocks A and B (disjoint ids and times)."""
    root = tmp_path_factory.mktemp("faultproducts")
    out = {"a": make_product(root, "a")}
    for k, pid in enumerate("bcde"):
        out[pid] = make_product(root, pid, block=BLOCK_B if k % 2 else BLOCK_A, offset=(50 + 40 * k, 60),
                                seed=10 + k, acquired=f"2013-0{k + 1}-15T10:00:00Z")  # fmt: skip
    return out


@pytest.fixture(scope="module")
def sequential(products, tmp_path_factory):
    """The reference: 'a', then each other product, ingested one call after another."""
    root = tmp_path_factory.mktemp("sequential")
    region = BLOCK_A.union(BLOCK_B)
    refs = {}
    for n in (2, 3, 5):
        cube = root / f"seq{n}.zarr"
        for pid in "abcde"[:n]:
            ingest([products[pid]], cube=cube, region=region, scheduler="sync")
        refs[n] = content(cube)
    return refs


# -- kill -9 at each step of an ingest --------------------------------------------------------------

# The child ingests with the sync scheduler and kills itself (SIGKILL: no cleanup, no finally) right after
# the named step; the functions patched are rtsflow's and Icechunk's own, the code under test is unchanged.
CHILD = textwrap.dedent("""
    import os, signal, sys
    import icechunk as ic
    from rtsflow import ingest as ing
    from rtsflow.io import cube as cubeio, repo

    point, cube, *products = sys.argv[1:]

    def kill_after(owner, name, nth=1):
        real, calls = getattr(owner, name), [0]
        def wrapper(*args, **kwargs):
            out = real(*args, **kwargs)
            calls[0] += 1
            if calls[0] >= nth:
                os.kill(os.getpid(), signal.SIGKILL)
            return out
        setattr(owner, name, wrapper)

    if point == "checked":      # products checked, lock held, nothing written yet
        kill_after(ing, "_obs_coords")
    elif point == "metadata":   # new observations' metadata committed on the private branch, no pixel yet
        kill_after(repo.Transaction, "checkpoint")
    elif point == "pixels":     # during the pixel writes: the first block written, others not
        kill_after(cubeio, "write_block")
    elif point == "merged":     # every pixel written and merged, footprint index and commit not yet
        kill_after(repo.Transaction, "merge")
    elif point == "commit":     # final commit made on the private branch; main not moved yet
        kill_after(ic.Session, "commit", nth=2)
    elif point == "moved":      # main moved to the new version; private branch not yet removed
        kill_after(ic.Repository, "reset_branch")
    ing.ingest(products, cube=cube, region=ing.Window(*map(int, os.environ["REGION"].split(","))),
               scheduler="sync")
    print("finished without being killed")
""")

KILL_POINTS = ["checked", "metadata", "pixels", "merged", "commit", "moved"]


def _child(point: str, cube: Path, products: list[Path]) -> subprocess.CompletedProcess:
    region = BLOCK_A.union(BLOCK_B)
    env = {**__import__("os").environ, "REGION": f"{region.row},{region.col},{region.height},{region.width}"}
    return subprocess.run([sys.executable, "-c", CHILD, point, str(cube), *map(str, products)], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill_9_during_ingest_leaves_last_version_and_rerun_completes(point, products, sequential, tmp_path):
    cube = tmp_path / "cube.zarr"
    ingest([products["a"]], cube=cube, region=BLOCK_A.union(BLOCK_B), scheduler="sync")
    v1 = head(cube)
    r = _child(point, cube, [products["b"], products["c"]])
    assert r.returncode == -9, (r.returncode, r.stdout, r.stderr[-2000:])
    # The cube opens and holds exactly the last committed products.
    committed = ["a", "b", "c"] if point == "moved" else ["a"]
    assert list(open_cube(cube, sort_by_time=False).product_id.values) == committed
    assert (head(cube) == v1) == (point != "moved")
    assert check_cube(cube, deep=True).ok, str(check_cube(cube))
    # The same command again (it takes over the dead writer's lock) reaches the sequential result.
    ingest([products["b"], products["c"]], cube=cube, scheduler="sync")
    assert_same_content(content(cube), sequential[3])
    report = check_cube(cube, deep=True)
    assert report.ok and not report.notes, str(report)  # the dead writer's leftovers are gone
    assert not [b for b in open_repo(cube).list_branches() if b != "main"]


def test_kill_9_during_the_first_ingest_of_a_new_cube(products, sequential, tmp_path):
    cube = tmp_path / "cube.zarr"
    r = _child("pixels", cube, [products["a"], products["b"]])
    assert r.returncode == -9, r.stderr[-2000:]
    r = CliRunner().invoke(main, ["info", str(cube)])
    assert r.exit_code == 2 and "no committed version" in r.output, r.output
    for pid in "ab":
        ingest([products[pid]], cube=cube, region=BLOCK_A.union(BLOCK_B), scheduler="sync")
    assert_same_content(content(cube), sequential[2])


# -- concurrent ingest processes ---------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 4])
def test_concurrent_ingest_processes_equal_a_sequential_ingest(n, products, sequential, tmp_path):
    cube = tmp_path / "cube.zarr"
    ingest([products["a"]], cube=cube, region=BLOCK_A.union(BLOCK_B), scheduler="sync")
    others = list("bcde")[:n]
    procs = [subprocess.Popen([RTSFLOW, "ingest", str(products[pid]), "--cube", str(cube), "--workers", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for pid in others]  # fmt: skip
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
    got = content(cube)
    if n == 4:
        assert_same_content(got, sequential[5])
    else:  # b and c: the same products as the three-product reference
        assert_same_content(got, sequential[3])
    # One version per ingest, each naming its product and hash.
    log = history(cube)
    assert len(log) == n + 1 and sorted(p["id"] for v in log[:n] for p in v.metadata["products"]) == others
    assert not (tmp_path / ".cube.zarr.lock").exists()


def test_concurrent_first_ingests_create_the_cube_once(products, tmp_path):
    cube = tmp_path / "new.zarr"
    procs = [subprocess.Popen([RTSFLOW, "ingest", str(products[pid]), "--cube", str(cube), "--workers", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for pid in "ab"]  # fmt: skip
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
    assert sorted(open_cube(cube).product_id.values) == ["a", "b"]
    assert check_cube(cube, deep=True).ok


# -- history: log, rollback, runs reading one version ---------------------------------------------


def test_log_lists_each_ingest_and_rollback_restores_a_version_losslessly(products, sequential, tmp_path):
    cube = tmp_path / "cube.zarr"
    region = BLOCK_A.union(BLOCK_B)
    ingest([products["a"]], cube=cube, region=region, scheduler="sync")
    ingest([products["b"]], cube=cube, scheduler="sync")
    v2 = head(cube)
    ingest([products["c"]], cube=cube, scheduler="sync")
    v3 = head(cube)
    r = CliRunner().invoke(main, ["cube", "log", str(cube)])
    assert r.exit_code == 0, r.output
    for pid in "abc":
        assert f"+ {pid}  sha256 " in r.output and str(products[pid]) in r.output, r.output
    assert r.output.count("version ") == 3 and "(current)" in r.output.splitlines()[0]
    # Roll back to the version with a and b (by a prefix), then forward again: nothing is lost on the way.
    r = CliRunner().invoke(main, ["cube", "rollback", str(cube), v2[:8]])
    assert r.exit_code == 0 and f"now at version {v2}" in r.output, r.output
    assert_same_content(content(cube), sequential[2])
    assert v3 in CliRunner().invoke(main, ["cube", "log", str(cube)]).output  # kept by the rollback
    r = CliRunner().invoke(main, ["cube", "rollback", str(cube), v3])
    assert r.exit_code == 0, r.output
    assert_same_content(content(cube), sequential[3])
    r = CliRunner().invoke(main, ["cube", "rollback", str(cube), "ZZZZZZ"])
    assert r.exit_code == 2 and "no version 'ZZZZZZ'" in r.output, r.output


def test_cube_check_names_what_is_wrong(products, tmp_path):
    import shutil

    cube = tmp_path / "cube.zarr"
    ingest([products["a"]], cube=cube, scheduler="sync")
    r = CliRunner().invoke(main, ["cube", "check", str(cube), "--deep"])
    assert r.exit_code == 0 and ": OK (version" in r.output, r.output
    # A chunk object lost on disk (a broken copy, a bad sector): the deep check names the shard.
    chunks = sorted((cube / "chunks").iterdir(), key=lambda p: p.stat().st_size)
    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(cube, damaged)
    (damaged / "chunks" / chunks[-1].name).unlink()
    r = CliRunner().invoke(main, ["cube", "check", str(damaged), "--deep"])
    assert r.exit_code == 1 and "cannot be read" in r.output, r.output
    # Not a cube at all.
    (tmp_path / "empty").mkdir()
    r = CliRunner().invoke(main, ["cube", "check", str(tmp_path / "empty")])
    assert r.exit_code == 1 and "cannot be opened" in r.output, r.output
