"""The person-in-the-loop tools on the demo run: candidates with chips out, decisions merged back, iterations logged,
and three whole iterations of the loop (train → predict → review → merge) whose recall rises every time.

The person is simulated by answering from the synthetic truth.
"""

from __future__ import annotations

import shutil
import subprocess

import geopandas as gpd
import pandas as pd
import pytest
from PIL import Image

from rtsflow.candidates import ITERATION_COLUMNS, LabelError, merge_labels
from rtsflow.model.train import read_labels

from .conftest import RTSFLOW, tree_digest

PAIR = "2010_2016"


def _cli(*args):
    return subprocess.run([RTSFLOW, *args], capture_output=True, text=True, timeout=600)


def test_candidates_review_and_merge(demo_run, tmp_path):
    out, _ = demo_run
    run = out / "run"
    truth = gpd.read_parquet(out / "truth.parquet")
    start = truth.iloc[::3]  # a deliberately incomplete label set: a third of the slumps
    start.to_file(tmp_path / "labels0.gpkg", driver="GPKG")

    r = _cli("candidates", str(run), "--pair", PAIR, "--labels", str(tmp_path / "labels0.gpkg"),
             "--out", str(tmp_path / "review1"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    cand = gpd.read_file(tmp_path / "review1" / "candidates.gpkg")
    rts = gpd.read_parquet(run / f"rts_{PAIR}.parquet")
    kept = rts[rts.kept]
    # Candidates = detections touching no label polygon; at least the detected slumps that were not labelled.
    assert 0 < len(cand) < len(kept)
    assert not cand.intersects(start.to_crs(cand.crs).union_all()).any()
    assert set(cand.rts_id) <= set(kept.rts_id)
    for chip in cand.chip:  # every chip path is valid, relative to the GeoPackage, and an image
        with Image.open(tmp_path / "review1" / chip) as im:
            assert im.size[0] > 300
    assert (cand.label == "").all()

    # The "person" answers from the truth: overlapping a true slump → RTS, else not RTS; one unsure.
    hits = cand.intersects(truth.to_crs(cand.crs).union_all())
    cand["label"] = ["RTS" if h else "not RTS" for h in hits]
    cand.loc[cand.index[-1], "label"] = "unsure"
    cand.to_file(tmp_path / "review1" / "candidates.gpkg", driver="GPKG", layer="candidates")
    r = _cli("labels", "merge", str(tmp_path / "review1" / "candidates.gpkg"), "--labels",
             str(tmp_path / "labels0.gpkg"), "--out", str(tmp_path / "labels1.gpkg"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    merged = gpd.read_file(tmp_path / "labels1.gpkg")
    confirmed = int((cand.label == "RTS").sum())
    rejected = int((cand.label == "not RTS").sum())
    assert confirmed > 0
    assert (merged.label == 1).sum() == len(start) + confirmed and (merged.label == 0).sum() == rejected
    # Training sees the positives only (rejected ones are background).
    assert len(read_labels(tmp_path / "labels1.gpkg")) == len(start) + confirmed
    log = pd.read_csv(tmp_path / "iterations.csv")
    assert list(log.columns[:7]) == ["iteration", "date_utc", "training_polygons", "predictions", "candidates",
                                     "confirmed_rts", "rejected"]  # fmt: skip
    row = log.iloc[0]
    assert (row.iteration, row.training_polygons, row.predictions, row.candidates) == (1, len(start), len(kept),
                                                                                      len(cand))  # fmt: skip
    assert (row.confirmed_rts, row.rejected, row.unsure) == (confirmed, rejected, 1)

    # Next iteration against the merged labels: nothing reviewed is proposed again.
    r = _cli("candidates", str(run), "--pair", PAIR, "--labels", str(tmp_path / "labels1.gpkg"),
             "--out", str(tmp_path / "review2"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    again = gpd.read_file(tmp_path / "review2" / "candidates.gpkg")
    assert len(again) == 1  # only the "unsure" one
    merge_labels(tmp_path / "review2" / "candidates.gpkg", labels=tmp_path / "labels1.gpkg",
                 out=tmp_path / "labels2.gpkg")  # fmt: skip
    assert list(pd.read_csv(tmp_path / "iterations.csv").iteration) == [1, 2]


def test_a_bad_decision_names_the_candidate_and_writes_nothing(demo_run, tmp_path):
    out, _ = demo_run
    r = _cli("candidates", str(out / "run"), "--pair", PAIR, "--out", str(tmp_path / "review"))
    assert r.returncode == 0, r.stderr
    path = tmp_path / "review" / "candidates.gpkg"
    cand = gpd.read_file(path)
    cand.loc[cand.index[1], "label"] = "yes"
    cand.to_file(path, driver="GPKG", layer="candidates")
    before = tree_digest(tmp_path)
    with pytest.raises(LabelError, match=r"candidate 1: label 'yes' is not one of \['RTS', 'not RTS', 'unsure'\]"):
        merge_labels(path, labels=None, out=tmp_path / "labels.gpkg")
    assert tree_digest(tmp_path) == before
    r = _cli("candidates", str(out / "run"), "--pair", "2010_2099", "--out", str(tmp_path / "x"))
    assert r.returncode != 0 and "no RTS table for pair '2010_2099'" in r.stderr


# A small budget per round (120 batches of 16 × 64² tiles, ~30 s on 2 cores): each round fine-tunes the previous
# model (the first: the shipped default model, trained on other regions) on what the person has confirmed so far;
# unlabelled slumps are background to it. A gentle learning rate (1e-4) keeps what the model knew: from an earlier
# default model at 1e-3 the first round's recall fell from 0.66 to 0.31 (half the slumps taught as background), at
# 3e-4 to 0.51; from 5c856bf7… (0.83) at 3e-4 to 0.46, and by the third round that model found no slump the labels
# lacked (nothing to review), at 1e-4 to 0.60.
LOOP_EPOCHS, LOOP_STEPS = 4, 30
SESSION = 4  # candidates a person reviews per round (largest volume loss first); the rest come back next round


def _covered(truth: gpd.GeoDataFrame, polygons: gpd.GeoDataFrame) -> float:
    """Share of the true slumps that touch one of ``polygons`` (recall of a detection or label set)."""
    if not len(polygons):
        return 0.0
    return float(truth.intersects(polygons.to_crs(truth.crs).union_all()).mean())


def test_three_iterations_of_the_loop_raise_recall(demo_run, tmp_path):
    """Xia et al.'s loop from half of the slumps: train (continuing from the last round), predict, review, merge.

    Recall is that of the inventory the loop builds (confirmed RTS vs the truth; Xia et al.'s Table 1 counts the
    new RTS per iteration), and that of each round's model.
    """
    from rtsflow.graph.dem import grid_of
    from rtsflow.io.features import open_features
    from rtsflow.model.checkpoint import DEFAULT_MODEL, ModelSpec, read_record
    from rtsflow.model.inference import predict
    from rtsflow.reduce import detect_rts
    from rtsflow.report import write_report

    out, _ = demo_run
    run = tmp_path / "run"
    shutil.copytree(out / "run", run)  # this loop rewrites the run's RTS table each round
    truth = gpd.read_parquet(out / "truth.parquet")
    labels = tmp_path / "labels0.gpkg"
    truth.iloc[::2].to_file(labels, driver="GPKG")  # the deliberately incomplete start
    feats_path = run / f"features_{PAIR}.zarr"
    feats = open_features(feats_path)
    iterations = tmp_path / "iterations.csv"
    model = DEFAULT_MODEL
    model_recall, inventory = [], [_covered(truth, read_labels(labels))]
    for it in (1, 2, 3):
        # Training as a person runs it: the CLI, continuing from the previous round's checkpoint.
        args = ["train", "--features", str(feats_path), "--labels", str(labels), "--out", str(tmp_path / f"m{it}"),
                "--preset", "demo", "--epochs", str(LOOP_EPOCHS), "--steps-per-epoch", str(LOOP_STEPS),
                "--batch-size", "16", "--split-size", "128", "--tile", "64", "--lr", "1e-4", "--patience", "100",
                "--seed", "0", "--init-from", str(model)]  # fmt: skip
        r = _cli(*args)
        assert r.returncode == 0, r.stderr[-2000:]
        record = read_record(tmp_path / f"m{it}")
        assert record["training"]["initialised_from"]["weights_sha256"] == read_record(model)["weights_sha256"]
        model = tmp_path / f"m{it}"
        spec = ModelSpec(path=str(model), sha256=record["weights_sha256"])
        prob = predict(feats, spec=spec, bands=list(record["bands"]), halo=32, tile=64, grid=grid_of(feats))
        rts = detect_rts(prob, feats, grid=grid_of(feats)).compute(scheduler="threads")
        rts.to_parquet(run / f"rts_{PAIR}.parquet")
        model_recall.append(_covered(truth, rts[rts.kept]))

        review = tmp_path / f"review{it}"
        r = _cli("candidates", str(run), "--pair", PAIR, "--labels", str(labels), "--out", str(review),
                 "--max", str(SESSION))  # fmt: skip
        assert r.returncode == 0, r.stderr[-2000:]
        cand = gpd.read_file(review / "candidates.gpkg")  # what the person opens
        assert 0 < len(cand) <= SESSION
        assert list(cand.volume_m3) == sorted(cand.volume_m3)  # largest loss first
        for chip in cand.chip:
            assert (review / chip).is_file()
        cand["label"] = ["RTS" if h else "not RTS" for h in cand.intersects(truth.to_crs(cand.crs).union_all())]
        cand.to_file(review / "candidates.gpkg", driver="GPKG", layer="candidates")
        new = tmp_path / f"labels{it}.gpkg"
        merge_labels(review / "candidates.gpkg", labels=labels, out=new, iterations=iterations)
        labels = new
        inventory.append(_covered(truth, read_labels(labels)))

    print(f"loop: model recall {model_recall}, inventory recall {inventory}")
    # The inventory's recall rises every iteration (every round's model finds true slumps the labels lack), and the
    # model ends no worse than the first round's (which learnt the unlabelled half as background: RESULTS.md).
    assert inventory[0] < inventory[1] < inventory[2] < inventory[3], inventory
    # The rounds' model recall, from the default model b307daff…: 0.51 → 0.46 → 0.51; from 4f78ec02…: 0.57 → 0.51
    # → 0.54 (RESULTS.md); from 5c856bf7… at 1e-4: 0.60 → 0.57 → 0.57 (inventory 0.51 → 0.63 → 0.74 → 0.83).
    # Short fine-tuning rounds on 35 slumps move it by a slump or two either way: the last round ends within one
    # slump and a half of the first round's.
    assert model_recall[2] >= model_recall[0] - 1.5 / len(truth), (model_recall, len(truth))
    log = pd.read_csv(iterations)
    assert list(log.columns) == ITERATION_COLUMNS and list(log.iteration) == [1, 2, 3]
    # Table 1 bookkeeping: each round trains on what the previous one ended with.
    assert list(log.training_polygons[1:]) == list(log.training_polygons_after[:-1])
    assert log.training_polygons[0] == len(truth.iloc[::2])
    assert (log.confirmed_rts + log.rejected == log.candidates).all() and (log.confirmed_rts > 0).all()
    assert iterations.with_suffix(".png").is_file()
    md = write_report(run, pair=PAIR, iterations=iterations)
    assert "## Iterative mapping (iterations.csv)" in md.read_text() and (md.parent / "iterations.png").is_file()
