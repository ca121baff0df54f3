"""A config-driven run over one region, as a list of block-wise stages.

products → cube (+ footprint index)
  per epoch:  coreg_obs (with a reference DEM) → composite
  per pair:   coreg_pair (with ``coregister``) → features → probability (GPU workers when there are any)
              → polygons → zonal → RTS table, densities, evaluation, report

Every stage is one submission of one task per grid block (:mod:`rtsflow.stages`);
a task reads its block plus a halo from the previous stage's store — for the
composites only the observations whose footprint meets the block — and writes
its block. Composites are written once per epoch and shared by every pair
that uses it. Each block is recorded in the run's status table as it
finishes, so a killed run keeps what was done, a failing block stops only the
blocks that read it, and re-running the same command does only what is
missing, failed or blocked.

The run works on its *domain*: the cube's window, or the config's region
snapped to blocks. Pixels outside the domain are treated as missing, so a
region run is the same computation as a run on a cube cut to that region.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from rtsflow.config import RunConfig
from rtsflow.runs import RunDirectory

__all__ = ["RegionPlan", "RegionResult", "RunIncomplete", "plan_region", "run_region"]


class RunIncomplete(RuntimeError):
    """Some blocks failed; their errors are in the status table. Re-running redoes them."""


@dataclass
class RegionResult:
    run: Path
    session: int
    pairs: dict[str, dict] = field(default_factory=dict)  # per pair: paths, counts, rates, metrics
    computed: dict[str, int] = field(default_factory=dict)  # blocks computed in this session, per stage
    failed: list[str] = field(default_factory=list)
    history: dict | None = None  # with several pairs: paths of rts_history.parquet and rts_periods.csv


@dataclass
class RegionPlan:
    """What a run works on, read from metadata only (cube attributes, obs coordinates, footprint index)."""

    cube: object  # CubeRef: the cube at the version this run reads
    grid: object
    domain: object
    blocks: list[tuple[int, int]]
    footprints: object
    selection: object  # pandas table, one row per observation (obs = position in the store)
    epochs: list[int]
    selected: dict[int, dict[int, tuple]]  # epoch -> {store position: (position, id, kind, HoA)} in time order
    water: str | None
    reference: str | None


def _pair_key(pair) -> str:
    return f"{pair[0]}_{pair[1]}"


def plan_region(config: RunConfig, *, version: str | None = None, build_index: bool = True,
                say=print) -> RegionPlan:  # fmt: skip
    """Blocks, observations per epoch and footprints of a run (no pixel is read unless the index must be built).

    ``version``: the cube version to read (default: the current one).
    """
    from rtsflow.io.cube import cube_group, cube_info, obs_coords
    from rtsflow.io.footprints import FootprintIndexError, build_footprints, read_footprints
    from rtsflow.io.repo import CubeRef, head
    from rtsflow.selection import WINTER_MONTHS, SelectionRules, select_observations

    ref = CubeRef(str(config.cube), version or head(config.cube))
    info = cube_info(ref)
    grid, window, n_obs = info.grid, info.window, info.n_obs
    try:
        footprints = read_footprints(ref, grid=grid, n_obs=n_obs)
    except FootprintIndexError as e:
        if not build_index or version is not None:
            raise
        say(f"{e}; building it now (reads each stored DEM shard once)", flush=True)
        build_footprints(config.cube, grid=grid, window=window, n_obs=n_obs)
        ref = CubeRef(str(config.cube), head(config.cube))
        footprints = read_footprints(ref, grid=grid, n_obs=n_obs)
    domain = window
    if config.region is not None:
        keep = grid.region_from_bounds(config.region.bbox, crs=config.region.crs)
        domain = keep.intersection(window)
        if domain is None:
            raise ValueError(f"region {config.region.bbox} ({config.region.crs}) does not overlap the cube "
                             f"{config.cube} ({grid.bounds(window)} in EPSG:3413)")  # fmt: skip
    blocks = [blk for blk, _ in grid.blocks(domain)]
    selection = select_observations(obs_coords(ref),
                                    rules=SelectionRules(months=WINTER_MONTHS, epoch=config.epoch))  # fmt: skip
    epochs = sorted({int(e) for p in config.pairs for e in p})
    used = selection[selection.selected]
    missing = [e for e in epochs if not (used.epoch == e).any()]
    if missing:
        raise ValueError(f"no selected observation in epoch(s) {missing} ({config.epoch}s) of {config.cube}; "
                         "`rtsflow info CUBE` lists the observations")  # fmt: skip
    selected = {}
    for e in epochs:
        rows = used[used.epoch == e].sort_values("time", kind="stable")
        selected[e] = {int(r.obs): (int(r.obs), str(r.product_id), str(r.kind), float(r.hoa))
                       for r in rows.itertuples()}  # fmt: skip
    variables = {name for name, _ in cube_group(ref).arrays()}
    water = config.water if config.water and config.water in variables else None
    reference = config.reference if config.reference and config.reference in variables else None
    return RegionPlan(cube=ref, grid=grid, domain=domain, blocks=blocks, footprints=footprints,
                      selection=selection, epochs=epochs, selected=selected, water=water, reference=reference)


def _ensure_index(config: RunConfig, *, say) -> None:
    """Build the cube's footprint index if its current version has none (one new version; reads each DEM shard)."""
    from rtsflow.io.cube import cube_info, cube_store
    from rtsflow.io.footprints import REBUILD_HINT, build_footprints, indexed_count

    info = cube_info(config.cube)
    if (indexed_count(cube_store(config.cube)) or 0) < info.n_obs:
        say(f"{config.cube}: the cube has no complete footprint index (`{REBUILD_HINT.format(cube=config.cube)}`); "
            "building it now (reads each stored DEM shard once)", flush=True)  # fmt: skip
        build_footprints(config.cube, grid=info.grid, window=info.window, n_obs=info.n_obs)


