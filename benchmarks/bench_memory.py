"""Worker memory of the DEM stages: peak RSS per worker and spill on disk vs observations per epoch.

Builds a cube directly with the cube API (:func:`rtsflow.synth.patches.patch_cube`:
real Zarr shards and footprint index, no GeoTIFFs): a region of ``--blocks``²
grid blocks of ``--block`` px, two winters with ``--obs`` observations each.
Every observation covers a random patch of ``--cover``² blocks of analytic
terrain, shifted by up to 1.5 px and tilted, with coherence-scaled noise; the
reference DEM is the unshifted terrain. It then runs the block-wise stages with co-registration on
(per-observation fits to the reference, streaming composites, pair fit,
features) on a 2-worker LocalCluster and samples every worker's RSS (psutil,
every 0.1 s) and the size of the spill directory.

The baseline, in the same process on the same cube and cluster
(``--baseline``): the previous code path, the lazy ``pair_features`` graph
written with ``write_features``.

Usage::

    python benchmarks/bench_memory.py --block 1024 --blocks 4 --obs 8 40
    python benchmarks/bench_memory.py --block 4096 --blocks 2 --cover 2 --obs 8
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import psutil
from common import print_header

from rtsflow.grid import Grid
from rtsflow.synth.patches import patch_cube


class Sampler:
    """Peak RSS of each worker process (and its children) and peak size of a directory, sampled in a thread."""

    def __init__(self, pids: list[int], directory: Path, every: float = 0.1) -> None:
        self.procs = [psutil.Process(p) for p in pids]
        self.directory, self.every = directory, every
        self.peak_rss = {p.pid: 0 for p in self.procs}
        self.peak_disk = 0
        self.series: list[tuple[float, int]] = []  # (time, largest worker RSS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = 0
            for p in self.procs:
                try:
                    rss = p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))
                except psutil.Error:
                    continue
                self.peak_rss[p.pid] = max(self.peak_rss[p.pid], rss)
                now = max(now, rss)
            self.series.append((time.time(), now))
            self.peak_disk = max(self.peak_disk, _du(self.directory))
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _du(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def run_stages(cube: Path, out: Path, client) -> float:
    from pipelines.region import run_region
    from rtsflow.config import parse_config

    config = parse_config({"cube": str(cube), "pairs": [[2010, 2016]], "output": str(out),
                           "water": None, "reference": "reference_dem", "coregister": True})  # fmt: skip
    t0 = time.perf_counter()
    run_region(config, client=client, progress=False, upto="features")
    return time.perf_counter() - t0


def run_baseline(cube: Path, out: Path, client) -> float:
    from rtsflow.graph.features import pair_features
    from rtsflow.io.cube import cube_info, open_cube
    from rtsflow.io.features import write_features

    t0 = time.perf_counter()
    ds = open_cube(cube)
    grid = cube_info(cube).grid
    feats, sel = pair_features(ds, grid=grid, earlier=2010, later=2016, reference=ds["reference_dem"])
    write_features(feats, out / "features_baseline.zarr", grid=grid, selection=sel)
    return time.perf_counter() - t0


def measure(kind: str, cube: Path, root: Path, *, memory_limit: str) -> dict:
    from distributed import Client, LocalCluster

    from rtsflow.cluster import worker_config

    out = root / f"run_{kind}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    spill = out / "dask-spill"
    import dask

    with dask.config.set(worker_config(local_directory=spill, max_spill="64GiB")):
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
                          memory_limit=memory_limit, local_directory=str(spill)) as lc, Client(lc) as client:
            pids = list(client.run(os.getpid).values())
            with Sampler(pids, spill) as s:
                seconds = (run_stages if kind == "stages" else run_baseline)(cube, out, client)  # fmt: skip
    return {"seconds": seconds, "peak_rss": max(s.peak_rss.values()), "spill": s.peak_disk,
            "stages": _stage_peaks(out / "status.csv", s.series)}  # fmt: skip


def _stage_peaks(status: Path, series: list[tuple[float, int]]) -> dict[str, float]:
    """Largest worker RSS (GiB) while each stage ran (from the status table's block times)."""
    import pandas as pd

    if not status.exists():
        return {}
    s = pd.read_csv(status, keep_default_na=False)
    s = s[s.block != "all"]
    end = pd.to_datetime(s.finished_at).map(pd.Timestamp.timestamp)
    s = s.assign(end=end, start=end - pd.to_numeric(s.seconds, errors="coerce").fillna(0))
    out = {}
    for stage, rows in s.groupby("stage", sort=False):
        lo, hi = rows.start.min() - 1, rows.end.max() + 1
        inside = [rss for t, rss in series if lo <= t <= hi]
        out[stage] = max(inside, default=0) / 2**30
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--block", type=int, default=1024, help="Block edge (px); tiles are block / 8.")
    p.add_argument("--blocks", type=int, default=4, help="The region is this many blocks a side.")
    p.add_argument("--obs", type=int, nargs="+", default=[8, 40], help="Observations per winter (one run each).")
    p.add_argument("--cover", type=int, default=3, help="Each observation covers this many blocks a side.")
    p.add_argument("--memory-limit", default="10GiB", help="Per worker (2 workers).")
    p.add_argument("--baseline", action="store_true", help="Also run the previous lazy graph on each cube.")
    p.add_argument("--root", type=Path, default=None, help="Work directory (default: a temporary one).")
    args = p.parse_args()
    print_header("memory (DEM stages, co-registration on)")
    grid = Grid(resolution=10.0, tile_size=args.block // 8, block_tiles=8)
    root = args.root or Path(tempfile.mkdtemp(prefix="rtsflow-memory-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"region: {args.blocks}² blocks of {args.block}² px; each observation covers {args.cover}² blocks; "
          f"2 workers, memory limit {args.memory_limit} each")  # fmt: skip
    print(f"{'obs/winter':>10} {'run':>9} {'wall s':>8} {'peak RSS/worker':>16} {'spill':>9}  cube")
    results = {}
    try:
        for n_obs in args.obs:
            cube = root / f"cube_{n_obs}.zarr"
            shutil.rmtree(cube, ignore_errors=True)
            t0 = time.perf_counter()
            patch_cube(cube, grid=grid, blocks=args.blocks, obs_per_winter=n_obs, cover=args.cover, seed=n_obs)
            size = _du(cube)
            built = time.perf_counter() - t0
            kinds = ["stages", "baseline"] if args.baseline else ["stages"]
            for kind in kinds:
                r = measure(kind, cube, root, memory_limit=args.memory_limit)
                results[(n_obs, kind)] = r
                print(f"{n_obs:>10} {kind:>9} {r['seconds']:>8.1f} {r['peak_rss'] / 2**30:>13.2f} GiB "
                      f"{r['spill'] / 2**30:>5.2f} GiB  {size / 2**30:.1f} GiB, built in {built:.0f} s", flush=True)
                if r["stages"]:
                    print("           peak RSS per stage: " + ", ".join(f"{k} {v:.2f}" for k, v in r["stages"].items()),
                          flush=True)  # fmt: skip
            shutil.rmtree(cube, ignore_errors=True)
        stage_runs = [results[(n, "stages")] for n in args.obs]
        if len(stage_runs) > 1:
            lo, hi = stage_runs[0]["peak_rss"], stage_runs[-1]["peak_rss"]
            print(f"ratio: peak RSS per worker at {args.obs[-1]} vs {args.obs[0]} obs/winter = {hi / lo:.2f} "
                  f"(target ≤ 1.20)")  # fmt: skip
        for n in args.obs:
            if (n, "baseline") in results:
                b, s = results[(n, "baseline")], results[(n, "stages")]
                rss = s["peak_rss"] / b["peak_rss"]
                print(f"ratio: {n} obs/winter, stages / previous lazy graph: peak RSS {rss:.2f}, "
                      f"wall {s['seconds'] / b['seconds']:.2f}, spill {s['spill'] / 2**30:.2f} vs "
                      f"{b['spill'] / 2**30:.2f} GiB")  # fmt: skip
    finally:
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
