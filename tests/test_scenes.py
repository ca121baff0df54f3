"""Realistic scenes and the default model's training recipe (pipelines.scenes, pipelines.demo)."""

from __future__ import annotations

import pytest

from pipelines.demo import RealisticRecipe, _training_regions, training_key
from pipelines.scenes import TERRAINS, WINTER_COHERENCE, bench_scene_seed, randomised, realistic, terrain_path


def _bench_seeds(*, seed: int = 100, scenes: int = 6) -> set[int]:
    """The synthesis seeds of ``benchmarks/bench_generalisation.py``'s scenes (default: its own defaults)."""
    out = [bench_scene_seed(seed, t=t, k=k, slumps=slumps)
           for t in range(len(TERRAINS)) for k in range(scenes) for slumps in (True, False)]  # fmt: skip
    assert len(set(out)) == len(out)  # no two scenes of a run share a seed
    return set(out)


def test_the_benchmark_keeps_its_first_three_scenes_and_adds_sets_of_three():
    seeds = _bench_seeds()
    assert seeds >= {100 + t + 3 * k for t in range(3) for k in range(3)} | {110 + t + 3 * k for t in range(3)
                                                                             for k in range(3)}  # fmt: skip
    assert len(seeds) == 2 * 3 * 6 and max(seeds) < 1000


def test_the_recipe_covers_every_terrain_with_slumps_and_rts_free_regions_none_a_benchmark_scene():
    recipe = RealisticRecipe()
    scenes = recipe.scenes()
    assert len(scenes) == len(TERRAINS) * (recipe.per_terrain + recipe.negatives_per_terrain)
    seeds = [c.seed for _, c in scenes]
    assert len(set(seeds)) == len(seeds) and not set(seeds) & _bench_seeds()
    assert {c.terrain for _, c in scenes} == {str(p) if p else None for p in TERRAINS.values()}
    negatives = [c for name, c in scenes if "negatives" in name]
    assert len(negatives) == len(TERRAINS) * recipe.negatives_per_terrain
    assert all(c.slump_density == 0 and c.hard_negatives_per_km2 == 3.0 for c in negatives)
    assert all(0.85 <= c.winter_coherence <= 0.98 for _, c in scenes)
    # The key round-trips: what the record stores gives the same regions back.
    key = training_key(0)
    regions = _training_regions(key)
    assert [n for n, _ in regions] == ["train"] + [f"train_{n}" for n, _ in scenes]
    assert [c for _, c in regions[1:]] == [c for _, c in scenes]
    assert [n for n, _ in _training_regions(training_key(0, demo_region=False))] == [f"train_{n}" for n, _ in scenes]


def test_spaced_regions_each_draw_their_own_split_cells():
    """With ``spacing_km`` every training region lies on its own place of the grid: no two share a split cell, so
    the validation set is many independent draws; their configs are otherwise the unspaced recipe's."""
    import dataclasses

    import numpy as np

    from pipelines.demo import MODEL_TRAIN_CONFIG
    from rtsflow.synth.generator import SynthConfig

    spaced = RealisticRecipe(spacing_km=10.0)
    scenes = spaced.scenes()
    unspaced = RealisticRecipe(spacing_km=0.0).scenes()
    assert [dataclasses.replace(c, center_lonlat=SynthConfig.center_lonlat) for _, c in scenes] == [
        c for _, c in unspaced
    ]
    demo = SynthConfig(size_km=(8.0, 8.0)).window()  # the demo's own training region, at the default centre
    cells = set()
    for w in [demo] + [c.window() for _, c in scenes]:
        assert w.height == w.width == round(w.height)
        rows = np.arange(w.row, w.row + w.height) // MODEL_TRAIN_CONFIG.split_size
        cols = np.arange(w.col, w.col + w.width) // MODEL_TRAIN_CONFIG.split_size
        mine = {(r, c) for r in np.unique(rows) for c in np.unique(cols)}
        assert not mine & cells, w  # no split cell in two regions
        cells |= mine
    # In the key only when set (earlier models' records have no such field), and a round trip keeps the places.
    assert "spacing_km" not in training_key(0, realistic=RealisticRecipe(spacing_km=0.0))["realistic"]
    key = training_key(0, realistic=spaced)
    assert [c for _, c in _training_regions(key)[1:]] == [c for _, c in scenes]
    with pytest.raises(ValueError, match=r"spacing_km \(6\) must be at least twice size_km \(5\)"):
        RealisticRecipe(spacing_km=6.0).scenes()


def test_randomised_scenes_are_reproducible_and_realistic_ones_use_the_real_ddem_error():
    assert randomised(seed=7, size_km=2.0, terrain="analytic") == randomised(seed=7, size_km=2.0, terrain="analytic")
    assert randomised(seed=7, size_km=2.0, terrain="analytic") != randomised(seed=8, size_km=2.0, terrain="analytic")
    config = realistic(seed=1, size_km=2.0, terrain="longyearbyen")
    assert config.winter_coherence == WINTER_COHERENCE and config.terrain.endswith("DEM_1995.tif")
    assert realistic(seed=1, size_km=2.0, terrain="analytic", slumps=False).slump_density == 0.0