def _cube_version(rd, config: RunConfig, *, force: bool, say) -> str:
    """The cube version this run reads: recorded in ``cube_version.json`` by its first session and kept.

    A resumed run reads the version it started on, so blocks computed before and
    after a later ingest agree; ``--force`` starts over on the current version.
    """
    from rtsflow.io.repo import head
    from rtsflow.runs import _atomic_write

    path = rd.path / "cube_version.json"
    current = head(config.cube)
    if path.exists() and not force:
        recorded = json.loads(path.read_text())
        if recorded.get("cube") == str(Path(config.cube).absolute()):
            if recorded["version"] != current:
                say(f"the cube has a newer version ({current}) than this run's ({recorded['version']}); the run "
                    "keeps reading its own version so that all its blocks agree (--force: start over on the new "
                    "one)", flush=True)  # fmt: skip
            return recorded["version"]
    record = {"cube": str(Path(config.cube).absolute()), "version": current, "session": rd.session,
              "recorded_at": datetime.now(UTC).isoformat(timespec="seconds")}  # fmt: skip
    _atomic_write(path, json.dumps(record, indent=2) + "\n")
    return current


def _years(plan: RegionPlan, pair, epoch_kind: str) -> float:
    if epoch_kind == "winter":
        return float(pair[1] - pair[0])
    t = plan.selection[plan.selection.selected].groupby("epoch").time.mean()
    return float((t[pair[1]] - t[pair[0]]) / np.timedelta64(1, "D") / 365.25)


def _stage_stores(config: RunConfig) -> list[Path]:
    out = Path(config.output)
    names = [f"{kind}_{e}.zarr" for e in {e for p in config.pairs for e in p} for kind in ("composite", "coreg_obs")]
    names += [f"{kind}_{_pair_key(p)}.zarr" for p in config.pairs for kind in ("coreg_pair", "features", "probability")]
    return [out / n for n in names]


UPTO = ("features", "probability", None)


