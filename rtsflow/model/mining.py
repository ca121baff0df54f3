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

from rtsflow.evaluate import predicted_objects
from rtsflow.model.train import MIN_HIT_SHARE, TrainConfig, TrainingArea, validation_mask

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
    labels, _, hit = predicted_objects(np.asarray(predicted, bool) & where, label, min_pixels=min_pixels,
                                       min_hit_share=min_hit_share)  # fmt: skip
    false = ~hit
    false[0] = False
    return false[labels], int(false.sum())


def predict_area(
    model, x: np.ndarray, valid: np.ndarray, *, origin: tuple[int, int], tile: int, halo: int, device: str
) -> np.ndarray:
    """Probability of a normalised ``(band, y, x)`` area as inference computes it (NaN where not valid).

    ``origin`` is the grid row and column of ``x[:, 0, 0]``. The area goes through
    :class:`rtsflow.model.engine.InferenceEngine` (the grid's tile lattice, the halo, no
    data as 0), with an identity scaling since ``x`` is already normalised to [-1, 1].
    """
    from rtsflow.model.engine import InferenceEngine
    from rtsflow.model.inference import _array_fetch
    from rtsflow.model.normalise import BandScaling

    identity = [BandScaling(f"band{i}", -1.0, 1.0) for i in range(x.shape[0])]
    engine = InferenceEngine(model, scalings=identity, tile=tile, halo=halo, device=device, precision="fp32")
    bands = np.where(valid, x, np.nan).astype(np.float32)  # no data as the engine reads it from a store
    ny, nx = valid.shape
    return engine.run(_array_fetch(bands, row=origin[0], col=origin[1]), rows=(origin[0], origin[0] + ny),
                      cols=(origin[1], origin[1] + nx))  # fmt: skip


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
    out, counts, km2 = [], [], 0.0
    grow = ndimage.generate_binary_structure(2, 2)
    for a in areas:
        where = a.valid & ~validation_mask(a, config=config)
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
