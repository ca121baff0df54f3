"""Ingest throughput against a plain ``rasterio.warp.reproject`` of the same files, in one process.

Generates a synthetic region (default 50 x 50 km = 2 500 km², which also
exercises the block-by-block generator at benchmark scale), then:

- baseline: for every layer of every product, read the whole file and
  ``rasterio.warp.reproject`` it onto its footprint window of the rtsflow grid
  (no checks, no store);
- rtsflow ``ingest`` (full checks, content hashes, Zarr v3 sharded writes, one
  Icechunk transaction with forked sessions on the workers) on a LocalCluster
  with 1 and 2 worker processes, into fresh cubes;
- the same checks and block writes into a plain Zarr store (no transaction, no
  history: the cube of rtsflow ≤ 0.2), on the same cluster: the store's cost
  is the ratio of the two. Both cubes are then read back block by block
  (every variable of every observation, as the composite stage reads them).

Both are run twice: on the generated products, which lie on the grid (ingest
copies pixels; GDAL still warps), and on copies shifted by a fraction of a
pixel, which forces ingest to warp too.

Throughput is MB/s of input GeoTIFF bytes; figures are printed as ratios to the
baseline measured in the same run. Usage::

    python benchmarks/bench_ingest.py [--size-km 50] [--workers 1 2] [--out /tmp/rtsflow-bench]
"""

from __future__ import annotations

import argparse
import shutil
import time
import tracemalloc
from pathlib import Path

import numpy as np
import rasterio
import zarr
from affine import Affine
from common import print_header
from distributed import Client
from rasterio.warp import reproject

from rtsflow.cluster import local_cluster
from rtsflow.grid import DEFAULT_GRID, GRID_CRS
from rtsflow.ingest import ingest
from rtsflow.io.rasters import LAYER_RULES
from rtsflow.products import read_product, write_sidecar
from rtsflow.synth.generator import SynthConfig, synthesize


def baseline(products: list[Path]) -> float:
    """Seconds to read and reproject every layer onto its grid footprint, sequentially."""
    t0 = time.perf_counter()
    for sc in products:
        p = read_product(sc)
        for key, path in p.rasters.items():
            with rasterio.open(path) as src:
                data = src.read(1, out_dtype="float32")
                bounds = rasterio.warp.transform_bounds(src.crs, GRID_CRS, *src.bounds)
                win = DEFAULT_GRID.window_from_bounds(bounds)
                dst = np.full(win.shape, np.nan, dtype="float32")
                reproject(
                    data,
                    dst,
                    src_transform=src.transform,
                    src_crs=src.crs,
                    dst_transform=DEFAULT_GRID.transform(win),
                    dst_crs=GRID_CRS,
                    resampling=LAYER_RULES[key].resampling,
                    dst_nodata=np.nan,
                )
    return time.perf_counter() - t0


def offgrid_copies(products: list[Path], out: Path) -> list[Path]:
    """Copies of the products shifted by (0.37, 0.21) px, so they no longer sit on the grid."""
    out.mkdir(parents=True, exist_ok=True)
    sidecars = []
    for sc in products:
        p = read_product(sc)
        layers = {}
        for key, path in p.rasters.items():
            dest = out / path.name
            shutil.copyfile(path, dest)
            with rasterio.open(dest, "r+") as dst:
                dst.transform = dst.transform @ Affine.translation(0.37, 0.21)
            layers[key] = dest
        sidecars.append(
            write_sidecar(
                out / sc.name,
                id=p.id + "_off",
                acquired=p.acquired,
                hoa_m=p.hoa,
                orbit=p.orbit,
                sensor=p.sensor,
                **layers,
            )
        )
    return sidecars


def plain_ingest(products: list[Path], cube: Path) -> int:
    """Ingest's checks and block writes into a plain Zarr store (the write path before Icechunk); blocks written."""
    import dask

    from rtsflow.ingest import _obs_coords, _write_product_block, prepare_product
    from rtsflow.io import cube as cubeio
    from rtsflow.io.footprints import append_footprints

    grid = DEFAULT_GRID
    prepared = dask.compute(*[dask.delayed(prepare_product)(p, grid=grid) for p in products])
    window = prepared[0].footprint
    for p in prepared[1:]:
        window = window.union(p.footprint)
    window = grid.snap(window, to="block")
    cubeio.create_cube(cube, grid=grid, window=window, obs=_obs_coords(prepared))
    tasks = [dask.delayed(_write_product_block)(str(cube), p, grid=grid, cube_window=window, obs_index=i,
                                                block=grid.snap(part, to="block"))
             for i, p in enumerate(prepared) for _, part in grid.blocks(p.footprint)]  # fmt: skip
    written = [r for r in dask.compute(*tasks) if r is not None]
    append_footprints(cube, np.concatenate(written), n_obs=len(prepared))
    return len(written)