def run_region(
    config: RunConfig,
    *,
    client=None,
    cluster: str = "local",
    force: bool = False,
    progress: bool = True,
    upto: str | None = None,
) -> RegionResult:
    """Run (or resume) a region; see the module docstring. Raises :class:`RunIncomplete` if blocks failed.

    ``upto="features"`` (or ``"probability"``) stops after that stage (no model needed for features).
    """
    from rtsflow.io.lock import DirectoryLock
    from rtsflow.model.checkpoint import DEFAULT_MODEL, read_record

    if upto not in UPTO:
        raise ValueError(f"upto must be one of {UPTO}, got {upto!r}")
    if config.model is None and upto != "features":  # the model shipped with rtsflow (path + sha256 recorded)
        config = dataclasses.replace(config, model=str(DEFAULT_MODEL))
    rd = RunDirectory(Path(config.output))
    # The weights' hash is part of the run's identity: a retrained model never reuses old blocks.
    identity = config.to_dict()
    if upto != "features":
        identity["model_sha256"] = read_record(config.model)["weights_sha256"]
    # One run per directory at a time (a second one refuses, naming the first); held to the end.
    with DirectoryLock(rd.path / ".lock", what=f"run directory {rd.path}") as lock:
        if lock.took_over:
            o = lock.took_over
            print(f"took over the lock of a run that is gone (pid {o.get('pid')} on {o.get('host')}, "
                  f"started {o.get('started')})", flush=True)  # fmt: skip
        return _run_locked(config, rd, identity, client=client, cluster=cluster, force=force, progress=progress,
                           upto=upto)  # fmt: skip


def _run_locked(config: RunConfig, rd: RunDirectory, identity: dict, *, client, cluster, force, progress, upto):
    from rtsflow.cluster import connect, gpu_workers

    session = rd.start(identity, force=force)
    if force:
        for store in _stage_stores(config):
            shutil.rmtree(store, ignore_errors=True)
    result = RegionResult(run=rd.path, session=session)
    say = print if progress else (lambda *a, **k: None)
    say(f"run {config.name}: {rd.path} (session {session})", flush=True)
    spill = Path(config.workers.spill_directory) if config.workers.spill_directory else rd.path / "dask-spill"
    if client is None:
        spill.mkdir(parents=True, exist_ok=True)
        say(f"workers spill to {spill} (at most {config.workers.max_spill or 'unlimited'} each)", flush=True)
    own = nullcontext(client) if client is not None else connect(
        cluster, local_directory=spill, max_spill=config.workers.max_spill, memory_limit=config.workers.memory_limit,
        profile=config.workers.profile)
    with own as cl:
        if config.products:
            from rtsflow.ingest import ingest

            t0 = time.perf_counter()
            rep = ingest(list(config.products), cube=config.cube, progress=progress)
            rd.timing("ingest", time.perf_counter() - t0)
            say(f"ingest: {len(rep.added)} added, {len(rep.skipped)} already present", flush=True)
        _ensure_index(config, say=say)
        plan = plan_region(config, version=_cube_version(rd, config, force=force, say=say), say=say)
        say(f"cube {config.cube} at version {plan.cube.version}", flush=True)
        say(f"domain: {len(plan.blocks)} block(s) of {plan.grid.block_size}² px; epochs "
            f"{', '.join(f'{e} ({len(plan.selected[e])} obs)' for e in plan.epochs)}", flush=True)  # fmt: skip
        composites = _run_epochs(cl, rd, config, plan, result, say, progress)
        features = {tuple(p): _run_features(cl, rd, config, plan, p, composites, result, say, progress)
                    for p in config.pairs}  # fmt: skip
        ready = [p for p, path in features.items() if path is not None]
        if upto != "features" and ready:
            # GPU workers (jobqueue GPU jobs are requested here and released after) for every pair at once.
            pending = [p for p in ready if len(rd.done("probability", _pair_key(p))) < len(plan.blocks)]
            with gpu_workers(cl, needed=bool(pending), say=say) as (gpu_client, resources):
                probabilities = {p: _run_probability(gpu_client, rd, config, plan, p, features[p], result, resources,
                                                     say, progress) for p in ready}  # fmt: skip
            if upto is None:
                for p, ppath in probabilities.items():
                    if ppath is not None:
                        result.pairs[_pair_key(p)] = _reduce_pair(cl, rd, config, plan, p, features[p], ppath, say,
                                                                  progress, result)  # fmt: skip
                done = [p for p in config.pairs if result.pairs.get(_pair_key(p))]
                if len(config.pairs) > 1 and len(done) == len(config.pairs):
                    result.history = _write_history(rd, config, plan, say)
                    if config.report:  # again, now with the histories (new RTS per cell, period totals)
                        from rtsflow.report import write_report

                        for p in config.pairs:
                            write_report(rd.path, pair=_pair_key(p))
    if result.failed:
        raise RunIncomplete(
            f"{len(result.failed)} block(s) failed or wait for failed blocks (see {rd.status_path}); "
            "re-run the same command to redo them:\n  " + "\n  ".join(result.failed[:50])
        )
    return result


