"""Training run from labels: feature stores + RTS polygons → a checkpoint with its training log."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rtsflow.model.train import DEMO_CONFIG, TrainConfig, TrainResult, load_area, read_labels, train

__all__ = ["run_training"]


def run_training(
    *,
    features: Sequence[str | Path],
    labels: Sequence[str | Path],
    out: str | Path,
    where: str | None = None,
    config: TrainConfig = DEMO_CONFIG,
    overwrite: bool = False,
    progress: bool = True,
    init_from: str | Path | None = None,
) -> TrainResult:
    """Train on one or more feature stores; ``labels`` is one file for all of them or one per store.

    ``where`` selects label rows (pandas query), e.g. the epoch pair of a multi-pair label file.
    Rows with ``label == 0`` (rejected candidates) are drawn as hard negatives. ``init_from``: the
    checkpoint to continue from (the previous round of the mapping loop).
    """
    if len(labels) not in (1, len(features)):
        raise ValueError(f"labels: give one file for all feature stores or one per store ({len(features)})")
    polygons = [read_labels(p, where=where, negatives=True) for p in labels]
    areas = [load_area(f, polygons[min(i, len(polygons) - 1)], config=config) for i, f in enumerate(features)]
    return train(areas, out=out, config=config, overwrite=overwrite, progress=progress, init_from=init_from)