def read_back(cube) -> float:
    """Seconds to read every variable of every observation, block by block, as the composite stage does."""
    from rtsflow.io import cube as cubeio
    from rtsflow.io.blocks import GridStore
    from rtsflow.io.repo import CubeRef, head, is_repo

    if is_repo(cube):
        ref = CubeRef(str(cube), head(cube))
        info = cubeio.cube_info(ref)
    else:  # a plain Zarr store: GridStore opens it by path
        ref, info = cube, cubeio._info(zarr.open_group(str(cube), mode="r"), path=cube)
    t0 = time.perf_counter()
    store = GridStore(ref, grid=info.grid)
    for _, block in info.grid.blocks(info.window):
        for name in cubeio.CUBE_VARIABLES:
            for i in range(info.n_obs):
                store.read(name, block, index={"obs": i})
    return time.perf_counter() - t0


def run_case(label: str, products: list[Path], workers: list[int], out: Path) -> None:
    input_mb = sum(path.stat().st_size for sc in products for path in read_product(sc).rasters.values()) / 1e6
    t_base = baseline(products)
    base_mbs = input_mb / t_base
    print(f"## {label}: {input_mb:.0f} MB of GeoTIFF in {len(products)} products")
    print(f"baseline rasterio.warp.reproject: {t_base:.1f} s = {base_mbs:.1f} MB/s (ratio 1.00)")
    for n in workers:
        cube, plain = out / f"cube_{n}.zarr", out / f"plain_{n}.zarr"
        with local_cluster(n_workers=n, dashboard_address=None) as lc, Client(lc):
            t0 = time.perf_counter()
            blocks = plain_ingest(products, plain)
            t_plain = time.perf_counter() - t0
            t0 = time.perf_counter()
            report = ingest(products, cube=cube)
            t = time.perf_counter() - t0
        print(
            f"rtsflow ingest, {n} worker process(es): {t:.1f} s = {input_mb / t:.1f} MB/s "
            f"(ratio {input_mb / t / base_mbs:.2f}); {report.blocks_written} block writes"
        )
        print(
            f"  same checks and writes into plain Zarr (no transaction): {t_plain:.1f} s, {blocks} block writes; "
            f"Icechunk cube / plain Zarr time = {t / t_plain:.3f}"
        )
    r_plain, r_ice = read_back(plain), read_back(cube)
    print(f"read back block by block: plain Zarr {r_plain:.1f} s, Icechunk cube {r_ice:.1f} s "
          f"(ratio {r_ice / r_plain:.3f})")  # fmt: skip
    t0 = time.perf_counter()
    again = ingest(products, cube=out / f"cube_{workers[-1]}.zarr", scheduler="sync")
    print(
        f"re-ingest of the same products (idempotent skip): {time.perf_counter() - t0:.1f} s, "
        f"{len(again.skipped)} skipped"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-km", type=float, default=50.0)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", type=Path, default=Path("/tmp/rtsflow-bench-ingest"))
    args = ap.parse_args()

    print_header("ingest")
    config = SynthConfig(seed=1, size_km=(args.size_km, args.size_km), winters=(2010, 2016), obs_per_winter=2)
    region_dir = args.out / "region"
    shutil.rmtree(args.out, ignore_errors=True)
    tracemalloc.start()
    t0 = time.perf_counter()
    region = synthesize(region_dir, config=config)
    t_synth = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    px = region.window.height * region.window.width
    print(
        f"synth: {args.size_km**2:.0f} km², {px / 1e6:.1f} Mpx x {len(region.products)} products "
        f"in {t_synth:.1f} s; peak traced memory {peak / 2**20:.0f} MiB "
        f"(one float32 layer of the region: {px * 4 / 2**20:.0f} MiB)"
    )

    run_case("products on the grid", region.products, args.workers, args.out / "on")
    run_case(
        "products off the grid (0.37, 0.21 px)",
        offgrid_copies(region.products, args.out / "offgrid"),
        args.workers,
        args.out / "off",
    )


if __name__ == "__main__":
    main()