def _record(result: RegionResult, outcome, say) -> None:
    result.computed[f"{outcome.stage} {outcome.key}"] = outcome.computed
    result.failed += outcome.failed + outcome.blocked
    extra = f", {len(outcome.failed)} failed" if outcome.failed else ""
    extra += f", {len(outcome.blocked)} blocked by failed inputs" if outcome.blocked else ""
    say(f"{outcome.stage} {outcome.key}: {outcome.computed} block(s) computed, {outcome.already_done} already done, "
        f"{outcome.skipped} skipped{extra} ({outcome.seconds:.1f} s)", flush=True)  # fmt: skip


def _composite_config(config: RunConfig):
    from rtsflow.graph.dem import CompositeConfig
    from rtsflow.selection import WINTER_MONTHS, SelectionRules

    return CompositeConfig(rules=SelectionRules(months=WINTER_MONTHS, epoch=config.epoch))


def _run_epochs(client, rd, config: RunConfig, plan: RegionPlan, result, say, progress) -> dict[int, Path]:
    from rtsflow.graph.coreg import CoregConfig
    from rtsflow.stages.base import run_stage
    from rtsflow.stages.composite import composite_stage, coreg_obs_stage

    composite, coreg = _composite_config(config), CoregConfig()
    common = dict(cube=plan.cube, grid=plan.grid, domain=plan.domain, blocks=plan.blocks, footprints=plan.footprints,
                  composite=composite)  # fmt: skip
    stores = {}
    for epoch in plan.epochs:
        fits = None
        if plan.reference is not None:
            fits = rd.path / f"coreg_obs_{epoch}.zarr"
            stage = coreg_obs_stage(epoch=epoch, selected=plan.selected[epoch], reference=plan.reference,
                                    water=plan.water, coreg=coreg, out=fits, **common)  # fmt: skip
            _record(result, run_stage(client, rd, stage, progress=progress), say)
        out = rd.path / f"composite_{epoch}.zarr"
        stage = composite_stage(epoch=epoch, selected=plan.selected[epoch], coreg=coreg, fits=fits, out=out,
                                reference=plan.reference, **common)  # fmt: skip
        _record(result, run_stage(client, rd, stage, progress=progress), say)
        stores[epoch] = out
    return stores


def _run_features(client, rd, config: RunConfig, plan: RegionPlan, pair, composites, result, say,
                  progress: bool) -> Path | None:  # fmt: skip
    """The pair's co-registration and features stages; the features store, or ``None`` if blocks are missing."""
    from rtsflow.graph.coreg import CoregConfig
    from rtsflow.stages.base import run_stage
    from rtsflow.stages.features import coreg_pair_stage, features_stage

    key = _pair_key(pair)
    common = dict(pair=tuple(pair), grid=plan.grid, domain=plan.domain, blocks=plan.blocks)
    coreg = CoregConfig() if config.coregister else None
    fits = None
    if coreg is not None:
        fits = rd.path / f"coreg_pair_{key}.zarr"
        stage = coreg_pair_stage(cube=plan.cube, composites=composites, water=plan.water, coreg=coreg, out=fits,
                                 **common)  # fmt: skip
        _record(result, run_stage(client, rd, stage, progress=progress), say)
    fpath = rd.path / f"features_{key}.zarr"
    stage = features_stage(cube=plan.cube, composites=composites, water=plan.water, coreg=coreg, fits=fits,
                           years=_years(plan, pair, config.epoch), selection=plan.selection, out=fpath,
                           **common)  # fmt: skip
    outcome = run_stage(client, rd, stage, progress=progress)
    _record(result, outcome, say)
    return fpath if len(rd.done("features", key)) == len(plan.blocks) else None


