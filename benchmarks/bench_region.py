"""A real-size region through the CLI: ``rtsflow run`` on 2 × 2 grid blocks (4096² px each), co-registration on.

As a new user would: ``rtsflow synth`` writes GeoTIFF products with sidecars
(default 80 × 80 km, two winters, ``--obs-per-winter`` acquisitions each),
``rtsflow ingest`` (with ``--bbox`` = the 2 × 2 block window),
``rtsflow ingest-mask`` and ``rtsflow ingest-reference`` build the cube, and
``rtsflow run`` (2-worker local cluster, per-observation co-registration to the
reference and pair co-registration) produces RTS polygons. While it runs, the
RSS of every process of the run (client, scheduler, nanny + worker) is sampled
every 0.2 s, and the size of the run's spill directory.

Usage::

    python benchmarks/bench_region.py --root /tmp/region2x2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import yaml
from common import print_header

from rtsflow.grid import DEFAULT_GRID as GRID
from rtsflow.grid import Window
from rtsflow.model.checkpoint import DEFAULT_MODEL

EXE = [sys.executable, "-m", "rtsflow.cli"]


def sh(*args: str) -> None:
    t0 = time.perf_counter()
    subprocess.run([*EXE, *args], check=True, stdout=subprocess.DEVNULL)
    print(f"  rtsflow {args[0]} … {time.perf_counter() - t0:.0f} s", flush=True)


class TreeSampler:
    """Peak RSS of every process in a process tree (by pid), sampled in a thread."""

    def __init__(self, root: int, spill: Path, every: float = 0.2) -> None:
        self.root, self.spill, self.every = psutil.Process(root), spill, every
        self.peak: dict[int, tuple[int, str]] = {}
        self.peak_total = 0
        self.peak_spill = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                break
            total = 0
            for p in procs:
                try:
                    rss = p.memory_info().rss
                    name = " ".join(p.cmdline())[-60:]
                except psutil.Error:
                    continue
                total += rss
                if rss > self.peak.get(p.pid, (0, ""))[0]:
                    self.peak[p.pid] = (rss, name)
            self.peak_total = max(self.peak_total, total)
            size = 0
            for d, _, files in os.walk(self.spill):
                for f in files:
                    try:
                        size += os.path.getsize(os.path.join(d, f))
                    except OSError:
                        pass
            self.peak_spill = max(self.peak_spill, size)
            self._stop.wait(self.every)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, required=True, help="Work directory (products, cube and run are kept).")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="Checkpoint directory (default: the shipped one).")
    p.add_argument("--size-km", type=float, default=80.0)
    p.add_argument("--obs-per-winter", type=int, default=4)
    p.add_argument("--blocks", type=int, default=2, help="The cube is this many 4096² blocks a side.")
    p.add_argument("--compare-growth", action="store_true",
                   help="Then run again with grow_outlines: false (outlines as drawn) and print the default "
                        "run's cost (outlines grown) against it.")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                   help="Test-time augmentation (inference.tta, the default: each window over its 8 flips and "
                        "quarter turns) into <root>/run; --no-tta: one view, into <root>/run_plain.")  # fmt: skip
    args = p.parse_args()
    print_header("region (rtsflow run, real-size blocks)")
    root = args.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    # A block-aligned window near Banks Island; the synthetic region is centred in it.
    b = GRID.block_size
    r0, c0 = GRID.pixel_of(-1_800_000.0, -500_000.0)
    window = Window(int(r0) // b * b, int(c0) // b * b, args.blocks * b, args.blocks * b)
    left, bottom, right, top = GRID.bounds(window)
    from pyproj import Transformer

    lon, lat = Transformer.from_crs("EPSG:3413", "EPSG:4326", always_xy=True).transform((left + right) / 2,
                                                                                       (bottom + top) / 2)
    region = root / "region"
    t0 = time.perf_counter()
    if not (region / "region.json").exists():
        sh("synth", str(region), "--size-km", str(args.size_km), str(args.size_km), "--center", str(lon), str(lat),
           "--winters", "2010,2016", "--obs-per-winter", str(args.obs_per_winter), "--no-summer", "--seed", "7")
    products = sorted((region / "products").glob("*.json"))
    cube = root / "cube.zarr"
    if not cube.exists():
        sh("ingest", *map(str, products), "--cube", str(cube), "--bbox", str(left), str(bottom), str(right), str(top))
        sh("ingest-mask", str(region / "truth" / "water.tif"), "--cube", str(cube))
        sh("ingest-reference", str(region / "reference_dem.tif"), "--cube", str(cube))
    print(f"prepared {len(products)} products, cube {cube} ({args.blocks}² blocks of {b}² px) in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip
    run_name = "run" if args.tta else "run_plain"
    config = {"name": "region-2x2", "output": str(root / run_name), "cube": str(cube), "pairs": [[2010, 2016]],
              "model": str(args.model.resolve()), "reference": "reference_dem", "coregister": True,
              "inference": {"halo": 32, "tta": args.tta}, "densities": {"cell_size": [10000]},
              "truth": {"path": str(region / "truth" / "slumps.parquet"),
                        "where": "winter_start == 2010 and winter_end == 2016"}}  # fmt: skip
    grown = measure_run(root, config, name=run_name)
    if args.compare_growth:  # the same run with the outlines as drawn: the cost of growing them, as ratios
        print("# the same run with grow_outlines: false (the polygons stage reads no halo and grows nothing)")
        plain = measure_run(root, {**config, "output": str(root / "run_as_drawn"), "grow_outlines": False},
                            name="run_as_drawn")  # fmt: skip
        print(f"grown (default) / as drawn: wall {grown['wall'] / plain['wall']:.2f}, polygons stage "
              f"{grown['stages']['polygons'] / plain['stages']['polygons']:.2f} "
              f"({plain['stages']['polygons']:.0f} → {grown['stages']['polygons']:.0f} s), zonal "
              f"{grown['stages']['zonal'] / plain['stages']['zonal']:.2f}, peak RSS per worker "
              f"{grown['worker_peak'] / plain['worker_peak']:.2f} ({plain['worker_peak'] / 2**30:.2f} → "
              f"{grown['worker_peak'] / 2**30:.2f} GiB), RTS kept {plain['n_rts']} → {grown['n_rts']}, "
              f"detection F1 {plain['f1']:.3f} → {grown['f1']:.3f}, pixel IoU {plain['iou']:.3f} → "
              f"{grown['iou']:.3f}")  # fmt: skip


def measure_run(root: Path, config: dict, *, name: str) -> dict:
    """``rtsflow run --force`` on ``config`` with the RSS of its process tree sampled; print and return figures."""
    run = Path(config["output"])
    (root / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([*EXE, "run", str(root / f"{name}.yaml"), "--force"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)  # fmt: skip
    with TreeSampler(proc.pid, run / "dask-spill") as s:
        for line in proc.stdout:
            if not line.startswith(("  ", "\r")):
                print("  | " + line.rstrip(), flush=True)
        proc.wait()
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"rtsflow run failed ({proc.returncode})")
    print()
    print(f"rtsflow run: {wall:.0f} s wall on {psutil.cpu_count()} cores")
    print(f"peak RSS of the whole run (all processes at once): {s.peak_total / 2**30:.2f} GiB")
    top = sorted(s.peak.items(), key=lambda kv: -kv[1][0])
    for pid, (rss, pname) in top[:4]:
        print(f"  peak RSS {rss / 2**30:5.2f} GiB  pid {pid}  {pname}")
    print(f"peak spill on disk: {s.peak_spill / 2**30:.2f} GiB")
    timings = (run / "timings.csv").read_text().strip().splitlines()[1:]
    print("stage timings (s): " + "; ".join(f"{t.split(',')[1]} {float(t.split(',')[2]):.0f}" for t in timings))
    stages: dict[str, float] = {}  # seconds per stage name (rows are "<stage> <key>")
    for t in timings:
        name = t.split(",")[1].split()[0]
        stages[name] = stages.get(name, 0.0) + float(t.split(",")[2])
    summary = json.loads((run / "summary_2010_2016.json").read_text())
    m = summary.get("metrics", {})
    print(f"RTS kept: {summary['n_rts']} of {summary['n_polygons']} polygons; detection F1 "
          f"{m.get('detection_f1', float('nan')):.3f}, pixel IoU {m.get('pixel_iou', float('nan')):.3f} "
          f"(model {config['model']})")  # fmt: skip
    workers = [rss for pid, (rss, _) in s.peak.items() if pid != proc.pid] or [0]  # children: nannies, workers
    return {"wall": wall, "stages": stages, "worker_peak": max(workers), "n_rts": summary["n_rts"],
            "f1": m.get("detection_f1", float("nan")), "iou": m.get("pixel_iou", float("nan"))}  # fmt: skip

if __name__ == "__main__":
    main()
