"""Hard-negative mining: a model's own false objects on its training cells become hard negatives.

One round of the usual loop (Shrivastava et al. 2016; Xia et al. 2022 for RTS): train,
predict every training area, keep the predicted objects that are not slumps, and go on
training with tiles holding them drawn as hard negatives
(:data:`rtsflow.model.train.HARD_NEGATIVE_SHARE` of the background draws). Only the
training cells are mined, so the validation cells stay unseen and can still choose the
checkpoint. The generator's confounders as a whole, at a fixed share, made things worse
(RESULTS.md, "Hard-negative labels"); what the model itself gets wrong is the set that
matters.

Mining assumes the mined cells are labelled completely: in a partly mapped area (the
mapping loop's early rounds) the model's "false" objects include the slumps nobody has
outlined yet, and mining would teach it to miss them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from rtsflow.model.train import MIN_HIT_SHARE, TrainConfig, TrainingArea, split_areas

__all__ = ["MiningResult", "false_object_mask", "mine_hard_negatives", "predict_area"]

# Hard-negative masks are grown by this many pixels: the object's rim is where the model drew the edge it
# should not have drawn, and a grown mask puts small objects over the tile pool's minimum pixel count.
GROW_PX = 2


def false_object_mask(
    predicted: np.ndarray,
    label: np.ndarray,
    *,
    where: np.ndarray,
    min_pixels: int,
    min_hit_share: float = MIN_HIT_SHARE,
) -> tuple[np.ndarray, int]:
    """Pixels of the predicted objects that are not slumps, and how many such objects.

    Objects are 4-connected patches of ``predicted & where`` of at least ``min_pixels``
    (smaller ones are dropped by the post-processing and never reach a map); an object is
    false when less than ``min_hit_share`` of it lies on ``label`` (the rule of the
    training's validation).
    """
    p = np.asarray(predicted, bool) & where
    r = np.asarray(label, bool)
    objects, n = ndimage.label(p, structure=ndimage.generate_binary_structure(2, 1))
    if not n:
        return np.zeros(p.shape, bool), 0
    size = np.bincount(objects.ravel(), minlength=n + 1)
    on_slump = np.bincount(objects[r], minlength=n + 1)
    false = (size >= min_pixels) & (on_slump < min_hit_share * np.maximum(size, 1))
    false[0] = False
    return false[objects], int(false.sum())


def predict_area(
    model, x: np.ndarray, valid: np.ndarray, *, origin: tuple[int, int], tile: int, halo: int, device: str
) -> np.ndarray:
    """Probability of a normalised ``(band, y, x)`` area as inference computes it (NaN where not valid).

    Output cells of ``tile`` px on the global grid's lattice (``origin``: the grid row and
    column of ``x[:, 0, 0]``), each predicted from a window widened by ``halo / 2`` on every
    side, zeros (normalised no-data) beyond the area: what
    :class:`rtsflow.model.engine.InferenceEngine` computes from a store.
    """
    import torch

    m = halo // 2
    _, ny, nx = x.shape
    # Cells start on multiples of ``tile`` in grid coordinates: shift the area onto that lattice.
    dy, dx = origin[0] % tile, origin[1] % tile
    padded = np.zeros((x.shape[0], dy + ny + 2 * m + tile, dx + nx + 2 * m + tile), np.float32)
    padded[:, m + dy : m + dy + ny, m + dx : m + dx + nx] = x
    prob = np.zeros(padded.shape[1:], np.float32)
    w = tile + 2 * m
    with torch.inference_mode():
        for r in range(0, dy + ny, tile):
            for c in range(0, dx + nx, tile):
                window = np.ascontiguousarray(padded[None, :, r : r + w, c : c + w])
                if not window.any():
                    continue
                logits = model(torch.from_numpy(window).to(device)).float()[0, 0, m : m + tile, m : m + tile]
                prob[r + m : r + m + tile, c + m : c + m + tile] = torch.sigmoid(logits).cpu().numpy()
    out = prob[m + dy : m + dy + ny, m + dx : m + dx + nx].copy()
    out[~valid] = np.nan
    return out


@dataclass(frozen=True)
class MiningResult:
    """The areas with their mined hard negatives, and what was found."""

    areas: list[TrainingArea]
    false_objects: list[int]  # per area, in its training cells
    training_km2: float

    @property
    def per_100km2(self) -> float:
        return 100 * sum(self.false_objects) / self.training_km2 if self.training_km2 else float("nan")


def mine_hard_negatives(
    model,
    areas: list[TrainingArea],
    *,
    config: TrainConfig,
    halo: int = 64,
    device: str = "cpu",
    grow_px: int = GROW_PX,
) -> MiningResult:
    """Predict each area's training cells with ``model`` and add its false objects to the area's negatives.

    ``config`` gives the split (its ``seed`` / ``split_seed``, ``split_size``,
    ``val_fraction``: use the training's config, so that no validation cell is
    mined), the tile, the threshold and ``min_object_m2``. Existing negatives (rejected
    candidates) are kept; the new ones never cover a slump pixel.
    """
    model.eval()
    _, val_sets, _ = split_areas(areas, config=config)
    out, counts, km2 = [], [], 0.0
    grow = ndimage.generate_binary_structure(2, 2)
    for a, (_, is_val) in zip(areas, val_sets, strict=True):
        where = a.valid & ~is_val
        px_m2 = a.resolution**2 if a.resolution else None
        min_px = max(1, int(np.ceil(config.min_object_m2 / px_m2))) if px_m2 else 1
        prob = predict_area(model, a.x, a.valid, origin=a.origin, tile=config.tile, halo=halo, device=device)
        mask, n = false_object_mask(np.nan_to_num(prob) >= config.threshold, a.label > 0, where=where,
                                    min_pixels=min_px)  # fmt: skip
        if grow_px and n:
            mask = ndimage.binary_dilation(mask, structure=grow, iterations=grow_px)
        mask &= (a.label == 0) & where
        negative = mask if a.negative is None else (a.negative | mask)
        source = {**a.source, "mined_false_objects": n}
        out.append(replace(a, negative=negative if negative.any() else a.negative, source=source))
        counts.append(n)
        km2 += where.sum() * px_m2 / 1e6 if px_m2 else float("nan")
    return MiningResult(areas=out, false_objects=counts, training_km2=km2)
