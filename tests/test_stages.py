"""Block-wise stages: equal to the lazy API, one task per block, footprint index, no Dask warnings.

A 3 × 3 km synthetic region (misregistered observations, a reference DEM and a
water mask) on a grid with 128-px blocks spans 3-4 blocks a side, so fits,
neighbour fallbacks, halos and stitching all cross block edges.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
import yaml
import zarr
from distributed import Client, LocalCluster, get_task_stream

from pipelines.region import plan_region, run_region
from rtsflow.carbon import CarbonModel
from rtsflow.config import parse_config
from rtsflow.graph.dem import seasonal_composites
from rtsflow.graph.densities import regional_densities
from rtsflow.graph.features import MODEL_BANDS, pair_features
from rtsflow.grid import Grid
from rtsflow.ingest import ingest, ingest_mask, ingest_reference_dem
from rtsflow.io.cube import cube_info, cube_store, open_cube
from rtsflow.io.features import open_features
from rtsflow.io.footprints import FootprintIndexError, build_footprints, read_footprints
from rtsflow.io.probability import open_probability, write_probability
from rtsflow.io.repo import head, transaction, zarr_store
from rtsflow.kernels.coreg import FIT_FIELDS, STATUS
from rtsflow.kernels.footprint import tile_valid_counts
from rtsflow.model.checkpoint import save_checkpoint
from rtsflow.model.factory import build_model
from rtsflow.model.inference import predict
from rtsflow.model.normalise import DEFAULT_NORMALISATION
from rtsflow.reduce import detect_rts

GRID = Grid(resolution=10.0, tile_size=64, block_tiles=2)  # 128-px blocks
PAIR = (2010, 2016)
KEY = "2010_2016"


def _cluster():
    return LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None)


@pytest.fixture(scope="module")
def region(tmp_path_factory):
    from rtsflow.synth.generator import SynthConfig, synthesize

    root = tmp_path_factory.mktemp("stages")
    # Unwrapping blunders too: the stage screens them as the lazy graph does (tests/test_blunders.py).
    config = SynthConfig(seed=21, size_km=(3.0, 3.0), winters=PAIR, obs_per_winter=3, slump_density=3.0,
                         blunders_per_100km2=500.0)
    synth = synthesize(root / "region", config=config)
    cube = root / "cube.zarr"
    ingest(synth.products, cube=cube, grid=GRID, scheduler="threads")
    ingest_mask(synth.truth_rasters["water"], cube=cube, scheduler="threads")
    ingest_reference_dem(synth.truth_rasters["reference_dem"], cube=cube, scheduler="threads")
    doc = {"name": "stages", "cube": str(cube), "pairs": [list(PAIR)], "model": str(root / "model"),
           "reference": "reference_dem", "coregister": True, "inference": {"halo": 32},
           "densities": {"cell_size": [1000]}, "report": False}  # fmt: skip
    return {"root": root, "cube": cube, "doc": doc, "synth": synth}


@pytest.fixture(scope="module")
def model(region, lazy):
    """An untrained model whose output bias puts ~15 % of the region above 0.5: many polygons to stitch."""
    torch.manual_seed(0)
    net = build_model(architecture="unet", encoder="resnet18", in_channels=4, encoder_depth=3).eval()
    kw = dict(architecture="unet", encoder="resnet18", encoder_depth=3, bands=list(MODEL_BANDS),
              normalisation=list(DEFAULT_NORMALISATION), tile_size=64)  # fmt: skip
    spec = save_checkpoint(net, region["root"] / "model0", **kw)
    p = predict(lazy[0], spec=spec, bands=list(MODEL_BANDS), halo=32, tile=64, grid=GRID).values
    p = np.clip(p[np.isfinite(p)], 1e-6, 1 - 1e-6)
    with torch.no_grad():
        net.segmentation_head[0].bias -= float(np.quantile(np.log(p / (1 - p)), 0.85))
    return save_checkpoint(net, region["root"] / "model", **kw)


@pytest.fixture(scope="module")
def run(region, model):
    out = region["root"] / "run"
    config = parse_config({**region["doc"], "output": str(out)}, base=region["root"])
    with _cluster() as lc, Client(lc) as client:
        with get_task_stream(client) as ts:
            result = run_region(config, client=client, progress=False)
        tasks = pd.Series([t["key"] for t in ts.data]).str.split("-").str[0].value_counts().to_dict()
    return {"out": out, "result": result, "tasks": tasks, "config": config}


LAZY_FITS: dict[str, int] = {}  # xDEM fits run by the `lazy` fixture's two graphs


@pytest.fixture(scope="module")
def lazy(region):
    import rtsflow.graph.coreg

    ds = open_cube(region["cube"])
    feats, _ = pair_features(ds, grid=GRID, earlier=PAIR[0], later=PAIR[1], water=ds["water"],
                             reference=ds["reference_dem"])  # fmt: skip
    comps, _ = seasonal_composites(ds, winters=list(PAIR), reference=ds["reference_dem"], water=ds["water"])
    fits, fit_block = [], rtsflow.graph.coreg.fit_block

    def counted(*args, **kwargs):
        fits.append(1)
        return fit_block(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:  # counts the xDEM fits each graph runs
        mp.setattr(rtsflow.graph.coreg, "fit_block", counted)
        feats = feats.compute(scheduler="threads")
        LAZY_FITS["features"] = len(fits)
        comps = comps.compute(scheduler="threads")
        LAZY_FITS["composites"] = len(fits) - LAZY_FITS["features"]
    return feats, comps


def test_the_region_spans_several_blocks_and_exercises_fallbacks(region, lazy):
    info = cube_info(region["cube"])
    assert info.window.height // GRID.block_size >= 3 and info.window.width // GRID.block_size >= 3
    _, comps = lazy
    status = comps["obs_coreg_status"].values
    assert (status == STATUS["fit"]).any() and (status == STATUS["neighbours"]).any()


def test_the_lazy_graph_fits_each_block_once(lazy):
    """One xDEM fit per (aligned observation, block) and per block of the pair, not one per consumer.

    (A ``dask.delayed`` call on a dask array copies that array's graph under new keys: fits built that
    way re-ran every upstream fit and took 15x as long.)
    """
    feats, comps = lazy
    aligned, blocks = comps.sizes["aligned_obs"], comps.sizes["block_y"] * comps.sizes["block_x"]
    assert blocks >= 9 and aligned >= 4
    assert LAZY_FITS["composites"] == aligned * blocks
    assert LAZY_FITS["features"] == aligned * blocks + feats.sizes["block_y"] * feats.sizes["block_x"]


def test_composites_equal_the_lazy_graph(run, lazy):
    _, comps = lazy
    for epoch in PAIR:
        store = xr.open_zarr(zarr_store(run["out"] / f"composite_{epoch}.zarr"), consolidated=False)
        for name in ("dem", "sigma", "n_obs"):
            np.testing.assert_array_equal(store[name].values, comps[name].sel(winter=epoch).values, err_msg=name)
        assert np.isfinite(store["dem"].values).sum() > 50_000


def test_features_equal_the_lazy_graph(run, lazy):
    feats, _ = lazy
    store = open_features(run["out"] / f"features_{KEY}.zarr").compute()
    for name in (*MODEL_BANDS, "quality", "water", "n_obs", *(f"coreg_{f}" for f in FIT_FIELDS)):
        np.testing.assert_array_equal(store[name].values, feats[name].values, err_msg=name)
    assert store.attrs["years"] == feats.attrs["years"] == 6.0


def test_probability_polygons_and_densities_equal_the_lazy_api(region, model, run, lazy, tmp_path):
    feats = open_features(run["out"] / f"features_{KEY}.zarr")
    prob = predict(feats, spec=model, bands=list(MODEL_BANDS), halo=32, tile=64, grid=GRID)
    with _cluster() as lc, Client(lc):
        write_probability(prob, tmp_path / "lazy.zarr", grid=GRID)
    expected = open_probability(tmp_path / "lazy.zarr")
    got = open_probability(run["out"] / f"probability_{KEY}.zarr")
    np.testing.assert_array_equal(got.values, expected.values)
    # The run's default carbon model: the lazy API computes the same carbon columns when given it.
    # and the terrain under each RTS from the earlier composite.
    dem = lazy[1]["dem"].sel(winter=PAIR[0])
    rts = detect_rts(expected, feats, grid=GRID, carbon=CarbonModel(), dem=dem).compute(scheduler="threads")
    # Carbon is mobilised by the loss: every kept RTS that lost ground has some (a kept pure gain, e.g. debris
    # or a heap the default filters keep, has none).
    kept = rts[rts.kept]
    assert (kept.carbon_kg >= 0).all() and (kept.carbon_kg[kept.loss_m3 < 0] > 0).all() and (kept.loss_m3 < 0).any()
    assert rts.slope_deg.notna().all() and rts.aspect_deg.between(0, 360).all()
    stage = gpd.read_parquet(run["out"] / f"rts_{KEY}.parquet")
    assert len(stage) == len(rts) > 20
    assert list(stage.geometry.to_wkb()) == list(rts.geometry.to_wkb())
    assert stage.blocks.str.contains(";").any()  # some polygons were stitched across blocks
    cols = [c for c in rts.columns if c not in ("geometry", "blocks")]
    pd.testing.assert_frame_equal(pd.DataFrame(stage[cols]), pd.DataFrame(rts[cols]))
    # The cube's reference DEM gives the land under voids: the void-filled volumes agree too.
    reference = open_cube(region["cube"])["reference_dem"]
    dens = regional_densities(rts[rts.kept], feats, grid=GRID, cell_size=1000, carbon=CarbonModel(),
                              reference=reference).compute(scheduler="threads")  # fmt: skip
    got_dens = gpd.read_parquet(run["out"] / f"densities_{KEY}_cells_1000m.parquet")
    pd.testing.assert_frame_equal(pd.DataFrame(got_dens.drop(columns="geometry")),
                                  pd.DataFrame(dens.drop(columns="geometry")))  # fmt: skip
    assert (dens.land_area_km2 >= dens.valid_area_km2).all() and (dens.land_area_km2 > dens.valid_area_km2).any()
    summary = json.loads((run["out"] / f"summary_{KEY}.json").read_text())
    assert summary["land_area_km2"] > summary["valid_area_km2"]
    assert abs(summary["volume_void_filled_m3"]) > abs(summary["volume_m3"]) > 0


def test_one_task_per_block_and_stage(region, run):
    n_blocks = len(plan_region(run["config"]).blocks)
    status = pd.read_csv(run["out"] / "status.csv", keep_default_na=False, dtype=str)
    for stage in ("coreg_obs", "composite", "coreg_pair", "features", "probability", "polygons", "zonal"):
        rows = status[status.stage == stage]
        computed = int((rows.status == "done").sum())
        # Every block has a row; the scheduler ran exactly one task per computed block (none for skipped ones).
        assert rows.groupby("key").size().eq(n_blocks).all(), stage
        assert run["tasks"].get(stage, 0) == computed > 0, stage
    # Beside the stages: one task per pair fits the DEM-error model (reduce itself runs in the driver).
    assert run["tasks"].get("error_model") == 1, str(run["tasks"])
    assert sum(run["tasks"].values()) - 1 == (status.status == "done").sum() - 1, str(run["tasks"])


def test_run_reads_one_cube_version_and_records_it(region, run, tmp_path):
    """A run records the cube version it read; resumed after a later ingest, it keeps reading that version."""
    from pipelines.region import _cube_version
    from rtsflow.io.vectors import read_metadata
    from rtsflow.products import read_product, write_sidecar
    from rtsflow.runs import RunDirectory

    recorded = yaml.safe_load((run["out"] / "cube_version.json").read_text())
    assert recorded["version"] == head(region["cube"])
    meta = read_metadata(run["out"] / f"rts_{KEY}.parquet")
    assert meta["cube_version"] == recorded["version"] and meta["cube"] == str(region["cube"])
    # A copy of the cube, a run directory on it, then one more product ingested.
    cube = tmp_path / "cube.zarr"
    shutil.copytree(region["cube"], cube)
    config = parse_config({**region["doc"], "cube": str(cube), "output": str(tmp_path / "run")}, base=region["root"])
    rd = RunDirectory(tmp_path / "run")
    rd.start(config.to_dict())
    said = []
    v1 = _cube_version(rd, config, force=False, say=lambda *a, **k: said.append(a[0]))
    p = read_product(region["synth"].products[0])
    extra = write_sidecar(tmp_path / "extra.json", id="extra", acquired="2016-12-24T10:00:00Z", hoa_m=p.hoa,
                          **p.rasters)  # fmt: skip
    ingest([extra], cube=cube, scheduler="threads")
    assert head(cube) != v1
    assert _cube_version(rd, config, force=False, say=lambda *a, **k: said.append(a[0])) == v1
    assert "keeps reading its own version" in said[-1]
    n = cube_info(cube).n_obs
    assert len(plan_region(config, version=v1).selection) == n - 1 and len(plan_region(config).selection) == n
    assert _cube_version(rd, config, force=True, say=print) == head(cube)  # --force: start over on the new one


def test_footprint_index_matches_the_pixels_and_rebuilds(region, tmp_path):
    cube = region["cube"]
    info = cube_info(cube)
    index = read_footprints(cube, grid=GRID, n_obs=info.n_obs)
    dem = zarr.open_group(cube_store(cube), mode="r")["dem"]
    expected = []
    for obs in range(info.n_obs):
        counts = tile_valid_counts(dem[obs], row=info.window.row, col=info.window.col, tile=GRID.tile_size)
        expected.append(np.column_stack([np.full(len(counts), obs), counts]))
    expected = np.concatenate(expected)
    np.testing.assert_array_equal(_sorted(index.entries), _sorted(expected))
    assert all(len(index.blocks_of(o)) >= 1 for o in range(info.n_obs))
    copy = tmp_path / "cube.zarr"
    shutil.copytree(cube, copy)
    _drop_footprints(copy)
    with pytest.raises(FootprintIndexError, match="rtsflow cube footprints"):
        read_footprints(copy, grid=GRID, n_obs=info.n_obs)
    r = subprocess.run([sys.executable, "-m", "rtsflow.cli", "cube", "footprints", str(copy)], capture_output=True,
                       text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    rebuilt = read_footprints(copy, grid=GRID, n_obs=info.n_obs).entries
    np.testing.assert_array_equal(_sorted(rebuilt), _sorted(index.entries))
    assert build_footprints(copy, grid=GRID, window=info.window, n_obs=info.n_obs) == len(index.entries)


def _drop_footprints(cube) -> None:
    """Remove the footprint index (as a cube of rtsflow 0.1, converted by `rtsflow cube migrate`, has none)."""
    with transaction(cube, command="test", message="drop the footprint index") as tx:
        del zarr.open_group(tx.store, mode="r+")["footprint"]


def _sorted(entries: np.ndarray) -> np.ndarray:
    return entries[np.lexsort(entries[:, :3].T[::-1])]


def test_cli_run_on_a_cube_without_index_builds_it_same_answer_no_dask_warning(region, run, model, tmp_path):
    """`rtsflow run` (co-registration on, several blocks) on a cube of rtsflow 0.1, which has no footprint index.

    The run builds the index and gives the same answer as the run on the indexed cube; it logs no
    "run_spec" warning and no Dask warning at all, and its workers spill inside the run directory.
    """
    cube = tmp_path / "cube.zarr"
    shutil.copytree(region["cube"], cube)
    _drop_footprints(cube)
    out = tmp_path / "cli_run"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({**region["doc"], "cube": str(cube), "output": str(out), "report": True}))
    r = subprocess.run([sys.executable, "-m", "rtsflow.cli", "run", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = r.stdout + r.stderr
    assert "run_spec" not in text
    bad = [line for line in text.splitlines()
           if ("distributed" in line or "dask" in line) and ("WARNING" in line or "Warning" in line)]  # fmt: skip
    assert not bad, bad
    assert "reduce 2010_2016" in r.stdout
    # Workers spill (if at all) inside the run directory, never to the system temp dir.
    assert f"workers spill to {out / 'dask-spill'} (at most 4GiB each)" in r.stdout
    assert (out / "dask-spill").is_dir()
    # The index was built, and the answer is the indexed cube's.
    assert read_footprints(cube, grid=GRID, n_obs=cube_info(cube).n_obs).entries.size > 0
    a = open_features(out / f"features_{KEY}.zarr").compute()
    b = open_features(run["out"] / f"features_{KEY}.zarr").compute()
    for name in (*MODEL_BANDS, "quality", "n_obs"):
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    np.testing.assert_array_equal(open_probability(out / f"probability_{KEY}.zarr").values,
                                  open_probability(run["out"] / f"probability_{KEY}.zarr").values)  # fmt: skip
    got, expected = gpd.read_parquet(out / f"rts_{KEY}.parquet"), gpd.read_parquet(run["out"] / f"rts_{KEY}.parquet")
    assert list(got.geometry.to_wkb()) == list(expected.geometry.to_wkb())


def test_observations_covering_parts_of_the_region_equal_the_lazy_graph(tmp_path):
    """Each observation covers a random 2 × 2 of 3 × 3 blocks: composites work on each one's extent only.

    (3 × 3 blocks keep the lazy graph, ~10 s of compute per block with co-registration, within the suite's time.)
    """
    from rtsflow.synth.patches import patch_cube

    grid = Grid(resolution=10.0, tile_size=32, block_tiles=4)  # 128-px blocks, 32-px tiles
    cube = tmp_path / "patches.zarr"
    patch_cube(cube, grid=grid, blocks=3, obs_per_winter=3, cover=2, seed=3)
    index = read_footprints(cube, grid=grid, n_obs=6)
    assert all(len(index.blocks_of(o)) == 4 for o in range(6))  # 4 of the 9 blocks each
    # Coverage differs from block to block (only the centre block is in every 2 × 2 patch).
    per_block = pd.Series([b for o in range(6) for b in index.blocks_of(o)]).value_counts()
    assert per_block.min() < per_block.max() and (per_block < 6).sum() >= 7
    doc = {"cube": str(cube), "pairs": [list(PAIR)], "output": str(tmp_path / "run"),
           "water": None, "reference": "reference_dem", "coregister": True}  # fmt: skip
    with _cluster() as lc, Client(lc) as client:
        run_region(parse_config(doc), client=client, progress=False, upto="features")
    ds = open_cube(cube)
    lazy, _ = pair_features(ds, grid=grid, earlier=PAIR[0], later=PAIR[1], reference=ds["reference_dem"])
    lazy = lazy.compute(scheduler="threads")
    store = open_features(tmp_path / "run" / f"features_{KEY}.zarr").compute()
    for name in (*MODEL_BANDS, "quality", "n_obs", "coreg_shift_x", "coreg_status"):
        np.testing.assert_array_equal(store[name].values, lazy[name].values, err_msg=name)
    assert np.isfinite(store["ddem"].values).mean() > 0.2


def test_outlines_as_drawn_equal_the_lazy_api_and_lie_inside_the_grown_ones(region, model, run, lazy, tmp_path):
    """Runs grow outlines by default; ``grow_outlines: false`` keeps the model's. Both equal the lazy API on
    other chunks than the stages' 128-px blocks, and growth only adds ground to regions that pass the area rule."""
    from rtsflow.kernels.grow import OutlineGrowth

    assert run["config"].grow_outlines == OutlineGrowth(k_sigma=2.0, max_steps=50, min_seed_m2=1000.0)
    out = tmp_path / "plain"
    config = parse_config({**region["doc"], "output": str(out), "grow_outlines": False}, base=region["root"])
    assert config.grow_outlines is None
    with _cluster() as lc, Client(lc) as client:
        run_region(config, client=client, progress=False)
    plain = gpd.read_parquet(out / f"rts_{KEY}.parquet")
    grown = gpd.read_parquet(run["out"] / f"rts_{KEY}.parquet")
    # Growth adds loss to regions that pass the area rule: every plain polygon of that size lies inside a grown one.
    big = plain[plain.area_nominal_m2 >= 1000]
    assert grown.area.sum() > plain.area.sum() + 10_000  # (an untrained model: a few % more here)
    inside = gpd.sjoin(big.assign(geometry=big.representative_point()), grown, predicate="within")
    assert inside.index.nunique() == len(big)
    assert len(grown) <= len(plain)
    feats = open_features(out / f"features_{KEY}.zarr")
    prob = open_probability(out / f"probability_{KEY}.zarr")
    dem = lazy[1]["dem"].sel(winter=PAIR[0])
    for expected, growth in ((plain, None), (grown, OutlineGrowth())):
        rts = detect_rts(prob.chunk(96), feats.chunk(96), grid=GRID, carbon=CarbonModel(), dem=dem,
                         grow_outlines=growth).compute(scheduler="threads")  # fmt: skip
        assert list(expected.geometry.to_wkb()) == list(rts.geometry.to_wkb())
        cols = [c for c in rts.columns if c not in ("geometry", "blocks")]
        pd.testing.assert_frame_equal(pd.DataFrame(expected[cols]), pd.DataFrame(rts[cols]))
