"""Feature-graph throughput against a single-process fused NumPy implementation of the same maths.

Builds a synthetic region (default 20 x 20 km = 400 km², inside one 4096² block),
ingests it, then times:

- reference: read the cube's arrays with zarr into memory and run the same
  kernels (selection, quality mask, σ_h, coherence-weighted composites,
  xDEM co-registration of the block, dDEM, σ_dDEM, dDEM_norm, Horn slope) on
  whole arrays in this process;
- the lazy dask graph (``pair_features``) computed on a LocalCluster with 1
  and 2 worker processes, with dask chunks of ``--chunk`` px.

Prints throughput (Mpx/s of the cube window) as ratios to the reference, and
checks that both give the same dDEM. Usage::

    python benchmarks/bench_features.py [--size-km 20] [--workers 1 2] [--chunk 1024]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
from common import print_header
from distributed import Client
from pyproj import Transformer

from rtsflow.cluster import local_cluster
from rtsflow.graph.coreg import CoregConfig
from rtsflow.graph.features import pair_features
from rtsflow.grid import DEFAULT_GRID as GRID
from rtsflow.ingest import ingest, ingest_mask
from rtsflow.io.cube import cube_group, cube_info, open_cube
from rtsflow.kernels.composite import weighted_composite
from rtsflow.kernels.coreg import apply_fit, fit_block
from rtsflow.kernels.ddem import ddem_norm
from rtsflow.kernels.error import sigma_h
from rtsflow.kernels.quality import sar_quality_mask
from rtsflow.kernels.terrain import slope_horn
from rtsflow.selection import select_observations
from rtsflow.synth.generator import SynthConfig, synthesize


def numpy_reference(cube: Path, earlier: int, later: int, config: CoregConfig) -> dict[str, np.ndarray]:
    """The whole feature computation in one process on whole arrays."""
    info = cube_info(cube)
    group = cube_group(cube)
    sel = select_observations(open_cube(cube, sort_by_time=False))
    comps = {}
    for w in (earlier, later):
        idx = sel[sel.selected & (sel.epoch == w)].obs.to_numpy()
        dem = group["dem"].oindex[idx]
        coh = group["coherence"].oindex[idx]
        ls = group["layover_shadow"].oindex[idx].astype("float32")
        ls[ls == 255] = np.nan
        inc = group["incidence"].oindex[idx]
        bad = sar_quality_mask(coh, layover_shadow=ls, incidence=inc)
        sig = sigma_h(coh, group["hoa"][:][idx].astype("float32")[:, None, None])
        comps[w] = weighted_composite(np.where(bad, np.nan, dem), sig, weights=coh)
    h1, h2 = comps[earlier][0], comps[later][0]
    quality = (comps[earlier][2] == 0) | (comps[later][2] == 0)
    water = group["water"][:] == 1
    slope = slope_horn(h1, resolution=GRID.resolution)
    stable = ~quality & ~water & (slope < config.max_slope_deg)
    b = GRID.block_size
    aligned = np.empty_like(h2)
    halo = int(np.ceil(config.max_shift_px)) + 2
    for i in range(info.window.height // b):
        for j in range(info.window.width // b):
            ys, xs = slice(i * b, (i + 1) * b), slice(j * b, (j + 1) * b)
            block = GRID.block_window(info.window.row // b + i, info.window.col // b + j)
            fit = fit_block(
                h1[ys, xs],
                h2[ys, xs],
                stable[ys, xs],
                transform=GRID.transform(block),
                max_iterations=config.max_iterations,
                offset_threshold=config.offset_threshold,
                subsample=config.subsample,
            )
            padded = np.pad(h2[ys, xs], halo, constant_values=np.nan)
            aligned[ys, xs] = apply_fit(padded, fit, resolution=GRID.resolution, origin=(0, 0), halo=halo)
    d = aligned - h1
    s = np.hypot(comps[later][1], comps[earlier][1])
    return {"ddem": d, "ddem_sigma": s, "ddem_norm": ddem_norm(d, s), "slope": slope}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-km", type=float, default=20.0)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--out", type=Path, default=Path("/tmp/rtsflow-bench-features"))
    args = ap.parse_args()
    print_header("feature-graph")

    # Centre the region in one block so the reference fits in memory.
    b = GRID.block_size
    to_ll = Transformer.from_crs("EPSG:3413", "EPSG:4326", always_xy=True)
    row, col = GRID.block_of(*Transformer.from_crs("EPSG:4326", "EPSG:3413", always_xy=True).transform(-119.6, 72.9))
    cx, cy = GRID.pixel_center(int(row) * b + b // 2, int(col) * b + b // 2)
    config = SynthConfig(
        seed=2,
        center_lonlat=to_ll.transform(cx, cy),
        size_km=(args.size_km, args.size_km),
        winters=(2010, 2016),
        obs_per_winter=3,
    )
    shutil.rmtree(args.out, ignore_errors=True)
    region = synthesize(args.out / "region", config=config)
    cube = args.out / "cube.zarr"
    ingest(region.products, cube=cube)
    ingest_mask(region.truth_rasters["water"], cube=cube, name="water")
    win = cube_info(cube).window
    mpx = win.height * win.width / 1e6
    print(
        f"region {args.size_km**2:.0f} km² in a cube of {win.height} x {win.width} px ({mpx:.1f} Mpx), "
        f"{len(region.products)} products"
    )

    coreg = CoregConfig()
    t0 = time.perf_counter()
    ref = numpy_reference(cube, 2010, 2016, coreg)
    t_ref = time.perf_counter() - t0
    print(f"fused NumPy reference, 1 process: {t_ref:.1f} s = {mpx / t_ref:.2f} Mpx/s (ratio 1.00)")
    for n in args.workers:
        with local_cluster(n_workers=n, dashboard_address=None) as lc, Client(lc):
            ds = open_cube(cube, chunk=args.chunk)
            t0 = time.perf_counter()
            feats, _ = pair_features(ds, grid=GRID, earlier=2010, later=2016, water=ds["water"])
            out = feats[["ddem", "ddem_sigma", "ddem_norm", "slope"]].compute()
            t = time.perf_counter() - t0
        diff = np.nanmax(np.abs(out.ddem.values - ref["ddem"]))
        same_nan = np.array_equal(np.isnan(out.ddem.values), np.isnan(ref["ddem"]))
        print(
            f"dask graph, {n} worker(s), chunks {args.chunk}²: {t:.1f} s = {mpx / t:.2f} Mpx/s "
            f"(ratio {t_ref / t:.2f}); max |ΔdDEM| vs reference {diff:.2e} m, same NaNs: {same_nan}"
        )


if __name__ == "__main__":
    main()
