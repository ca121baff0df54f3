"""Accuracy of detected RTS against reference polygons (Maier et al. 2025, Sec. 2.5.3).

Pixel metrics compare the union of predicted and reference areas (TP, FP, FN
areas → IoU, F1, precision, recall). Detection metrics count objects: a
predicted object is a true positive if it intersects a reference object;
precision = TP predictions / predictions, recall = reference objects hit by a
prediction / reference objects; detection IoU is the mean pixel IoU of the
TP predictions with the reference objects they intersect. (The reference code
release computes detection IoU differently; this follows the paper.)

Reference objects can be *ignored* (e.g. slumps mostly under the quality mask,
which no detector can see): they leave the reference, and so do the predicted
objects that hit only ignored ones, and the predicted area inside them — they
count neither for nor against (as "ignore" regions in object-detection
benchmarks).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from scipy import ndimage

__all__ = ["Metrics", "evaluate_by_site", "evaluate_polygons", "evaluate_rasters"]


@dataclass(frozen=True)
class Metrics:
    pixel_iou: float
    pixel_f1: float
    pixel_precision: float
    pixel_recall: float
    detection_iou: float
    detection_f1: float
    detection_precision: float
    detection_recall: float
    n_predicted: int
    n_reference: int
    n_tp_predicted: int
    n_tp_reference: int
    n_ignored: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        d = self.to_dict()
        rows = [f"{'metric':<22}{'value':>8}"]
        rows += [f"{k:<22}{v:>8.3f}" if isinstance(v, float) else f"{k:<22}{v:>8d}" for k, v in d.items()]
        return "\n".join(rows)


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def _f1(p: float, r: float) -> float:
    return float(2 * p * r / (p + r)) if (p + r) > 0 and np.isfinite(p + r) else float("nan")


def evaluate_polygons(
    predicted: gpd.GeoSeries | gpd.GeoDataFrame,
    reference: gpd.GeoSeries | gpd.GeoDataFrame,
    *,
    ignore: np.ndarray | None = None,
) -> Metrics:
    """Pixel and detection metrics from polygons (exact areas; predictions are reprojected to the reference CRS).

    Parameters
    ----------
    predicted, reference
        Polygons (GeoSeries or GeoDataFrames).
    ignore
        Boolean per reference row: objects not to score (see the module docstring).
    """
    pred = gpd.GeoSeries(predicted.geometry if hasattr(predicted, "geometry") else predicted).reset_index(drop=True)
    ref = gpd.GeoSeries(reference.geometry if hasattr(reference, "geometry") else reference).reset_index(drop=True)
    if pred.crs is not None and ref.crs is not None and pred.crs != ref.crs:
        pred = pred.to_crs(ref.crs)
    n_ignored = 0
    if ignore is not None:
        ignore = np.asarray(ignore, dtype=bool)
        if ignore.shape != (len(ref),):
            raise ValueError(f"ignore: expected one flag per reference object ({len(ref)}), got shape {ignore.shape}")
        n_ignored = int(ignore.sum())
        if n_ignored:
            ignored = shapely.union_all(ref.values[ignore])
            ref = ref[~ignore].reset_index(drop=True)
            hits_kept = np.zeros(len(pred), bool)
            if len(pred) and len(ref):
                hits_kept[np.unique(ref.sindex.query(pred.values, predicate="intersects")[0])] = True
            only_ignored = pred.intersects(ignored).to_numpy() & ~hits_kept
            pred = pred[~only_ignored].difference(ignored).reset_index(drop=True)
            pred = pred[~pred.is_empty].reset_index(drop=True)
    P = shapely.union_all(pred.values) if len(pred) else shapely.Polygon()
    R = shapely.union_all(ref.values) if len(ref) else shapely.Polygon()
    tp = P.intersection(R).area
    pixel_p, pixel_r = _ratio(tp, P.area), _ratio(tp, R.area)
    # Object matching through a spatial index.
    pi, ri = ref.sindex.query(pred.values, predicate="intersects") if len(pred) and len(ref) else ([], [])
    pi, ri = np.asarray(pi, dtype=int), np.asarray(ri, dtype=int)
    tp_pred = np.unique(pi)
    tp_ref = np.unique(ri)
    ious = []
    for k in tp_pred:
        hit = shapely.union_all(ref.values[ri[pi == k]])
        g = pred.values[k]
        ious.append(g.intersection(hit).area / g.union(hit).area)
    det_p, det_r = _ratio(len(tp_pred), len(pred)), _ratio(len(tp_ref), len(ref))
    return Metrics(
        pixel_iou=_ratio(tp, P.union(R).area), pixel_f1=_f1(pixel_p, pixel_r), pixel_precision=pixel_p,
        pixel_recall=pixel_r, detection_iou=float(np.mean(ious)) if ious else float("nan"),
        detection_f1=_f1(det_p, det_r), detection_precision=det_p, detection_recall=det_r,
        n_predicted=len(pred), n_reference=len(ref), n_tp_predicted=len(tp_pred), n_tp_reference=len(tp_ref),
        n_ignored=n_ignored,
    )  # fmt: skip


def predicted_objects(
    predicted: np.ndarray, reference: np.ndarray, *, min_pixels: int = 1, min_hit_share: float = 0.0
) -> tuple[np.ndarray, int, np.ndarray]:
    """Predicted objects (4-connected, at least ``min_pixels``) and which of them hit the reference.

    Returns ``(labels, n, hit)``: ``labels`` numbers the kept objects 1…n (0 elsewhere),
    ``hit[k]`` is true when object k touches the reference with at least ``min_hit_share``
    of its pixels (``hit[0]`` is false). Shared by the scores and by hard-negative mining,
    so that what validation counts as a false object is what mining learns from.
    """
    four = ndimage.generate_binary_structure(2, 1)
    p = np.asarray(predicted, dtype=bool)
    r = np.asarray(reference, dtype=bool)
    pl, npred = ndimage.label(p, structure=four)
    if min_pixels > 1 and npred:
        small = np.bincount(pl.ravel()) < min_pixels
        small[0] = False
        pl, npred = ndimage.label(p & ~small[pl], structure=four)
    size = np.bincount(pl.ravel(), minlength=npred + 1)
    on_ref = np.bincount(pl[r], minlength=npred + 1)
    # A share > 0 keeps one object spread over the map from hitting every slump (the paper's rule, 0, allows it).
    hit = (on_ref > 0) & (on_ref >= min_hit_share * size)
    hit[0] = False
    return pl, npred, hit


def evaluate_rasters(
    predicted: np.ndarray,
    reference: np.ndarray,
    *,
    valid: np.ndarray | None = None,
    min_pixels: int = 1,
    min_hit_share: float = 0.0,
) -> Metrics:
    """The same metrics from boolean rasters (objects = 4-connected regions).

    ``valid`` (optional) restricts the comparison, e.g. to the labelled area
    (reference rasters often use 255 for no data). Predicted objects of fewer than
    ``min_pixels`` pixels are dropped first, as the post-processing's minimum area
    drops polygons (4-connected, as vectorising a raster outlines them).
    ``min_hit_share`` > 0: a predicted object counts as a hit only when at least
    that share of its pixels lies on reference objects (the paper's rule, 0, lets
    one object spread over the whole map hit every slump).
    """
    p = np.asarray(predicted, dtype=bool)
    r = np.asarray(reference, dtype=bool)
    if valid is not None:
        p, r = p & valid, r & valid
    four = ndimage.generate_binary_structure(2, 1)
    pl, npred, hit = predicted_objects(p, r, min_pixels=min_pixels, min_hit_share=min_hit_share)
    p = pl > 0
    tp = np.sum(p & r)
    pixel_p, pixel_r = _ratio(tp, p.sum()), _ratio(tp, r.sum())
    rl, nref = ndimage.label(r, structure=four)
    both = (pl > 0) & (rl > 0)
    pairs = np.unique(np.stack([pl[both], rl[both]]), axis=1) if both.any() else np.zeros((2, 0), int)
    pairs = pairs[:, hit[pairs[0]]]
    tp_pred, tp_ref = np.unique(pairs[0]), np.unique(pairs[1])
    ious = []
    pbox, rbox = ndimage.find_objects(pl), ndimage.find_objects(rl)
    for k in tp_pred:
        refs = pairs[1][pairs[0] == k]
        # Work inside the bounding box of the object and the references it hits.
        boxes = [pbox[k - 1], *(rbox[j - 1] for j in refs)]
        sl = tuple(slice(min(b[d].start for b in boxes), max(b[d].stop for b in boxes)) for d in range(2))
        refs_px = np.isin(rl[sl], refs)
        obj = pl[sl] == k
        ious.append(np.sum(obj & refs_px) / np.sum(obj | refs_px))
    det_p, det_r = _ratio(len(tp_pred), npred), _ratio(len(tp_ref), nref)
    return Metrics(
        pixel_iou=_ratio(tp, np.sum(p | r)), pixel_f1=_f1(pixel_p, pixel_r), pixel_precision=pixel_p,
        pixel_recall=pixel_r, detection_iou=float(np.mean(ious)) if ious else float("nan"),
        detection_f1=_f1(det_p, det_r), detection_precision=det_p, detection_recall=det_r,
        n_predicted=int(npred), n_reference=int(nref), n_tp_predicted=len(tp_pred), n_tp_reference=len(tp_ref),
    )  # fmt: skip


def evaluate_by_site(
    predicted: gpd.GeoDataFrame, reference: gpd.GeoDataFrame, sites: gpd.GeoDataFrame, *, name: str = "name"
) -> pd.DataFrame:
    """Metrics per site (objects assigned by their centroid) and overall, as a table."""
    sites = sites.to_crs(reference.crs)
    rows = []
    for _, site in sites.iterrows():
        inside_p = predicted[predicted.geometry.centroid.within(site.geometry)]
        inside_r = reference[reference.geometry.centroid.within(site.geometry)]
        rows.append({"site": site[name], **evaluate_polygons(inside_p, inside_r).to_dict()})
    rows.append({"site": "overall", **evaluate_polygons(predicted, reference).to_dict()})
    return pd.DataFrame(rows)
