"""The pair's DEM-error model at the real size: the reduce stage's one task vs the lazy graph.

A feature store of ``--blocks`` × ``--blocks`` grid blocks of 4096² px (10 m,
the default grid) holds a dDEM of correlated noise (Gaussian-filtered, 2 px,
plus a 1 km long-range share), σ, water and quality bands, and RTS polygons
to leave out. Each path fits the error model in a fresh process, which reports
its wall time and peak RSS:

- baseline: the lazy :func:`rtsflow.graph.error_model.error_model`, computed
  with the threaded scheduler (what the lazy API's ``measure`` does);
- the stage path: :func:`rtsflow.stages.polygons.fit_error_model`, the body of
  the reduce stage's one ``error_model-<pair>`` task (reads block by block
  only while the selection needs more).

Both must give the same model. Usage::

    python benchmarks/bench_error_model.py [--blocks 2] [--out /tmp/rtsflow-bench-error-model]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from common import print_header

CHILD = r"""
import json, sys, time
import geopandas as gpd, xarray as xr
from rtsflow.grid import DEFAULT_GRID as GRID
store, path = sys.argv[1], sys.argv[2]
feats = xr.open_zarr(store, consolidated=False)
rts = gpd.read_parquet(sys.argv[3])
t0 = time.perf_counter()
if path == "lazy":
    from rtsflow.graph.error_model import error_model
    model = error_model(feats, rts, grid=GRID).compute(scheduler="threads")
else:
    from rtsflow.stages.polygons import fit_error_model
    model = fit_error_model(feats, rts, grid=GRID)
t = time.perf_counter() - t0
# VmHWM: this process's own peak (ru_maxrss would carry the parent's peak over fork + exec)
rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 2**20
print(json.dumps({"seconds": t, "peak_rss_gib": rss, "model": model.to_dict() if model else None}))
"""


def build(out: Path, *, blocks: int) -> tuple[Path, Path]:
    """The feature store (``blocks``² blocks of 4096², chunked by block) and RTS polygons to leave out."""
    import dask.array as da
    import geopandas as gpd
    import numpy as np
    import shapely
    import xarray as xr
    from scipy import ndimage

    from rtsflow.grid import DEFAULT_GRID as GRID
    from rtsflow.grid import Window

    n = blocks * GRID.block_size
    window = Window(GRID.block_size * 137, GRID.block_size * 92, n, n)  # block-aligned
    x, y = GRID.coords(window)
    store = out / "features.zarr"
    rts_path = out / "rts.parquet"
    if store.exists() and rts_path.exists():
        return store, rts_path
    rng = np.random.default_rng(0)
    z = ndimage.gaussian_filter(rng.standard_normal((n, n), dtype="float32"), 2.0)
    z *= 0.5 / z.std()
    coarse = ndimage.gaussian_filter(rng.standard_normal((n // 16, n // 16), dtype="float32"), 6.0)
    z += np.kron(coarse * (0.3 / coarse.std()), np.ones((16, 16), "float32"))  # ~1 km long-range share
    feats = xr.Dataset(
        {"ddem": (("y", "x"), da.from_array(z, chunks=GRID.block_size)),
         "ddem_sigma": (("y", "x"), da.full((n, n), 0.6, dtype="float32", chunks=GRID.block_size)),
         "water": (("y", "x"), da.zeros((n, n), dtype="float32", chunks=GRID.block_size)),
         "quality": (("y", "x"), da.zeros((n, n), dtype="float32", chunks=GRID.block_size))},
        coords={"x": x, "y": y}, attrs={"years": 6.0},
    )  # fmt: skip
    feats.to_zarr(store, mode="w", zarr_format=3, consolidated=False)
    centres = rng.uniform(0, n, (2000, 2))
    rts = gpd.GeoDataFrame(geometry=[shapely.Point(x[int(c)], y[int(r)]).buffer(rng.uniform(30, 150))
                                     for r, c in centres], crs=3413)  # fmt: skip
    rts.to_parquet(rts_path)
    return store, rts_path


def run(store: Path, rts: Path, path: str, *, child: str = CHILD) -> dict:
    """Run ``child`` (a script printing one JSON line) in a fresh process on the store."""
    r = subprocess.run([sys.executable, "-c", child, str(store), path, str(rts)], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--blocks", type=int, default=2, help="The store is this many 4096² blocks a side.")
    ap.add_argument("--out", type=Path, default=Path("/tmp/rtsflow-bench-error-model"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print_header("DEM-error model (reduce stage's error_model task)")
    t0 = time.perf_counter()
    store, rts = build(args.out, blocks=args.blocks)
    print(f"store: {args.blocks} x {args.blocks} blocks of 4096² px, 4 bands ({time.perf_counter() - t0:.0f} s)")
    lazy = run(store, rts, "lazy")
    stage = run(store, rts, "stage")
    print(f"lazy graph, threaded (baseline): {lazy['seconds']:.1f} s, peak RSS {lazy['peak_rss_gib']:.2f} GiB "
          "(ratio 1.00)")  # fmt: skip
    print(f"stage task (fit_error_model): {stage['seconds']:.1f} s (ratio {lazy['seconds'] / stage['seconds']:.2f}), "
          f"peak RSS {stage['peak_rss_gib']:.2f} GiB; same model: {lazy['model'] == stage['model']}")  # fmt: skip
    m = stage["model"]
    if m:
        print(f"model: ranges {[round(r) for r in m['ranges_m']]} m, sills {[round(s, 3) for s in m['sills']]}, "
              f"{m['n_pairs']:.0f} pairs at lag 1")  # fmt: skip
    print(f"# peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
