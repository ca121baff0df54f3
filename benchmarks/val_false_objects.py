"""Object-level scores of a demo-recipe model on its own validation cells.

The training chooses its checkpoint by validation *pixel* IoU, which a dozen small false
objects hardly move. This counts them: the model predicts every validation tile of its
training regions (the split its record's seed draws, as in training), and predicted
8-connected patches of at least ``--min-px`` pixels with no slump pixel under them are false
objects. Prints false objects per 100 km² (all validation cells, and those of the RTS-free
regions) and the slumps touched.

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

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.demo import _from_json, _training_regions
from rtsflow.model.train import TrainConfig, _pad_tile, load_area, read_labels, split_areas


def _predict(model, area, tiles, *, tile: int, threshold: float) -> np.ndarray:
    """Boolean prediction over the area's validation tiles (as training validates: whole tiles, zero-padded)."""
    import torch

    pred = np.zeros(area.valid.shape, bool)
    with torch.inference_mode():
        for r, c in tiles:
            x = area.x[:, r : r + tile, c : c + tile]
            h, w = x.shape[1:]
            p = torch.sigmoid(model(torch.from_numpy(_pad_tile(x, tile, 0.0)[None]))[0, 0]).numpy()[:h, :w]
            pred[r : r + h, c : c + w] = p >= threshold
    return pred


def main() -> None:
    from rtsflow.model.checkpoint import load_checkpoint
    from rtsflow.model.normalise import BandScaling

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--regions", type=Path, required=True)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--min-px", type=int, default=10, help="smallest false object (px; 10 px = 1 000 m² at 10 m)")
    args = ap.parse_args()

    model, record = load_checkpoint(args.model)
    key = record["training"].get("demo")
    if key is None:
        raise SystemExit(f"{args.model}: the record has no training.demo recipe (not trained by rtsflow demo)")
    cfg_doc = dict(key["train"])
    cfg_doc["normalisation"] = tuple(BandScaling(**b) for b in cfg_doc["normalisation"])
    config = _from_json(TrainConfig, cfg_doc)
    names, areas, pixel_km2 = [], [], []
    for name, synth in _training_regions(key):
        pair = (synth.winters[0], synth.winters[-1])
        features = args.regions / name / "run" / f"features_{pair[0]}_{pair[1]}.zarr"
        labels = args.regions / name / "labels.parquet"
        for p in (features, labels):
            if not p.exists():
                raise SystemExit(f"{p} is missing: --regions must be the directory that built {args.model}")
        areas.append(load_area(features, read_labels(labels, negatives=True), config=config))
        names.append(name)
        pixel_km2.append((synth.resolution / 1000.0) ** 2)
    _, val_sets, n_cells = split_areas(areas, config=config)
    false_all = false_free = found = n_slumps = 0
    km2_all = km2_free = 0.0
    eight = np.ones((3, 3))
    for name, area, (tiles, is_val), px in zip(names, areas, val_sets, pixel_km2, strict=True):
        m = is_val & area.valid
        pred = _predict(model, area, tiles, tile=config.tile, threshold=record.get("threshold", 0.5)) & m
        truth = (area.label > 0) & m
        lab, n = ndimage.label(pred, structure=eight)
        idx = np.arange(1, n + 1)
        sizes = ndimage.sum(np.ones_like(lab), lab, index=idx) if n else np.zeros(0)
        on_slump = ndimage.maximum(truth, lab, index=idx) if n else np.zeros(0)
        false = int(((sizes >= args.min_px) & (on_slump == 0)).sum())
        tl, tn = ndimage.label(truth, structure=eight)
        found += int((ndimage.maximum(pred, tl, index=np.arange(1, tn + 1)) > 0).sum()) if tn else 0
        n_slumps += tn
        false_all += false
        km2_all += m.sum() * px
        if "negatives" in name:
            false_free += false
            km2_free += m.sum() * px
    doc = {
        "model_sha256": record["weights_sha256"],
        "seed": config.seed,
        "validation_cells": n_cells,
        "false_objects": false_all,
        "validation_km2": round(km2_all, 2),
        "false_per_100km2": round(100 * false_all / km2_all, 2) if km2_all else None,
        "rts_free_false_objects": false_free,
        "rts_free_km2": round(km2_free, 2),
        "rts_free_false_per_100km2": round(100 * false_free / km2_free, 2) if km2_free else None,
        "slumps_touched": found,
        "slumps": n_slumps,
    }
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