def _run_probability(client, rd, config: RunConfig, plan: RegionPlan, pair, fpath: Path, result, resources, say,
                     progress: bool) -> Path | None:  # fmt: skip
    """The pair's probability stage; the probability store, or ``None`` if blocks are missing."""
    from rtsflow.model.checkpoint import ModelSpec, read_record
    from rtsflow.stages.base import block_name, run_stage
    from rtsflow.stages.probability import probability_stage

    key = _pair_key(pair)
    record = read_record(config.model)
    spec = ModelSpec(path=config.model, sha256=record["weights_sha256"])
    status = rd.status()
    rows = status[(status.stage == "features") & (status.key == key) & (status.status == "done")]
    empty = {b for b in plan.blocks if block_name(b) in set(rows.block[rows.n_valid.astype(str) == "0"])}
    inf = config.inference
    ppath = rd.path / f"probability_{key}.zarr"
    stage = probability_stage(pair=tuple(pair), grid=plan.grid, domain=plan.domain, blocks=plan.blocks,
                              features=fpath, spec=spec, record=record, halo=inf.halo, batch_size=inf.batch,
                              device=inf.device, precision=inf.precision, dtype=inf.dtype, resources=resources,
                              out=ppath, skip=sorted(empty), compile=inf.compile, tta=inf.tta)  # fmt: skip
    _record(result, run_stage(client, rd, stage, progress=progress), say)
    return ppath if len(rd.done("probability", key)) == len(plan.blocks) else None


def _write_history(rd: RunDirectory, config: RunConfig, plan: RegionPlan, say) -> dict:
    """Link the pairs' RTS into histories (:mod:`rtsflow.history`): ``rts_history.parquet``, ``rts_periods.csv``."""
    import geopandas as gpd

    from rtsflow.history import Period, link_periods, period_totals
    from rtsflow.io.vectors import run_metadata, write_vectors

    periods = []
    for pair in config.pairs:
        rts = gpd.read_parquet(rd.path / f"rts_{_pair_key(pair)}.parquet")
        periods.append(Period(key=_pair_key(pair), start=int(pair[0]), end=int(pair[1]), rts=rts[rts.kept]))
    history = link_periods(periods)
    years = {_pair_key(p): _years(plan, p, config.epoch) for p in config.pairs}
    totals = period_totals(history, years=years)
    meta = run_metadata(command="run", run=str(rd.path), pairs=[_pair_key(p) for p in config.pairs],
                        cube=plan.cube.path, cube_version=plan.cube.version)  # fmt: skip
    path = write_vectors(history, rd.path / "rts_history.parquet", metadata=meta)
    totals.to_csv(rd.path / "rts_periods.csv", index=False)
    counts = ", ".join(f"{s} {n}" for s, n in history.status.value_counts().items())
    say(f"history: {history.history_id.nunique()} RTS across {len(periods)} periods ({counts}); {path}", flush=True)
    return {"history": str(path), "periods": str(rd.path / "rts_periods.csv")}


VOID_FILLED = ("land_area_km2", "volume_void_filled_m3", "volume_void_filled_sigma_m3")  # summary fields


def _number_or_none(value) -> float | None:
    return float(value) if np.isfinite(value) else None


def _density_specs(config: RunConfig, plan: RegionPlan):
    import geopandas as gpd
    import shapely

    from rtsflow.stages.polygons import DensitySpec

    specs = [DensitySpec(label=f"cells_{int(c)}m", cell_size=c) for c in config.densities.cell_size]
    if config.densities.sites:
        sites = gpd.read_file(config.densities.sites).to_crs(plan.grid.crs).reset_index(drop=True)
        specs.append(DensitySpec(label="sites", regions=sites, name=config.densities.site_name))
    # The whole domain as one site: the run's headline density.
    box = gpd.GeoDataFrame({"name": ["region"]}, geometry=[shapely.box(*plan.grid.bounds(plan.domain))],
                           crs=plan.grid.crs)  # fmt: skip
    specs.append(DensitySpec(label="region", regions=box))
    return specs


