"""The command line, run as users run it (the installed console script)."""

from __future__ import annotations

import subprocess

import pytest

from .conftest import RTSFLOW


def run(*args, cwd=None):
    assert RTSFLOW, "the rtsflow console script is not installed next to this Python"
    return subprocess.run([RTSFLOW, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_help_lists_commands():
    r = run("--help")
    assert r.returncode == 0
    for cmd in ("synth", "ingest", "features", "train", "predict", "reduce", "evaluate", "run", "demo", "report"):
        assert cmd in r.stdout


def test_synth_ingest_info(tmp_path):
    r = run(
        "synth",
        str(tmp_path / "region"),
        "--size-km",
        "1",
        "1",
        "--winters",
        "2010,2016",
        "--obs-per-winter",
        "1",
        "--no-summer",
        "--seed",
        "7",
    )
    assert r.returncode == 0, r.stderr
    products = sorted((tmp_path / "region" / "products").glob("*.json"))
    assert len(products) == 2
    r = run("ingest", *map(str, products), "--cube", str(tmp_path / "cube.zarr"), "--workers", "1")
    assert r.returncode == 0, r.stderr
    assert "added 2 observation(s)" in r.stdout
    r = run("info", str(tmp_path / "cube.zarr"))
    assert r.returncode == 0, r.stderr
    assert "observations: 2" in r.stdout and "EPSG:3413" in r.stdout


def test_synth_rejects_bad_winters(tmp_path):
    r = run("synth", str(tmp_path / "x"), "--winters", "2010,soon")
    assert r.returncode == 2 and "--winters" in r.stderr


@pytest.mark.slow
def test_demo_end_to_end_meets_the_accuracy_targets_and_resumes(demo_run):
    """The main job as the README runs it: the shipped default model on the test region, F1 >= 0.75 vs the truth,
    and the scores recorded with the model when it was shipped."""
    import dataclasses
    import json
    import re

    import pandas as pd

    from pipelines.demo import SHIPPED_MODEL
    from rtsflow.config import Inference
    from rtsflow.io.probability import open_probability
    from rtsflow.kernels.grow import DEFAULT_GROWTH
    from rtsflow.postprocess import DEFAULT_FILTERS

    out, r = demo_run
    # What a user sees: the dashboard link once, progress of every long step, and no warning at all.
    text = r.stdout + r.stderr
    assert text.count("dask dashboard: http") == 1, text[-3000:]
    assert not [line for line in text.splitlines() if "Warning" in line or "WARNING" in line], text[-5000:]
    for step in ("ingest: writing", "composite 2010: ", "features 2010_2016: ", "probability 2010_2016: "):
        assert step in text, step
    # No training step: the shipped model (sha256 checked on load) made the probabilities.
    assert "model: shipped default model" in r.stdout and "training: " not in text
    record = json.loads((SHIPPED_MODEL / "rtsflow_model.json").read_text())
    prob = open_probability(out / "run" / "probability_2010_2016.zarr")
    assert prob.attrs["model_sha256"] == record["weights_sha256"]
    m = re.search(r"detection F1 ([0-9.]+) .*pixel IoU ([0-9.]+)", r.stdout)
    assert m, r.stdout
    # The default model is trained mostly on realistic scenes (36 of its 37 regions); on the demo's own, noisier
    # world it scored F1 0.91, IoU 0.82 when shipped (5c856bf7…, one view; 0.81 with test-time augmentation, the
    # default since; the demo-only model long before it: 0.89, 0.75).
    assert float(m.group(1)) >= 0.75 and float(m.group(2)) >= 0.65, r.stdout
    # The model reproduces the demo-scene scores recorded when it was trained (`make default-model`).
    recorded = record["training"]["demo_scene"]
    assert recorded["seed"] == 0 and recorded["size_km"] == 5.0
    # ... scored with the outline growth runs use by default.
    assert recorded["grow_outlines"] == dataclasses.asdict(DEFAULT_GROWTH)
    assert recorded["filters"] == dataclasses.asdict(DEFAULT_FILTERS)  # ... and the default filters
    assert recorded["tta"] is Inference().tta is True  # ... and test-time augmentation, on by default
    assert float(m.group(1)) == pytest.approx(recorded["detection_f1"], abs=0.01), recorded
    assert float(m.group(2)) == pytest.approx(recorded["pixel_iou"], abs=0.01), recorded
    assert re.search(r"RTS:\s+\d+ found", r.stdout) and "m³/yr/km²" in r.stdout
    # With the cube's reference DEM the land under the quality mask is known: the void-filled volume is printed
    # and is the volume scaled by land / valid ground.
    summary = json.loads((out / "run" / "summary_2010_2016.json").read_text())
    assert summary["land_area_km2"] > summary["valid_area_km2"] and "void-filled over" in r.stdout
    scale = summary["land_area_km2"] / summary["valid_area_km2"]
    assert summary["volume_void_filled_m3"] == pytest.approx(summary["volume_m3"] * scale, rel=1e-6)
    report = out / "run" / "report" / "report_2010_2016.md"
    assert report.exists() and str(report) in r.stdout
    # A second run reuses the model and every finished block.
    r = run("demo", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "model: cached" in r.stdout
    status = pd.read_csv(out / "run" / "status.csv")
    assert (status[status.stage != "reduce"].session == 1).all()
    assert float(re.search(r"detection F1 ([0-9.]+)", r.stdout).group(1)) == float(m.group(1))


def test_the_shipped_default_model_is_todays_recipe_loads_and_learned():
    """The shipped weights were trained from the recipe the code has now (else the demo would retrain)."""
    import json

    import pandas as pd

    from pipelines.demo import SHIPPED_MODEL, _training_regions, training_key
    from rtsflow.model.checkpoint import load_checkpoint

    _, record = load_checkpoint(SHIPPED_MODEL)  # sha256 of the weights checked
    assert record["training"]["demo"] == training_key(0)
    # Trained on the demo's region and on realistic regions of every terrain (analytic and real DEMs).
    assert len(record["training"]["areas"]) == len(_training_regions(training_key(0)))
    assert {"analytic", "longyearbyen", "st_helens"} == set(record["training"]["demo"]["realistic"]["terrains"])
    # Its checkpoint was chosen on many independent validation cells, not on a few shared by stacked regions.
    assert record["training"]["tiles"]["validation_cells"] >= 50, record["training"]["tiles"]
    assert (SHIPPED_MODEL / "model.safetensors").stat().st_size < 12e6
    log = pd.read_csv(SHIPPED_MODEL / "training_log.csv")
    assert log.val_iou.max() > log.val_iou.iloc[0] + 0.2  # validation IoU rose during training
    assert record["validation_metrics"]["val_iou"] == pytest.approx(log.val_iou.max())
    assert json.loads((SHIPPED_MODEL / "rtsflow_model.json").read_text())["weights_sha256"] == record["weights_sha256"]


@pytest.mark.slow
def test_demo_retrain_trains_on_the_training_region_and_the_run_uses_it(tmp_path, capfd):
    """`rtsflow demo --retrain` (here with a short training config and one small realistic region): every
    training region through the stages, training with progress, then the run."""
    import dataclasses
    import json

    from pipelines.demo import RealisticRecipe, run_demo, training_key
    from rtsflow.io.probability import open_probability
    from rtsflow.model.train import DEMO_CONFIG

    tiny = dataclasses.replace(DEMO_CONFIG, epochs=2, steps_per_epoch=3, batch_size=4)
    recipe = RealisticRecipe(terrains=("analytic",), per_terrain=1, negatives_per_terrain=0, size_km=3.0)
    # Only the realistic region (the demo's own 3-km one adds ~50 s of features): the same path.
    kw = {"size_km": 2.0, "train_config": tiny, "realistic": recipe, "demo_region": False}
    result = run_demo(out=tmp_path, retrain=True, **kw)
    text = "".join(capfd.readouterr())
    assert "training region 1/1: train_analytic_0" in text
    assert "model: training unet (mobilenet_v2) on 1 training regions" in text
    assert "training: " in text and "model: 2 epochs" in text
    record = json.loads((result.model / "rtsflow_model.json").read_text())
    assert record["training"]["demo"] == training_key(0, train_config=tiny, realistic=recipe, demo_region=False)
    assert [a["n_label_polygons"] > 0 for a in record["training"]["areas"]] == [True]
    assert record["training"]["demo_scene"]["n_reference"] > 0  # the demo scene's scores, recorded
    assert (result.model / "training_log.csv").exists()
    prob = open_probability(result.run / "probability_2010_2016.zarr")
    assert prob.attrs["model_sha256"] == record["weights_sha256"]
    # The same recipe again: the trained model is reused, not the shipped one.
    run_demo(out=tmp_path, **kw)
    assert f"model: cached {result.model}" in "".join(capfd.readouterr())


def test_evaluate_cli_on_published_predictions(tmp_path):
    from .conftest import shared

    out = tmp_path / "metrics.json"
    r = run(
        "evaluate",
        str(shared("maier2025_ellesmere", "prediction_postprocessed.geojson")),
        str(shared("maier2025_ellesmere", "reference_postprocessed.geojson")),
        "--json",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    import json

    m = json.loads(out.read_text())
    assert abs(m["pixel_iou"] - 0.75) <= 0.01 and abs(m["detection_f1"] - 0.83) <= 0.015
    assert "pixel_iou" in r.stdout


@pytest.mark.slow
def test_features_reduce_evaluate_cli(tmp_path):
    """synth → ingest → water mask → features → reduce (truth mask as probability) → evaluate."""
    region = tmp_path / "region"
    assert run("synth", str(region), "--size-km", "2", "2", "--winters", "2010,2016", "--seed", "5").returncode == 0
    cube = tmp_path / "cube.zarr"
    products = sorted((region / "products").glob("*.json"))
    assert run("ingest", *map(str, products), "--cube", str(cube), "--workers", "1").returncode == 0
    assert run("ingest-mask", str(region / "truth" / "water.tif"), "--cube", str(cube)).returncode == 0
    feats = tmp_path / "features.zarr"
    r = run("features", str(cube), "--pair", "2010", "2016", "--out", str(feats))
    assert r.returncode == 0, r.stderr
    assert "month 8 outside" in r.stdout  # the selection table names why summer scenes were dropped
    rts = tmp_path / "rts.parquet"
    r = run(
        "reduce",
        str(feats),
        "--probability",
        str(region / "truth" / "rts_mask_2010_2016.tif"),
        "--out",
        str(rts),
        "--cell-size",
        "1000",
        "--no-grow-outlines",  # the true outlines as drawn (scored against the truth below)
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "rts_densities_cells_1000m.parquet").exists()
    import geopandas as gpd

    got = gpd.read_parquet(rts)
    assert {"volume_m3", "volume_sigma_m3", "kept", "filter_reason"} <= set(got.columns)
    r = run("reduce", str(feats), "--probability", str(region / "truth" / "rts_mask_2010_2016.tif"), "--out",
            str(tmp_path / "other.parquet"), "--correlation-length", "long")  # fmt: skip
    assert r.returncode == 2 and "expected 'auto' or a length > 0 (m), got 'long'" in r.stderr
    # Outlines grown (the default): the truth mask grows into the loss around it.
    r = run("reduce", str(feats), "--probability", str(region / "truth" / "rts_mask_2010_2016.tif"), "--out",
            str(tmp_path / "grown.parquet"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    grown = gpd.read_parquet(tmp_path / "grown.parquet")
    assert grown.area.sum() >= got.area.sum() and len(grown) <= len(got)
    truth = gpd.read_parquet(region / "truth" / "slumps.parquet")
    truth = truth[(truth.winter_start == 2010) & (truth.winter_end == 2016)]
    truth.to_parquet(tmp_path / "truth.parquet")
    r = run("evaluate", str(rts), str(tmp_path / "truth.parquet"), "--all")
    assert r.returncode == 0, r.stderr
    assert "detection_f1" in r.stdout and " 1.000" in r.stdout
