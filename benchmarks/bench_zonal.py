"""The reduce stage's zonal task at the real size, with and without the local reference's rings.

The feature store of ``bench_error_model.py`` (``--blocks`` × ``--blocks`` grid
blocks of 4096² px at 10 m, correlated noise, 2 000 RTS polygons of 30–150 m
radius) is summed block by block as :func:`rtsflow.stages.polygons.zonal_block`
does, each path in a fresh process that reports its wall time and peak RSS:

- baseline: the zonal sums without rings (each block read without a halo,
  ``block_sums(halo=0)``: the code path before the local reference);
- the stage: ``zonal_block`` (blocks read with the rings' 10-px halo, ring labels
  by a tiled distance transform, ring histograms).

The polygons' own sums must agree exactly. Usage::

    python benchmarks/bench_zonal.py [--blocks 2] [--out /tmp/rtsflow-bench-error-model]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench_error_model import build, run
from common import print_header

CHILD = r"""
import json, sys, time
import geopandas as gpd, numpy as np, shapely
from rtsflow.grid import DEFAULT_GRID as GRID
from rtsflow.io.blocks import GridStore
import xarray as xr
from rtsflow.graph.masswasting import block_sums
from rtsflow.stages.polygons import zonal_block
from rtsflow.kernels.zonal import ZONAL_FIELDS
from rtsflow.kernels.local_reference import RING_FIELDS
store, path = sys.argv[1], sys.argv[2]
rts = gpd.read_parquet(sys.argv[3])
feats = xr.open_zarr(store, consolidated=False)
domain = GRID.window_from_coords(feats["x"].values, feats["y"].values)
blocks = sorted(b for b, _ in GRID.blocks(domain))
tree = rts.sindex
sums = np.zeros((len(rts), len(ZONAL_FIELDS)))
t0 = time.perf_counter()
for b in blocks:
    win = GRID.block_window(*b)
    reach = 10 if path == "rings" else 0
    box = shapely.box(*GRID.bounds(win.__class__(win.row - reach, win.col - reach, win.height + 2 * reach,
                                                 win.width + 2 * reach)))
    hit = np.sort(tree.query(box))
    polys = rts.iloc[hit].assign(_row=hit)
    if path == "rings":
        out = zonal_block(b, features=store, grid=GRID, domain=domain, densities=[], polygons=polys)
        sums[out["rows"]] += out["sums"]
    else:
        s = GridStore(store, grid=GRID, domain=domain)
        bands = [s.read(v, win) for v in ("ddem", "ddem_sigma", "water", "quality")]
        part, _ = block_sums(polys, *bands, grid=GRID, window=win, halo=0)
        sums[hit] += part
t = time.perf_counter() - t0
rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 2**20
n_own = len(ZONAL_FIELDS) - len(RING_FIELDS)
print(json.dumps({"seconds": t, "peak_rss_gib": rss, "own": sums[:, :n_own].tolist(),
                  "ring_pixels": float(sums[:, ZONAL_FIELDS.index("ring_n_pixels")].sum())}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--blocks", type=int, default=2, help="The store is this many 4096² blocks a side.")
    ap.add_argument("--out", type=Path, default=Path("/tmp/rtsflow-bench-error-model"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print_header("Zonal task with the local reference's rings")
    t0 = time.perf_counter()
    store, rts = build(args.out, blocks=args.blocks)
    print(f"store: {args.blocks} x {args.blocks} blocks of 4096² px ({time.perf_counter() - t0:.0f} s)")
    plain = run(store, rts, "plain", child=CHILD)
    rings = run(store, rts, "rings", child=CHILD)
    n = args.blocks**2
    print(f"without rings (baseline): {plain['seconds'] / n:.2f} s per block, peak RSS {plain['peak_rss_gib']:.2f} GiB "
          "(ratio 1.00)")  # fmt: skip
    ratio_s, ratio_rss = rings["seconds"] / plain["seconds"], rings["peak_rss_gib"] / plain["peak_rss_gib"]
    print(f"zonal_block with rings: {rings['seconds'] / n:.2f} s per block (ratio {ratio_s:.2f}), "
          f"peak RSS {rings['peak_rss_gib']:.2f} GiB (ratio {ratio_rss:.2f}); {rings['ring_pixels']:.0f} ring pixels; "
          f"the polygons' own sums equal: {plain['own'] == rings['own']}")  # fmt: skip

if __name__ == "__main__":
    main()
