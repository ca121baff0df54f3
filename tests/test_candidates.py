"""The person-in-the-loop tools on the demo run: candidates with chips out, decisions merged back, iterations logged.

The person is simulated by answering from the synthetic truth. (Retraining between iterations — recall rising
every iteration — is not covered here yet; see the #14 note.)
"""

from __future__ import annotations

import subprocess

import geopandas as gpd
import pandas as pd
import pytest
from PIL import Image

from rtsflow.candidates import LabelError, merge_labels
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
