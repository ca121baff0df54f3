"""Probability stage: the model over one block of the features store (GPU workers when the cluster has them).

A block's task reads the model bands over the block plus ``tile + halo`` px of
context (NaN beyond the domain), runs every lattice window that meets the
block (:func:`rtsflow.model.inference.predict_block`) and writes the block's
probability. It equals :func:`rtsflow.model.inference.predict` over the whole
features store.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rtsflow.grid import Grid, Window
from rtsflow.io.blocks import GridStore, block_region, write_block
from rtsflow.model.checkpoint import ModelSpec
from rtsflow.stages.base import BlockJob, Stage, Upstream
from rtsflow.stages.stores import GridVariable, create_grid_store

__all__ = ["probability_block", "probability_stage"]


def probability_block(
    block: tuple[int, int],
    *,
    features: str,
    grid: Grid,
    domain: Window,
    spec: ModelSpec,
    bands: Sequence[str],
    halo: int,
    tile: int,
    batch_size: int | None,
    device: str,
    precision: str,
    out: str,
    compile: bool = False,
    tta: bool,
) -> dict:
    """RTS probability of one block, through the worker's :class:`~rtsflow.model.engine.InferenceEngine`.

    The engine reads the bands as lattice-aligned strips (the block ± ``halo / 2``)
    while the model runs; the block is written once at the end (a shard).
    """
    from rtsflow.model.engine import engine_for

    engine = engine_for(spec, tile=tile, halo=halo, device=device, precision=precision,
                        batch_size=batch_size, compile=compile, tta=tta)  # fmt: skip
    store = GridStore(features, grid=grid, domain=domain)
    win = grid.block_window(*block)

    names = list(bands)

    def fetch(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        return store.read_stack(names, Window(r0, c0, r1 - r0, c1 - c0))

    prob = engine.run(fetch, rows=(win.row, win.row_stop), cols=(win.col, win.col_stop))
    n_valid = int(np.isfinite(prob).sum())
    if not n_valid:
        return {"status": "skipped", "reason": "no valid pixels"}
    write_block(out, {"probability": (("y", "x"), prob)}, region=block_region(win, domain))
    return {"n_valid": n_valid}


def probability_stage(
    *,
    pair: tuple[int, int],
    features: Path,
    grid: Grid,
    domain: Window,
    blocks: list[tuple[int, int]],
    spec: ModelSpec,
    record: dict,
    halo: int,
    batch_size: int | None,
    device: str,
    precision: str,
    dtype: str,
    resources: dict | None,
    out: Path,
    skip: Sequence[tuple[int, int]] = (),
    compile: bool = False,
    tta: bool,
) -> Stage:
    """The probability stage of one pair (``skip``: blocks known to hold no valid feature pixel)."""
    from rtsflow.io.probability import PROBABILITY_DTYPES
    from rtsflow.model.inference import probability_description

    key = f"{pair[0]}_{pair[1]}"
    tile = int(record["tile_size"])

    def create():
        create_grid_store(out, grid=grid, window=domain, variables={
            "probability": GridVariable("float32", {
                "long_name": "RTS probability", "units": "1", "model_sha256": spec.sha256,
                "description": probability_description(tile=tile, halo=halo, tta=tta)},
                encoding=dict(PROBABILITY_DTYPES[dtype])),
        }, attrs={"model_sha256": spec.sha256, "model": spec.path, "features": str(features),
                  "threshold": record["threshold"], "title": "rtsflow RTS probability"})  # fmt: skip

    params = dict(features=str(features), grid=grid, domain=domain, spec=spec, bands=list(record["bands"]),
                  halo=halo, tile=tile, batch_size=batch_size, device=device, precision=precision, out=str(out),
                  compile=compile, tta=tta)
    radius = -(-(tile + halo) // grid.block_size)  # blocks of context a window may read
    skipped = set(skip)
    return Stage(name="probability", key=key, function=probability_block, params=params,
                 jobs=[BlockJob(b) for b in blocks if b not in skipped], output=out, create=create,
                 resources=resources, upstream=[Upstream("features", key, radius=radius)],
                 skip={b: "no valid pixels" for b in blocks if b in skipped})  # fmt: skip