def _reduce_pair(client, rd: RunDirectory, config: RunConfig, plan: RegionPlan, pair, fpath: Path, ppath: Path,
                 say, progress: bool, result: RegionResult) -> dict | None:  # fmt: skip
    from rtsflow.evaluate import evaluate_polygons
    from rtsflow.io.probability import open_probability
    from rtsflow.io.vectors import run_metadata, write_vectors
    from rtsflow.model.train import read_labels
    from rtsflow.stages.polygons import reduce_pair

    key = _pair_key(pair)
    out = rd.path
    summary_path = out / f"summary_{key}.json"
    if "all" in rd.done("reduce", key) and summary_path.exists():  # nothing upstream changed since
        return json.loads(summary_path.read_text())
    t0 = time.perf_counter()
    model_sha = open_probability(ppath).attrs["model_sha256"]
    meta = run_metadata(command="run", run=str(out), pair=key, model_sha256=model_sha, threshold=config.threshold,
                        filters=config.filters.__dict__, cube=plan.cube.path, cube_version=plan.cube.version,
                        grow_outlines=config.grow_outlines and dataclasses.asdict(config.grow_outlines))  # fmt: skip
    years = _years(plan, pair, config.epoch)
    rts, tables, failed = reduce_pair(
        client, rd, key=key, probability=ppath, features=fpath, grid=plan.grid, domain=plan.domain,
        blocks=plan.blocks, threshold=config.threshold, filters=config.filters,
        correlation_length=config.correlation_length, densities=_density_specs(config, plan), years=years,
        period=(int(pair[0]), int(pair[1])), carbon=config.carbon, progress=progress,
        terrain=rd.path / f"composite_{pair[0]}.zarr", grow_outlines=config.grow_outlines,
        reference=(plan.cube, plan.reference) if plan.reference is not None else None,
    )  # fmt: skip
    if rts is None:
        result.failed += failed
        return None
    rts_path = write_vectors(rts, out / f"rts_{key}.parquet", metadata=meta)
    kept = rts[rts.kept]
    paths = {name: str(write_vectors(table, out / f"densities_{key}_{name}.parquet", metadata=meta))
             for name, table in tables.items()}  # fmt: skip
    region = tables["region"].iloc[0]
    summary = {
        "pair": key,
        "rts": str(rts_path),
        "probability": str(ppath),
        "features": str(fpath),
        "densities": paths,
        "n_polygons": len(rts),
        "n_rts": int(rts.kept.sum()),
        "years": years,
        "area_m2": float(kept.area_m2.sum()) if len(kept) else 0.0,
        "volume_m3": float(kept.volume_m3.sum()) if len(kept) else 0.0,
        "volume_sigma_m3": float(np.sqrt((kept.volume_sigma_m3**2).sum())) if len(kept) else 0.0,
        "valid_area_km2": float(region.valid_area_km2),
        "volume_change_rate_m3_per_yr_km2": float(region.volume_change_rate_m3_per_yr_km2),
        "area_density_m2_per_km2": float(kept.area_m2.sum() / region.valid_area_km2) if len(kept) else 0.0,
        # The volume carried over the land under the quality mask (null without a reference DEM).
        **{k: _number_or_none(region[k]) for k in VOID_FILLED},
        "error_model": rts.attrs.get("error_model"),
    }
    if config.carbon is not None:
        summary |= {k: float(region[k]) for k in ("carbon_kg", "carbon_sigma_kg", "carbon_rate_pg_per_yr",
                                                  "carbon_rate_sigma_pg_per_yr")}  # fmt: skip
    if config.truth is not None:
        truth = read_labels(config.truth.path, where=config.truth.where)
        ignore = None
        if config.truth.min_coverage is not None and len(truth):
            from rtsflow.graph.masswasting import FIXED_CORRELATION_LENGTH, measure
            from rtsflow.io.features import open_features

            shapes = truth[["geometry"]].to_crs(plan.grid.crs).reset_index(drop=True)
            sums = measure(shapes, open_features(fpath), grid=plan.grid, correlation_length=FIXED_CORRELATION_LENGTH)
            coverage = client.compute(sums).result().coverage
            ignore = ~(np.nan_to_num(coverage.to_numpy()) >= config.truth.min_coverage)
        metrics = evaluate_polygons(kept.to_crs(truth.crs), truth, ignore=ignore)
        summary["metrics"] = metrics.to_dict()
        (out / f"metrics_{key}.json").write_text(metrics.to_json() + "\n")
    if config.report:
        from rtsflow.report import write_report

        summary_path.write_text(json.dumps(summary, indent=2, default=float) + "\n")
        t1 = time.perf_counter()
        summary["report"] = str(write_report(rd.path, pair=key))
        rd.timing(f"report {key}", time.perf_counter() - t1)
    summary_path.write_text(json.dumps(summary, indent=2, default=float) + "\n")
    rd.record(stage="reduce", key=key, block="all", status="done", seconds=time.perf_counter() - t0, n_valid=len(rts))
    say(f"reduce {key}: {summary['n_rts']} RTS kept of {summary['n_polygons']} polygons", flush=True)
    return summary
