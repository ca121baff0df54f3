"""Object-level scores of a demo-recipe model on its own validation cells.

Training chooses its checkpoint by a validation score (``TrainConfig.select_by``); this scores any
demo-recipe model the way training does (``rtsflow.model.train._validate``: the split its record's
seed draws, tiles as in training; predicted 4-connected patches of at least ``--min-area`` m² with no
slump pixel under them are false objects), on all validation cells and on those of the RTS-free
regions, and prints pixel IoU, detection P/R/F1/F0.5, false objects per 100 km² and the
``f05_iou`` score. So a model trained before the score existed can be compared with one trained after.

``--regions`` is the output directory of the ``rtsflow demo --retrain`` that built the model's
training regions (``ROOT/<region>/run/features_*.zarr``, ``ROOT/<region>/labels.parquet``);
the regions are read from the model's record (``training.demo``).

Usage::

    python benchmarks/val_false_objects.py --regions .default-model --model .default-model/model
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.demo import _from_json, _training_regions
from rtsflow.model.train import TrainConfig, _validate, load_area, read_labels, split_areas


def main() -> None:
    from dataclasses import replace

    from rtsflow.model.checkpoint import load_checkpoint
    from rtsflow.model.normalise import BandScaling

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--regions", type=Path, required=True)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--min-area", type=float, default=1000.0, help="smallest object counted (m², default 1 000)")
    args = ap.parse_args()

    model, record = load_checkpoint(args.model)
    model.eval()
    key = record["training"].get("demo")
    if key is None:
        raise SystemExit(f"{args.model}: the record has no training.demo recipe (not trained by rtsflow demo)")
    cfg_doc = dict(key["train"])
    cfg_doc["normalisation"] = tuple(BandScaling(**b) for b in cfg_doc["normalisation"])
    config = replace(_from_json(TrainConfig, cfg_doc), select_by="f05_iou", min_object_m2=args.min_area,
                     threshold=record.get("threshold", 0.5))  # fmt: skip
    names, areas = [], []
    for name, synth in _training_regions(key):
        pair = (synth.winters[0], synth.winters[-1])
        features = args.regions / name / "run" / f"features_{pair[0]}_{pair[1]}.zarr"
        labels = args.regions / name / "labels.parquet"
        for p in (features, labels):
            if not p.exists():
                raise SystemExit(f"{p} is missing: --regions must be the directory that built {args.model}")
        areas.append(load_area(features, read_labels(labels, negatives=True), config=config))
        names.append(name)
    _, val_sets, n_cells = split_areas(areas, config=config)
    doc = {"model_sha256": record["weights_sha256"], "seed": config.seed, "validation_cells": n_cells}
    doc["all"] = _validate(model, areas, val_sets, config, "cpu")
    free = [i for i, name in enumerate(names) if "negatives" in name]
    doc["rts_free"] = _validate(model, [areas[i] for i in free], [val_sets[i] for i in free], config, "cpu")
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