def test_an_unknown_terrain_is_named_in_the_error():
    with pytest.raises(ValueError, match=r"terrain must be one of .*'mars'"):
        terrain_path("mars")


def test_hard_negative_labels_put_every_confounder_in_the_label_file_as_a_rejected_candidate(tmp_path):
    """The recipe's ``hard_negative_labels``: slumps of the pair as label 1, the generator's confounders as 0
    (what training draws as hard negatives); off, the key is what the shipped model's record holds."""
    import geopandas as gpd

    from pipelines.demo import _truth_file
    from rtsflow.model.train import read_labels
    from rtsflow.synth.generator import synthesize

    assert "hard_negative_labels" not in training_key(0)["realistic"]
    key = training_key(0, realistic=RealisticRecipe(hard_negative_labels=True))
    assert key["realistic"]["hard_negative_labels"] is True
    assert [c for _, c in _training_regions(key)] == [c for _, c in _training_regions(training_key(0))]

    config = randomised(seed=5, size_km=1.5, terrain="analytic")
    region = synthesize(tmp_path / "region", config=config)
    pair = (config.winters[0], config.winters[-1])
    slumps = gpd.read_parquet(region.truth_slumps)
    slumps = slumps[(slumps.winter_start == pair[0]) & (slumps.winter_end == pair[1])]
    confounders = gpd.read_parquet(region.truth_confounders)
    assert len(slumps) > 0 and len(confounders) > 0
    plain = read_labels(_truth_file(region, pair, tmp_path / "plain.parquet"), negatives=True)
    assert (plain.label == 1).all() and len(plain) == len(slumps)
    labels = read_labels(_truth_file(region, pair, tmp_path / "hard.parquet", hard_negatives=True), negatives=True)
    assert (labels.label == 1).sum() == len(slumps) and (labels.label == 0).sum() == len(confounders)
    assert sorted(labels[labels.label == 0].kind) == sorted(confounders.kind)
    assert labels[labels.label == 0].geometry.union_all().equals(confounders.geometry.union_all())
    assert len(read_labels(tmp_path / "hard.parquet")) == len(slumps)  # the RTS themselves are unchanged


def test_a_region_written_before_a_setting_existed_is_reused_while_the_setting_is_at_its_default(tmp_path):
    import dataclasses
    import json

    from pipelines.demo import _region
    from rtsflow.synth.generator import SynthConfig

    config = SynthConfig(seed=3, size_km=(1.0, 1.0), winters=(2010, 2016), obs_per_winter=1, summer=False)
    region = _region(tmp_path / "r", config, force=False)
    manifest = tmp_path / "r" / "region.json"
    doc = json.loads(manifest.read_text())
    del doc["config"]["slump_slopes"]  # as written before slumps could choose their slopes
    manifest.write_text(json.dumps(doc))
    stamp = [p.stat().st_mtime_ns for p in region.products]
    again = _region(tmp_path / "r", config, force=False)
    assert [p.stat().st_mtime_ns for p in again.products] == stamp  # reused, not generated again
    moved = _region(tmp_path / "r", dataclasses.replace(config, slump_slopes="arts"), force=False)
    assert json.loads(manifest.read_text())["config"]["slump_slopes"] == "arts"
    assert [p.stat().st_mtime_ns for p in moved.products] != stamp


def test_benchmark_scenes_and_the_shipped_recipe_put_slumps_on_real_slopes():
    assert realistic(seed=100, size_km=5.0, terrain="analytic").slump_slopes == "arts"
    key = training_key(0)
    assert key["realistic"]["arts_slopes"] is True  # the shipped model's recipe (5c856bf7…)
    regions = _training_regions(key)[1:]
    assert {c.slump_slopes for name, c in regions if "negatives" not in name} == {"arts"}
    # RTS-free regions have no slumps to place: they stay the earlier recipe's regions.
    assert {c.slump_slopes for name, c in regions if "negatives" in name} == {"any"}
    # The recipe of the models shipped before (slumps on any hillslope) keeps their key: the field is left out.
    before = training_key(0, realistic=RealisticRecipe(arts_slopes=False))
    assert "arts_slopes" not in before["realistic"]
    assert {c.slump_slopes for _, c in RealisticRecipe(arts_slopes=False).scenes()} == {"any"}


