"""A config-driven run over one region: products → cube → per-block features → per-block inference → RTS → report.

Every grid block is a unit of work for the two expensive stages (features on
CPU workers, inference on GPU-tagged workers when the cluster has any). Blocks
are submitted together and recorded in the run's status table as they finish,
so a killed run keeps what was done, a failing block does not stop the others,
and re-running the same command does only what is missing or failed. The
reduction (polygons, volumes, densities), the evaluation and the report run
per pair once all of its blocks are done.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import xarray as xr

from rtsflow.config import RunConfig
from rtsflow.runs import RunDirectory

__all__ = ["RegionResult", "RunIncomplete", "run_region"]


class RunIncomplete(RuntimeError):
    """Some blocks failed; their errors are in the status table. Re-running redoes them."""


@dataclass
class RegionResult:
    run: Path
    session: int
    pairs: dict[str, dict] = field(default_factory=dict)  # per pair: paths, counts, rates, metrics
    computed: dict[str, int] = field(default_factory=dict)  # blocks computed in this session, per stage
    failed: list[str] = field(default_factory=list)


def _pair_key(pair) -> str:
    return f"{pair[0]}_{pair[1]}"


def _count_valid(path: str, variable: str, rows: slice, cols: slice, _written=None) -> int:
    """Valid (finite) pixels of a written block, read back from the store (runs after the write)."""
    ds = xr.open_zarr(path, consolidated=False, chunks=None)
    return int(np.isfinite(ds[variable].isel(y=rows, x=cols).values).sum())


def _blocks(feats: xr.Dataset, grid, config: RunConfig) -> list[tuple[str, slice, slice]]:
    """``(block id, rows, cols)`` of every grid block of the dataset (within the config's region)."""
    from rtsflow.graph.chunks import chunk_windows

    window = grid.window_from_coords(feats["x"].values, feats["y"].values)
    keep = None
    if config.region is not None:
        keep = grid.region_from_bounds(config.region.bbox, crs=config.region.crs)
    out = []
    b = grid.block_size
    for _, _, w in chunk_windows(feats["ddem"].data.chunks, window):
        if keep is not None and w.intersection(keep) is None:
            continue
        rows = slice(w.row - window.row, w.row_stop - window.row)
        cols = slice(w.col - window.col, w.col_stop - window.col)
        out.append((f"{w.row // b}_{w.col // b}", rows, cols))
    return out


def _run_blocks(client, rd: RunDirectory, *, stage: str, pair: str, jobs: dict, store: Path, variable: str,
                resources=None, progress: bool = False) -> tuple[int, list]:  # fmt: skip
    """Submit ``{block: (delayed region write, rows, cols)}``; record each block as it finishes.

    The valid-pixel count is read back from the store by a small task that waits
    for the write (merging it into the write's graph would compute the block twice).
    Returns (blocks computed, failures).
    """
    from distributed import as_completed

    if not jobs:
        return 0, []
    futures = {}
    starts = {}
    for block, (job, rows, cols) in jobs.items():
        write = client.compute(job, resources=resources) if resources else client.compute(job)
        fut = client.submit(_count_valid, str(store), variable, rows, cols, write, pure=False)
        futures[fut] = block
        starts[block] = time.perf_counter()
    from tqdm.auto import tqdm

    failed = []
    bar = tqdm(total=len(futures), desc=f"{stage} {pair}", unit="block", disable=not progress)
    for fut in as_completed(list(futures)):
        bar.update()
        block = futures[fut]
        seconds = time.perf_counter() - starts[block]
        if fut.status == "error":
            err = fut.exception()
            rd.record(
                stage=stage,
                pair=pair,
                block=block,
                status="failed",
                seconds=seconds,
                error=f"{type(err).__name__}: {err}",
            )
            failed.append(f"{stage} {pair} block {block}: {type(err).__name__}: {err}")
        else:
            rd.record(stage=stage, pair=pair, block=block, status="done", seconds=seconds, n_valid=int(fut.result()))
    bar.close()
    return len(jobs), failed


def _template(ds: xr.Dataset, path: Path, *, grid, encoding: dict | None = None) -> None:
    """Create a store's metadata and coordinates (no pixels) unless it exists."""
    from rtsflow.io.features import grid_encoding

    if (path / "zarr.json").exists():
        return
    out = ds.copy()
    out.attrs.update(grid.to_attrs())
    enc = grid_encoding(out, grid, encoding)
    out.to_zarr(str(path), mode="w", compute=False, encoding=enc, zarr_format=3, consolidated=False)


def _region_write(part: xr.Dataset, path: Path, rows: slice, cols: slice):
    """A lazy write of ``part`` (already cut to the block) into the block's region of the store."""
    part = part.drop_vars([c for c in part.coords if c not in ("x", "y")])
    return part.to_zarr(str(path), region={"y": rows, "x": cols}, compute=False, zarr_format=3, consolidated=False)


def run_region(
    config: RunConfig, *, client=None, cluster: str = "local", force: bool = False, progress: bool = True
) -> RegionResult:
    """Run (or resume) a region; see the module docstring. Raises :class:`RunIncomplete` if blocks failed."""
    from rtsflow.cluster import connect, gpu_resources
    from rtsflow.model.checkpoint import read_record

    rd = RunDirectory(Path(config.output))
    # The weights' hash is part of the run's identity: a retrained model never reuses old blocks.
    session = rd.start({**config.to_dict(), "model_sha256": read_record(config.model)["weights_sha256"]}, force=force)
    result = RegionResult(run=rd.path, session=session)
    say = print if progress else (lambda *a, **k: None)
    say(f"run {config.name}: {rd.path} (session {session})", flush=True)
    with nullcontext(client) if client is not None else connect(cluster) as cl:
        if config.products:
            from rtsflow.ingest import ingest

            t0 = time.perf_counter()
            rep = ingest(list(config.products), cube=config.cube)
            rd.timing("ingest", time.perf_counter() - t0)
            say(f"ingest: {len(rep.added)} added, {len(rep.skipped)} already present", flush=True)
        for pair in config.pairs:
            _run_pair(cl, rd, config, pair, result, gpu_resources(cl), say, progress)
    if result.failed:
        raise RunIncomplete(
            f"{len(result.failed)} block(s) failed (see {rd.status_path}); re-run the same command to redo them:\n  "
            + "\n  ".join(result.failed)
        )
    return result


def _run_pair(client, rd, config: RunConfig, pair, result: RegionResult, gpu, say, progress: bool) -> None:
    from rtsflow.graph.coreg import CoregConfig
    from rtsflow.graph.dem import CompositeConfig
    from rtsflow.graph.features import pair_features
    from rtsflow.io.cube import cube_info, open_cube
    from rtsflow.io.features import open_features
    from rtsflow.io.probability import PROBABILITY_DTYPES
    from rtsflow.model.checkpoint import ModelSpec, read_record
    from rtsflow.model.inference import predict_window
    from rtsflow.selection import WINTER_MONTHS, SelectionRules

    key = _pair_key(pair)
    out = rd.path
    ds = open_cube(config.cube)
    grid = cube_info(config.cube).grid
    water = ds[config.water] if config.water and config.water in ds else None
    reference = ds[config.reference] if config.reference and config.reference in ds else None
    rules = SelectionRules(months=WINTER_MONTHS, epoch=config.epoch)
    feats, selection = pair_features(
        ds,
        grid=grid,
        earlier=pair[0],
        later=pair[1],
        water=water,
        reference=reference,
        composite=CompositeConfig(rules=rules),
        coreg=CoregConfig() if config.coregister else None,
    )
    pixel_vars = [n for n, v in feats.data_vars.items() if v.dims == ("y", "x")]
    feats = feats[pixel_vars]
    feats.attrs["observation_selection"] = json.dumps(
        selection.assign(time=selection.time.astype(str)).to_dict(orient="records")
    )
    blocks = _blocks(feats, grid, config)
    fpath = out / f"features_{key}.zarr"
    _template(feats, fpath, grid=grid)

    # Stage 1: features, per block (CPU workers).
    t0 = time.perf_counter()
    done = rd.done("features", key)
    jobs = {}
    for block, rows, cols in blocks:
        if block in done:
            continue
        jobs[block] = (_region_write(feats.isel(y=rows, x=cols), fpath, rows, cols), rows, cols)
    n, failed = _run_blocks(client, rd, stage="features", pair=key, jobs=jobs, store=fpath, variable="ddem",
                            progress=progress)  # fmt: skip
    result.computed[f"features {key}"] = n
    result.failed += failed
    rd.timing(f"features {key}", time.perf_counter() - t0)
    say(f"features {key}: {n} block(s) computed, {len(done)} already done, {len(failed)} failed", flush=True)

    # Stage 2: inference, per block (GPU-tagged workers when there are any). Windows read
    # context from neighbouring blocks, so it waits until every block has its features.
    if failed or set(rd.done("features", key)) < {b for b, _, _ in blocks}:
        return
    record = read_record(config.model)
    spec = ModelSpec(path=config.model, sha256=record["weights_sha256"])
    ppath = out / f"probability_{key}.zarr"
    status = rd.status()
    fdone = status[(status.stage == "features") & (status.pair == key)]
    n_valid = dict(zip(fdone.block, fdone.n_valid, strict=True))
    store = open_features(fpath)
    empty = xr.DataArray(
        da.full(store["ddem"].shape, np.nan, dtype=np.float32, chunks=store["ddem"].data.chunks),
        dims=("y", "x"),
        coords={"x": store["x"], "y": store["y"]},
        name="probability",
    )
    tmpl = empty.to_dataset()
    tmpl.attrs.update(
        model_sha256=spec.sha256,
        model=spec.path,
        features=str(fpath),
        threshold=record["threshold"],
        title="rtsflow RTS probability",
    )
    _template(tmpl, ppath, grid=grid, encoding={"probability": dict(PROBABILITY_DTYPES[config.inference.dtype])})
    t0 = time.perf_counter()
    done = rd.done("predict", key)
    jobs = {}
    inf = config.inference
    for block, rows, cols in blocks:
        if block in done:
            continue
        if int(n_valid[block]) == 0:
            rd.record(
                stage="predict",
                pair=key,
                block=block,
                status="skipped",
                seconds=0.0,
                n_valid=0,
                error="no valid pixels",
            )
            continue
        prob = predict_window(
            store,
            rows=rows,
            cols=cols,
            spec=spec,
            bands=record["bands"],
            halo=inf.halo,
            tile=record["tile_size"],
            batch_size=inf.batch_size,
            device=inf.device,
            precision=inf.precision,
            grid=grid,
        )
        jobs[block] = (_region_write(prob.to_dataset(), ppath, rows, cols), rows, cols)
    n, failed = _run_blocks(client, rd, stage="predict", pair=key, jobs=jobs, store=ppath, variable="probability",
                            resources=gpu, progress=progress)  # fmt: skip
    result.computed[f"predict {key}"] = n
    result.failed += failed
    rd.timing(f"predict {key}", time.perf_counter() - t0)
    where = "GPU-tagged workers" if gpu else "all workers"
    say(f"predict {key}: {n} block(s) computed on {where}, {len(done)} already done, {len(failed)} failed", flush=True)

    expected = {b for b, _, _ in blocks}
    if failed or set(rd.done("predict", key)) < expected:
        return
    result.pairs[key] = _reduce_pair(rd, config, key, fpath, ppath, grid, say)


def _reduce_pair(rd: RunDirectory, config: RunConfig, key: str, fpath: Path, ppath: Path, grid, say) -> dict:
    import geopandas as gpd

    from rtsflow.evaluate import evaluate_polygons
    from rtsflow.graph.densities import regional_densities
    from rtsflow.io.features import open_features
    from rtsflow.io.probability import open_probability
    from rtsflow.io.vectors import run_metadata, write_vectors
    from rtsflow.model.train import read_labels
    from rtsflow.reduce import detect_rts

    t0 = time.perf_counter()
    out = rd.path
    feats = open_features(fpath)
    prob = open_probability(ppath)
    meta = run_metadata(
        command="run",
        run=str(out),
        pair=key,
        model_sha256=prob.attrs["model_sha256"],
        threshold=config.threshold,
        filters=config.filters.__dict__,
    )
    rts = detect_rts(
        prob,
        feats,
        grid=grid,
        threshold=config.threshold,
        filters=config.filters,
        correlation_length=config.correlation_length,
    ).compute()
    rts_path = write_vectors(rts, out / f"rts_{key}.parquet", metadata=meta)
    kept = rts[rts.kept]
    jobs = {
        f"cells_{int(c)}m": regional_densities(kept, feats, grid=grid, cell_size=c) for c in config.densities.cell_size
    }
    if config.densities.sites:
        sites = gpd.read_file(config.densities.sites)
        jobs["sites"] = regional_densities(kept, feats, grid=grid, regions=sites, name=config.densities.site_name)
    # The whole region as one site: the run's headline density.
    valid_box = gpd.GeoDataFrame({"name": ["region"]}, geometry=[_bbox(feats, grid)], crs=grid.crs)
    jobs["region"] = regional_densities(kept, feats, grid=grid, regions=valid_box)
    tables = dict(zip(jobs, dask.compute(*jobs.values()), strict=True))
    paths = {}
    for name, table in tables.items():
        paths[name] = str(write_vectors(table, out / f"densities_{key}_{name}.parquet", metadata=meta))
    region = tables["region"].iloc[0]
    summary = {
        "pair": key,
        "rts": str(rts_path),
        "probability": str(ppath),
        "features": str(fpath),
        "densities": paths,
        "n_polygons": len(rts),
        "n_rts": int(rts.kept.sum()),
        "years": float(feats.attrs.get("years", np.nan)),
        "area_m2": float(kept.area_m2.sum()) if len(kept) else 0.0,
        "volume_m3": float(kept.volume_m3.sum()) if len(kept) else 0.0,
        "volume_sigma_m3": float(np.sqrt((kept.volume_sigma_m3**2).sum())) if len(kept) else 0.0,
        "valid_area_km2": float(region.valid_area_km2),
        "volume_change_rate_m3_per_yr_km2": float(region.volume_change_rate_m3_per_yr_km2),
        "area_density_m2_per_km2": float(kept.area_m2.sum() / region.valid_area_km2) if len(kept) else 0.0,
    }
    if config.truth is not None:
        truth = read_labels(config.truth.path, where=config.truth.where)
        metrics = evaluate_polygons(kept.to_crs(truth.crs), truth)
        summary["metrics"] = metrics.to_dict()
        (out / f"metrics_{key}.json").write_text(metrics.to_json() + "\n")
    (out / f"summary_{key}.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    rd.record(stage="reduce", pair=key, block="all", status="done", seconds=time.perf_counter() - t0, n_valid=len(rts))
    say(f"reduce {key}: {summary['n_rts']} RTS kept of {summary['n_polygons']} polygons", flush=True)
    if config.report:
        from rtsflow.report import write_report

        t0 = time.perf_counter()
        report = write_report(rd.path, pair=key)
        summary["report"] = str(report)
        rd.timing(f"report {key}", time.perf_counter() - t0)
    return summary


def _bbox(feats: xr.Dataset, grid):
    import shapely

    w = grid.window_from_coords(feats["x"].values, feats["y"].values)
    return shapely.box(*grid.bounds(w))
