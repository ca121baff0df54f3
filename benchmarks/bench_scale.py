"""Graph size at pan-Arctic scale: tasks per block and time to build each stage's submission.

A metadata-only cube (no pixel is ever written) with the real layout: a
pan-Arctic window of ``--blocks-side``² blocks of 4096² px (default 110² =
12 100 blocks), ``--obs`` observation footprints over two winters (default
20 000), each covering a random 1 × 1 … 2 × 2 block patch (≤ 4 blocks), a
reference DEM and a water mask. For every stage of a run with co-registration
it plans the run (footprint index, selection), builds the stage (one job per
block with the observations whose footprint meets it), creates its store
template, and submits it to a real scheduler that has no workers (so nothing
runs) and cancels it. It prints tasks per block and build/submit times.

The baseline, in the same process: the lazy graph of the previous code path
(``pair_features``: one dask graph for the whole region) at 64 blocks × 10 and
× 100 observations, without and (``--old-coreg``) with co-registration to the
reference, materialised to count its tasks.

Usage::

    python benchmarks/bench_scale.py [--blocks-side 110] [--obs 20000] [--old-coreg]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from common import print_header

from rtsflow.grid import DEFAULT_GRID as GRID
from rtsflow.grid import Window


def metadata_cube(path: Path, *, side: int, n_obs: int, origin: tuple[int, int], seed: int = 0,
                  footprint_blocks: int = 2, full: bool = False) -> Window:  # fmt: skip
    """A cube with obs coordinates, a footprint index, a reference DEM and a water mask, but no pixel."""
    from rtsflow.io.cube import create_cube, create_static
    from rtsflow.io.footprints import append_footprints
    from rtsflow.io.repo import transaction

    b = GRID.block_size
    window = Window(origin[0] * b, origin[1] * b, side * b, side * b)
    rng = np.random.default_rng(seed)
    winter = np.where(np.arange(n_obs) % 2 == 0, 2010, 2016)
    days = rng.integers(0, 150, n_obs)
    time_ = (np.array([f"{w}-11-01" for w in winter], dtype="datetime64[D]") + days).astype("datetime64[ns]")
    obs = {"time": time_, "hoa": np.full(n_obs, 40.0), "orbit": np.array(["ascending"] * n_obs, dtype=object),
           "sensor": np.array(["TanDEM-X"] * n_obs, dtype=object),
           "product_id": np.array([f"obs{i:06d}" for i in range(n_obs)], dtype=object),
           "kind": np.array(["insar"] * n_obs, dtype=object),
           "source": np.array([f"obs{i:06d}.json" for i in range(n_obs)], dtype=object),
           "content_hash": np.array(["0" * 64] * n_obs, dtype=object)}  # fmt: skip
    with transaction(path, command="synth", message=f"metadata-only cube ({n_obs} observations)", create=True) as tx:
        store = tx.store
        create_cube(store, grid=GRID, window=window, obs=obs)
        t = GRID.block_tiles
        parts = []
        for i in range(n_obs):
            if full:
                r0 = c0 = 0
                h = w = side
            else:
                h, w = rng.integers(1, footprint_blocks + 1, 2)
                r0, c0 = rng.integers(0, side - h + 1), rng.integers(0, side - w + 1)
            tr, tc = np.meshgrid(np.arange((origin[0] + r0) * t, (origin[0] + r0 + h) * t),
                                 np.arange((origin[1] + c0) * t, (origin[1] + c0 + w) * t), indexing="ij")  # fmt: skip
            parts.append(np.column_stack([np.full(tr.size, i), tr.ravel(), tc.ravel(), np.full(tr.size, 512 * 512)]))
        append_footprints(store, np.concatenate(parts), n_obs=n_obs)
        create_static(store, name="reference_dem", dtype="float32", attributes={"long_name": "reference"})
        create_static(store, name="water", dtype="uint8", attributes={"long_name": "water mask"})
    return window


def tiny_model(path: Path) -> Path:
    import torch

    from rtsflow.graph.features import MODEL_BANDS
    from rtsflow.model.checkpoint import save_checkpoint
    from rtsflow.model.factory import build_model
    from rtsflow.model.normalise import DEFAULT_NORMALISATION

    torch.manual_seed(0)
    net = build_model(architecture="unet", encoder="resnet18", in_channels=4, encoder_depth=3).eval()
    save_checkpoint(net, path, architecture="unet", encoder="resnet18", encoder_depth=3, bands=list(MODEL_BANDS),
                    normalisation=list(DEFAULT_NORMALISATION), tile_size=512)  # fmt: skip
    return path


def new_stages(cube: Path, run: Path, model: Path, client) -> list[tuple[str, int, int, float, float]]:
    """(stage, blocks, tasks, build s, submit s) of every stage of a run with co-registration."""
    import geopandas as gpd

    from pipelines.region import _density_specs, plan_region
    from rtsflow.config import parse_config
    from rtsflow.graph.coreg import CoregConfig
    from rtsflow.graph.dem import CompositeConfig
    from rtsflow.model.checkpoint import ModelSpec, read_record
    from rtsflow.model.inference import DEFAULT_TTA
    from rtsflow.stages.base import _run_block
    from rtsflow.stages.composite import composite_stage, coreg_obs_stage
    from rtsflow.stages.features import coreg_pair_stage, features_stage
    from rtsflow.stages.polygons import polygons_stage, zonal_stage
    from rtsflow.stages.probability import probability_stage

    config = parse_config({"cube": str(cube), "pairs": [[2010, 2016]], "model": str(model), "output": str(run),
                           "densities": {"cell_size": [10000]}})  # fmt: skip
    rows = []
    t0 = time.perf_counter()
    plan = plan_region(config)
    rows.append(("plan (footprints, selection)", len(plan.blocks), 0, time.perf_counter() - t0, 0.0))
    common = dict(cube=plan.cube, grid=plan.grid, domain=plan.domain, blocks=plan.blocks, footprints=plan.footprints,
                  composite=CompositeConfig())  # fmt: skip
    coreg = CoregConfig()
    record = read_record(model)
    spec = ModelSpec(path=str(model), sha256=record["weights_sha256"])
    composites = {e: run / f"composite_{e}.zarr" for e in plan.epochs}
    pair = (2010, 2016)
    pcommon = dict(pair=pair, grid=plan.grid, domain=plan.domain, blocks=plan.blocks)
    empty = gpd.GeoDataFrame({"_row": np.zeros(0, dtype=int)}, geometry=[], crs=plan.grid.crs)
    builders = []
    for e in plan.epochs:
        builders.append(lambda e=e: coreg_obs_stage(epoch=e, selected=plan.selected[e], reference="reference_dem",
                                                    water="water", coreg=coreg, out=run / f"coreg_obs_{e}.zarr",
                                                    **common))  # fmt: skip
        builders.append(lambda e=e: composite_stage(epoch=e, selected=plan.selected[e], coreg=coreg,
                                                    fits=run / f"coreg_obs_{e}.zarr", reference="reference_dem",
                                                    out=composites[e], **common))  # fmt: skip
    builders += [
        lambda: coreg_pair_stage(cube=plan.cube, composites=composites, water="water", coreg=coreg,
                                 out=run / "coreg_pair.zarr", **pcommon),
        lambda: features_stage(cube=plan.cube, composites=composites, water="water", coreg=coreg,
                               fits=run / "coreg_pair.zarr", years=6.0, out=run / "features.zarr", **pcommon),
        lambda: probability_stage(features=run / "features.zarr", spec=spec, record=record, halo=64, batch_size=4,
                                  device="cpu", precision="fp32", dtype="uint8", resources=None,
                                  out=run / "probability.zarr", tta=DEFAULT_TTA, **pcommon),
        lambda: polygons_stage(key="2010_2016", probability=run / "probability.zarr", grid=plan.grid,
                               domain=plan.domain, blocks=plan.blocks, threshold=0.5),
        lambda: zonal_stage(key="2010_2016", polygons=empty, features=run / "features.zarr", grid=plan.grid,
                            domain=plan.domain, blocks=plan.blocks, densities=_density_specs(config, plan)),
    ]  # fmt: skip
    for build in builders:
        t0 = time.perf_counter()
        stage = build()
        if stage.create is not None:
            stage.create()
        t_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        keys = [f"{stage.name}-{stage.key}-{j.block[0]}_{j.block[1]}-bench" for j in stage.jobs]
        futures = client.map(_run_block, stage.jobs, key=keys, function=stage.function, params=stage.params,
                             pure=False)  # fmt: skip
        client.cancel(futures)
        t_submit = time.perf_counter() - t0
        n_obs = sum(len(j.args.get("obs", ())) for j in stage.jobs)
        name = f"{stage.name} {stage.key}" + (f" ({n_obs} obs-block reads)" if n_obs else "")
        rows.append((name, len(plan.blocks), len(stage.jobs), t_build, t_submit))
    return rows


def old_graph(cube: Path, *, coreg_reference: bool) -> tuple[int, float]:
    """Tasks of the lazy whole-region feature graph and the time to build and materialise it."""
    from rtsflow.graph.features import pair_features
    from rtsflow.io.cube import cube_info, open_cube

    t0 = time.perf_counter()
    ds = open_cube(cube)
    feats, _ = pair_features(ds, grid=cube_info(cube).grid, earlier=2010, later=2016, water=ds["water"],
                             reference=ds["reference_dem"] if coreg_reference else None)  # fmt: skip
    n = len(dict(feats.__dask_graph__()))
    return n, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blocks-side", type=int, default=110, help="The pan-Arctic window is this many blocks a side.")
    p.add_argument("--obs", type=int, default=20_000, help="Observation footprints (two winters).")
    p.add_argument("--old-coreg", action="store_true", help="Also build the old graph with co-registration (slow).")
    p.add_argument("--keep", type=Path, default=None, help="Build the cubes here and keep them.")
    args = p.parse_args()
    print_header("scale (graph size)")
    from distributed import Client, LocalCluster

    root = args.keep or Path(tempfile.mkdtemp(prefix="rtsflow-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        cube = root / "panarctic.zarr"
        if cube.exists():
            shutil.rmtree(cube)
        metadata_cube(cube, side=args.blocks_side, n_obs=args.obs, origin=(50, 50))
        n_blocks = args.blocks_side**2
        print(f"metadata-only cube: {n_blocks} blocks of {GRID.block_size}² px, {args.obs} observation footprints "
              f"(≤ 4 blocks each), built in {time.perf_counter() - t0:.1f} s")  # fmt: skip
        model = tiny_model(root / "model")
        run = root / "run"
        shutil.rmtree(run, ignore_errors=True)
        run.mkdir()
        with LocalCluster(n_workers=0, host="127.0.0.1", dashboard_address=None) as lc, Client(lc) as client:
            rows = new_stages(cube, run, model, client)
        print()
        print("## new: block-wise stages, whole pan-Arctic region (co-registration on)")
        print(f"{'stage':<52} {'blocks':>7} {'tasks':>7} {'tasks/block':>16} {'build s':>8} {'submit s':>8}")
        for name, blocks, tasks, tb, ts in rows:
            per = f"{tasks / blocks:.2f} tasks/block" if tasks else ""
            print(f"{name:<52} {blocks:>7} {tasks:>7} {per:>16} {tb:>8.1f} {ts:>8.1f}")
        total = sum(r[3] + r[4] for r in rows)
        print(f"{'all stages':<52} {'':>7} {sum(r[2] for r in rows):>7} {'':>16} {total:>8.1f}  (build + submit)")

        print()
        print("## baseline: the previous lazy graph (pair_features), 8 x 8 blocks, every observation on every block")
        print(f"{'case':<40} {'tasks':>9} {'tasks/block':>12} {'tasks/obs/block':>16} {'build s':>8}")
        base = []
        cases = [(10, False), (100, False)] + ([(10, True)] if args.old_coreg else [])
        for n_obs, coreg in cases:
            small = root / f"old_{n_obs}_{int(coreg)}.zarr"
            shutil.rmtree(small, ignore_errors=True)
            metadata_cube(small, side=8, n_obs=n_obs, origin=(50, 50), full=True)
            n, t = old_graph(small, coreg_reference=coreg)
            label = f"64 blocks x {n_obs} obs" + (", co-reg to reference" if coreg else "")
            print(f"{label:<40} {n:>9} {n / 64:>12.0f} {n / 64 / n_obs:>16.1f} {t:>8.1f}")
            base.append((n_obs, coreg, n, t))
        worst = max(r[2] / r[1] for r in rows if r[2])
        print()
        per_block_old = base[-1][2] / 64 if not base[-1][1] else base[1][2] / 64
        print(f"ratio: new worst stage {worst:.2f} tasks/block vs old {per_block_old:.0f} tasks/block "
              f"at 100 obs ({per_block_old / worst:.0f}x fewer), and the new figure does not grow with observations")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