def test_training_regions_and_benchmark_scenes_lie_on_separate_parts_of_a_real_dem():
    """With ``terrain_windows`` the training regions lie on Longyearbyen's west part (mirrored and turned), the
    benchmark's scenes on its east part: every footprint wholly on the DEM, the parts ``PART_GAP_KM`` apart."""
    import rasterio

    from pipelines.scenes import PART_GAP_KM, terrain_window

    with rasterio.open(TERRAINS["longyearbyen"]) as src:
        half_w, half_h = src.width * src.res[0] / 2000.0, src.height * src.res[1] / 2000.0
    size = 5.0

    def footprint(config):  # (x_min, x_max, y_min, y_max) on the DEM, km from its centre
        (x, y), r = config.terrain_offset_km, config.size_km[0] / 2.0
        return x - r, x + r, y - r, y + r

    lyb = str(TERRAINS["longyearbyen"])
    regions = [c for _, c in RealisticRecipe(terrain_windows=True).scenes() if c.terrain == lyb]
    bench = [realistic(seed=s, size_km=size, terrain="longyearbyen", slumps=k, terrain_part="bench")
             for s in range(100, 140) for k in (True, False)]  # fmt: skip
    assert len({c.terrain_offset_km for c in regions}) == len(regions) == 12  # each region its own ground
    assert len({(c.terrain_turns, c.terrain_flip) for c in regions}) > 4  # mirrored and turned at random
    assert {(c.terrain_turns, c.terrain_flip) for c in bench} == {(0, False)}  # as the DEM lies
    for c in regions + bench:
        x0, x1, y0, y1 = footprint(c)
        assert -half_w <= x0 and x1 <= half_w and -half_h <= y0 and y1 <= half_h, c.terrain_offset_km
    assert max(footprint(c)[1] for c in regions) <= -PART_GAP_KM / 2.0
    assert min(footprint(c)[0] for c in bench) >= PART_GAP_KM / 2.0
    # The crater DEM is smaller than a scene: benchmark scenes stay as before, training ones are only turned.
    assert realistic(seed=100, size_km=size, terrain="st_helens", terrain_part="bench") == realistic(
        seed=100, size_km=size, terrain="st_helens")  # fmt: skip
    assert terrain_window(terrain="analytic", part="train", size_km=size, seed=1) == {}
    assert "terrain_offset_km" not in terrain_window(terrain="st_helens", part="train", size_km=size, seed=1)
    # Off by default: the shipped model's recipe keeps its key and its regions on the DEM's centre.
    assert "terrain_windows" not in training_key(0)["realistic"]
    assert {c.terrain_offset_km for _, c in RealisticRecipe().scenes()} == {(0.0, 0.0)}
    with pytest.raises(ValueError, match="part must be None, 'bench' or 'train', got 'test'"):
        terrain_window(terrain="longyearbyen", part="test", size_km=size, seed=1)


def test_bench_ceilings_are_what_a_perfect_detector_scores(monkeypatch):
    """The benchmark's ceilings at kσ: a detector that outlines exactly the valid dDEM of every scored slump
    with |V| ≥ kσ, and nothing else, scores the printed recall and pixel IoU (evaluate_polygons on polygons)."""
    import importlib
    from pathlib import Path

    import geopandas as gpd
    import numpy as np
    from shapely import box

    from rtsflow.evaluate import evaluate_polygons

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    bench = importlib.import_module("bench_generalisation")
    # Four 10 × 10 px slumps on a 10 m grid; the valid dDEM covers the left n_valid/10 columns of each.
    # |V| / σ = 6, 3.5, 1 and 8 (the last not scored: under half valid).
    n_valid = np.array([80.0, 100.0, 60.0, 30.0])
    truth = gpd.GeoDataFrame(geometry=[box(200.0 * i, 0.0, 200.0 * i + 100.0, 100.0) for i in range(4)],
                             crs="EPSG:3413")  # fmt: skip
    a = {"t": np.array([-100.0, -100.0, -100.0, -100.0]), "v": np.array([-60.0, -35.0, -10.0, -80.0]),
         "s": np.full(4, 10.0), "v_local": np.full(4, -50.0), "s_local": np.full(4, 10.0),
         "scored": n_valid / 100.0 >= bench.MIN_COVERAGE, "found": np.zeros(4, bool),
         "n_pixels": np.full(4, 100.0), "n_valid": n_valid}  # fmt: skip
    ceiling = bench.outline_scores(a)["ceiling"]
    for k, expect_found in [("2", [0, 1]), ("3", [0, 1]), ("4", [0]), ("5", [0])]:
        oracle = gpd.GeoSeries([box(200.0 * i, 0.0, 200.0 * i + n_valid[i], 100.0) for i in expect_found],
                               crs=truth.crs)  # fmt: skip
        m = evaluate_polygons(oracle, truth, ignore=~a["scored"])
        assert ceiling[k]["recall"] == pytest.approx(m.detection_recall)
        assert ceiling[k]["pixel_iou"] == pytest.approx(m.pixel_iou)
    assert ceiling["2"]["pixel_iou"] == pytest.approx(180.0 / 300.0)  # 80 + 100 valid of 3 × 100 scored pixels
