"""Training a segmentation model on feature stores and label polygons.

Paper setup (Maier et al. 2025, Sec. 2.4) by default: UNet++ with a ResNet18
encoder on 512² tiles of (dDEM_norm, dDEM, σ, slope), Dice loss, AdamW with
cosine warm restarts, flips / 90° rotations / 3-px blur at p = 0.5. Training
and validation tiles come from disjoint split cells of the global grid;
batches hold tiles with and without slumps in a fixed ratio; the loss ignores
pixels without valid input. Every epoch is logged to CSV and the checkpoint
with the best validation score is kept: by default the geometric mean of
object-level detection F0.5 and pixel IoU on the validation cells, so that a
dozen small false objects, which hardly move pixel IoU, count against an epoch.
"""

from __future__ import annotations

import csv
import logging
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from rtsflow.model.checkpoint import ModelSpec, save_checkpoint
from rtsflow.model.factory import build_model
from rtsflow.model.normalise import DEFAULT_NORMALISATION, BandScaling, normalise
from rtsflow.model.samples import TilePool, augment, candidate_tiles, cells_holding, split_cells, validation_tiles

__all__ = [
    "DEMO_CONFIG",
    "TrainConfig",
    "TrainResult",
    "TrainingArea",
    "load_area",
    "read_labels",
    "split_areas",
    "train",
]

log = logging.getLogger(__name__)
LOG_NAME = "training_log.csv"
# Share of the background tiles drawn from tiles holding a rejected candidate, when there are any: the
# false positives a person rejected are what the model most needs to unlearn (Xia et al. 2022).
HARD_NEGATIVE_SHARE = 0.5
# Fewer distinct validation cells than this and validation scores are a lottery (a warning says so).
MIN_VALIDATION_CELLS = 10
# How the checkpoint is chosen (``TrainConfig.select_by``): the geometric mean of pixel IoU and an object-level
# detection score (F0.5, weighing precision twice as much as recall, or F1), or the validation pixel IoU alone.
SELECT_BY = ("f05_iou", "f1_iou", "pixel_iou")
# A predicted object counts as a detection only if at least this share of it lies on slumps: otherwise an
# early checkpoint that paints most of the map "hits" every slump with one object and scores detection F 1.0.
MIN_HIT_SHARE = 0.5


@dataclass(frozen=True)
class TrainConfig:
    """Model and optimisation settings (defaults: the paper's model).

    Parameters
    ----------
    split_size
        Side (px) of the grid-anchored cells that are wholly training or wholly
        validation (default: one grid block, 4096 px).
    steps_per_epoch
        Batches per epoch (tiles are drawn at random, so an epoch is a fixed number of batches).
    restart_epochs
        Epochs of the first cosine cycle (``CosineAnnealingWarmRestarts`` T_0).
    patience
        Epochs without a better validation score before stopping.
    select_by
        The validation score that chooses the checkpoint (and stops early): ``"f05_iou"``
        (default), the geometric mean of pixel IoU and the object-level detection F0.5
        (precision weighted twice as much as recall); ``"f1_iou"``, the same with F1; or
        ``"pixel_iou"``. Pixel IoU hardly moves for the dozen small false objects that a map
        user sees at once, and between neighbouring epochs of one run they vary fivefold
        (11 to 119 on the default recipe's 205 km² of validation cells); F0.5, because
        validation recall is low by construction (slumps clipped by cell edges, faint
        ones), which makes F1 follow recall.
    min_object_m2
        Predicted objects smaller than this are not counted (the post-processing's
        ``min_area_m2``, which drops them from the map).
    seed
        Seeds the weights, the tile draws and (unless ``split_seed`` is set) the split.
    split_seed
        Seeds the train/validation split alone (default: ``seed``). Fix it to train several
        seeds on the same validation cells, so that their validation scores can choose
        between the runs.
    positive_fraction
        Share of each batch drawn from tiles that contain slumps.
    max_minutes
        Safety cap on wall time (the epoch in progress finishes); ``None`` = none.
    """

    architecture: str = "unetplusplus"
    encoder: str = "resnet18"
    encoder_depth: int = 5
    decoder_channels: tuple[int, ...] | None = None
    bands: tuple[str, ...] = tuple(s.band for s in DEFAULT_NORMALISATION)
    normalisation: tuple[BandScaling, ...] = DEFAULT_NORMALISATION
    tile: int = 512
    batch_size: int = 8
    epochs: int = 100
    steps_per_epoch: int = 50
    lr: float = 1e-3
    weight_decay: float = 1e-4
    restart_epochs: int = 10
    loss: str = "dice"
    patience: int = 15
    positive_fraction: float = 0.5
    min_positive_px: int = 20
    val_fraction: float = 0.2
    split_size: int = 4096
    sample_stride: int = 32
    augment: bool = True
    threshold: float = 0.5
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    max_minutes: float | None = None
    select_by: str = "f05_iou"
    min_object_m2: float = 1000.0
    split_seed: int | None = None

    def __post_init__(self):
        if self.select_by not in SELECT_BY:
            raise ValueError(f"select_by must be one of {SELECT_BY}, got {self.select_by!r}")
        if self.loss not in ("dice", "bce+dice"):
            raise ValueError(f"loss must be 'dice' or 'bce+dice', got {self.loss!r}")
        if [s.band for s in self.normalisation] != list(self.bands):
            raise ValueError(f"normalisation bands {[s.band for s in self.normalisation]} != bands {list(self.bands)}")
        if self.tile % 32:
            raise ValueError(f"tile must be a multiple of 32 (encoder strides), got {self.tile}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["normalisation"] = [s.to_dict() for s in self.normalisation]
        d["bands"] = list(self.bands)
        return d


# The compact model of the demo and the tests: a 3-level UNet on 128² tiles, trains in minutes on 2 CPU cores.
DEMO_CONFIG = TrainConfig(
    architecture="unet",
    encoder="mobilenet_v2",
    encoder_depth=4,
    decoder_channels=(64, 32, 16, 8),
    tile=128,
    batch_size=16,
    epochs=14,
    steps_per_epoch=30,
    lr=3e-3,
    restart_epochs=14,
    patience=5,
    split_size=256,
    sample_stride=16,
    loss="bce+dice",
)


@dataclass
class TrainingArea:
    """Normalised bands, validity and labels of one loaded area (NumPy), with its place on the grid."""

    x: np.ndarray  # (band, y, x) float32, normalised
    valid: np.ndarray  # (y, x) bool
    label: np.ndarray  # (y, x) uint8
    origin: tuple[int, int]  # global (row, col) of [0, 0]
    source: dict = field(default_factory=dict)
    negative: np.ndarray | None = None  # (y, x) bool: inside a rejected candidate (hard negative), or None
    resolution: float | None = None  # m per pixel (None: object sizes and areas in pixels)


def read_labels(path: str | Path, *, where: str | None = None, negatives: bool = False):
    """Label polygons from GeoParquet, GeoPackage, GeoJSON or any OGR format; ``where`` is a pandas query.

    By default only RTS polygons are returned. Rows with ``label == 0`` are rejected
    candidates that ``rtsflow labels merge`` keeps as negatives; ``negatives=True``
    returns them too, with a ``label`` column (1 = RTS, 0 = not RTS) on every row,
    so that :func:`load_area` can sample them as hard negatives.
    """
    import geopandas as gpd

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"labels: {path} does not exist")
    gdf = gpd.read_parquet(path) if path.suffix.lower() == ".parquet" else gpd.read_file(path)
    if gdf.crs is None:
        raise ValueError(f"labels: {path} has no CRS; label polygons must declare their CRS")
    if where:
        try:
            gdf = gdf.query(where)
        except Exception as e:  # pandas raises several types for a bad expression
            raise ValueError(f"labels: --where {where!r} is not a valid filter for {path}: {e}") from e
    if "label" not in gdf:
        return gdf.assign(label=1) if negatives else gdf
    bad = ~gdf["label"].isin([0, 1])
    if bad.any():
        value = gdf["label"][bad].iloc[0]
        value = value.item() if isinstance(value, np.generic) else value
        raise ValueError(f"labels: {path}: row {gdf.index[bad][0]}: label {value!r} is not 1 (RTS) or 0 (not RTS)")
    return gdf if negatives else gdf[gdf["label"] == 1]


def load_area(features_path: str | Path, labels, *, config: TrainConfig) -> TrainingArea:
    """Read the bands of a feature store (its valid bounding box) and rasterise the labels onto it.

    This reads pixels (it is an I/O entry point, like writing a store).
    """
    import dask
    from affine import Affine

    from rtsflow.graph.dem import grid_of
    from rtsflow.io.features import open_features
    from rtsflow.kernels import gdal

    feats = open_features(features_path)
    missing = [b for b in config.bands if b not in feats]
    if missing:
        raise ValueError(f"{features_path}: missing band(s) {missing}; the model needs {list(config.bands)}")
    grid = grid_of(feats)
    finite = np.isfinite(feats[config.bands[0]].data)
    rows, cols = dask.compute(finite.any(axis=1), finite.any(axis=0))
    if not rows.any():
        raise ValueError(f"{features_path}: no valid pixels in band {config.bands[0]!r}")
    r0, r1 = np.flatnonzero(rows)[[0, -1]]
    c0, c1 = np.flatnonzero(cols)[[0, -1]]
    sub = feats[list(config.bands)].isel(y=slice(r0, r1 + 1), x=slice(c0, c1 + 1))
    bands = np.stack(dask.compute(*[sub[b].data for b in config.bands])).astype(np.float32)
    x, valid = normalise(bands, config.normalisation)
    res = grid.resolution
    xs, ys = sub["x"].values, sub["y"].values
    transform = Affine(res, 0.0, xs[0] - res / 2, 0.0, -res, ys[0] + res / 2)
    labels = labels.to_crs(grid.crs)
    labels = labels[~labels.geometry.is_empty & labels.geometry.notna()]
    is_rts = labels["label"].to_numpy() == 1 if "label" in labels else np.ones(len(labels), bool)

    def burn(geoms) -> np.ndarray:
        if not len(geoms):
            return np.zeros(valid.shape, np.uint8)
        return gdal.rasterize(((g, 1) for g in geoms), out_shape=valid.shape, transform=transform, fill=0,
                              dtype="uint8")  # fmt: skip

    polys = labels.geometry[is_rts]
    label = burn(polys)
    rejected = labels.geometry[~is_rts]
    # A rejected outline that overlaps a confirmed one stays background only where it is not RTS.
    negative = (burn(rejected) > 0) & (label == 0) if len(rejected) else None
    w = grid.window_from_coords(xs, ys)
    period = {k: feats.attrs.get(k) for k in ("earlier", "later", "years")}
    return TrainingArea(
        x=x,
        valid=valid,
        label=label,
        origin=(w.row, w.col),
        source={
            "features": str(Path(features_path).resolve()),
            "period": period,
            "n_label_polygons": len(polys),
            "n_negative_polygons": len(rejected),
        },
        negative=negative,
        resolution=float(res),
    )


@dataclass
class TrainResult:
    spec: ModelSpec
    log: Path
    best_epoch: int
    metrics: dict
    history: list[dict]


def _masked_loss(logits, target, valid, kind: str):
    import torch
    import torch.nn.functional as F

    p = torch.sigmoid(logits)
    m = valid.float()
    # Batch-level soft Dice over valid pixels: all-negative tiles still penalise false positives.
    inter = (p * target * m).sum()
    dice = 1.0 - (2.0 * inter + 1.0) / ((p * m).sum() + (target * m).sum() + 1.0)
    if kind == "dice":
        return dice
    bce = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * m).sum() / m.sum().clamp(min=1)
    return dice + bce


def _draw(rng, areas, pools: list[TilePool], config: TrainConfig):
    pos = [(i, rc) for i, pl in enumerate(pools) for rc in pl.positive]
    neg = [(i, rc) for i, pl in enumerate(pools) for rc in pl.negative]
    hard = [(i, rc) for i, pl in enumerate(pools) for rc in pl.hard]
    xs, ys, vs = [], [], []
    t = config.tile
    for _ in range(config.batch_size):
        pick_pos = (rng.random() < config.positive_fraction and pos) or not neg
        pool = pos if pick_pos else neg
        # (No extra draw without hard negatives: training on a plain label set is as before.)
        if not pick_pos and hard and rng.random() < HARD_NEGATIVE_SHARE:
            pool = hard
        i, (r, c) = pool[int(rng.integers(len(pool)))]
        a = areas[i]
        x, y, v = a.x[:, r : r + t, c : c + t], a.label[r : r + t, c : c + t], a.valid[r : r + t, c : c + t]
        if config.augment:
            x, y, v = augment(x, y, v, rng)
        xs.append(x)
        ys.append(y)
        vs.append(v)
    return np.stack(xs), np.stack(ys).astype(np.float32), np.stack(vs)


def _pad_tile(a: np.ndarray, t: int, fill) -> np.ndarray:
    pads = [(0, 0)] * (a.ndim - 2) + [(0, t - a.shape[-2]), (0, t - a.shape[-1])]
    return np.pad(a, pads, constant_values=fill)


def _f_beta(precision: float, recall: float, *, beta: float, n_reference: int) -> float:
    """F-beta of detection; 0 when slumps were there and none was found (precision undefined, recall 0)."""
    b2 = beta * beta
    den = b2 * precision + recall
    if np.isfinite(den) and den > 0:
        return float((1 + b2) * precision * recall / den)
    return 0.0 if n_reference else float("nan")


def _validate(model, areas, val_sets, config: TrainConfig, device: str):
    import torch

    from rtsflow.evaluate import evaluate_rasters

    t = config.tile
    tp = fp = fn = 0
    n_pred = n_tp_pred = n_ref = n_tp_ref = 0
    km2 = 0.0
    losses = []
    with torch.inference_mode():
        for a, (tiles, is_val) in zip(areas, val_sets, strict=True):
            # The area's prediction, stitched from its (non-overlapping) validation tiles, for counting objects.
            pred_area = np.zeros(a.valid.shape, bool)
            for k in range(0, len(tiles), config.batch_size):
                batch = tiles[k : k + config.batch_size]
                x = np.stack([_pad_tile(a.x[:, r : r + t, c : c + t], t, 0.0) for r, c in batch])
                y = np.stack([_pad_tile(a.label[r : r + t, c : c + t], t, 0) for r, c in batch]).astype(np.float32)
                m = np.stack(
                    [
                        _pad_tile(a.valid[r : r + t, c : c + t] & is_val[r : r + t, c : c + t], t, False)
                        for r, c in batch
                    ]
                )
                logits = model(torch.from_numpy(x).to(device)).float()[:, 0]
                yt, mt = torch.from_numpy(y).to(device), torch.from_numpy(m).to(device)
                losses.append(float(_masked_loss(logits, yt, mt, config.loss)))
                pred = (torch.sigmoid(logits) >= config.threshold).cpu().numpy() & m
                truth = y.astype(bool) & m
                tp += int((pred & truth).sum())
                fp += int((pred & ~truth).sum())
                fn += int((~pred & truth).sum())
                for (r, c), p in zip(batch, pred, strict=True):
                    h, w = pred_area[r : r + t, c : c + t].shape
                    pred_area[r : r + h, c : c + w] = p[:h, :w]
            inside = is_val & a.valid
            px_m2 = a.resolution**2 if a.resolution else None
            min_px = max(1, int(np.ceil(config.min_object_m2 / px_m2))) if px_m2 else 1
            obj = evaluate_rasters(pred_area, a.label > 0, valid=inside, min_pixels=min_px,
                                   min_hit_share=MIN_HIT_SHARE)  # fmt: skip
            n_pred, n_tp_pred = n_pred + obj.n_predicted, n_tp_pred + obj.n_tp_predicted
            n_ref, n_tp_ref = n_ref + obj.n_reference, n_tp_ref + obj.n_tp_reference
            km2 += inside.sum() * px_m2 / 1e6 if px_m2 else float("nan")
    iou = tp / (tp + fp + fn) if (tp + fp + fn) else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else float("nan")
    det_p = n_tp_pred / n_pred if n_pred else float("nan")
    det_r = n_tp_ref / n_ref if n_ref else float("nan")
    det_f1, det_f05 = (_f_beta(det_p, det_r, beta=b, n_reference=n_ref) for b in (1.0, 0.5))
    det = {"f1_iou": det_f1, "f05_iou": det_f05}.get(config.select_by, float("nan"))
    # Pixel IoU alone when asked, or when detection is undefined (no slump in the validation cells).
    score = float(np.sqrt(det * iou)) if np.isfinite(det) and np.isfinite(iou) else iou
    return {
        "val_loss": float(np.mean(losses)) if losses else float("nan"),
        "val_iou": iou,
        "val_f1": f1,
        "val_precision": tp / (tp + fp) if tp + fp else float("nan"),
        "val_recall": tp / (tp + fn) if tp + fn else float("nan"),
        "val_detection_f1": det_f1,
        "val_detection_f05": det_f05,
        "val_detection_precision": det_p,
        "val_detection_recall": det_r,
        "val_false_objects": n_pred - n_tp_pred,
        "val_false_per_100km2": 100 * (n_pred - n_tp_pred) / km2 if km2 else float("nan"),
        "val_score": score,
    }


def validation_mask(area: TrainingArea, *, config: TrainConfig) -> np.ndarray:
    """The area's pixels in validation cells (``config``'s split: size, share and seed)."""
    return split_cells(
        area.valid.shape,
        origin=area.origin,
        split_size=config.split_size,
        val_fraction=config.val_fraction,
        seed=config.seed if config.split_seed is None else config.split_seed,
    )


def split_areas(
    areas: list[TrainingArea], *, config: TrainConfig
) -> tuple[list[TilePool], list[tuple[np.ndarray, np.ndarray]], int]:
    """Each area's training tile pool and validation tiles (with its validation mask), and the validation cells.

    Returns ``(train_pools, val_sets, n_cells)``: ``n_cells`` is how many distinct split
    cells of the grid hold validation pixels. Areas on the same place of the grid share
    its cells, so it counts the independent draws the validation set rests on.
    """
    train_pools, val_sets = [], []
    cells: set[tuple[int, int]] = set()
    for a in areas:
        is_val = validation_mask(a, config=config)
        tr, _ = candidate_tiles(
            a.valid,
            a.label,
            is_val,
            origin=a.origin,
            tile=config.tile,
            split_size=config.split_size,
            stride=config.sample_stride,
            min_positive_px=config.min_positive_px,
            negative=a.negative,
        )
        train_pools.append(tr)
        val_sets.append((validation_tiles(a.valid, is_val, tile=config.tile), is_val))
        cells |= cells_holding(is_val & a.valid, origin=a.origin, split_size=config.split_size)
    return train_pools, val_sets, len(cells)


def train(
    areas: list[TrainingArea],
    *,
    out: str | Path,
    config: TrainConfig = TrainConfig(),
    progress: bool = True,
    overwrite: bool = False,
    init_from: str | Path | None = None,
    mine: bool = False,
) -> TrainResult:
    """Train a model; keep the checkpoint with the best validation score (``config.select_by``) in ``out``.

    ``init_from``: a checkpoint to continue from (the next round of the iterative mapping loop); its
    architecture, encoder, bands and normalisation must be the config's. Its path and sha256 go into the
    new record (``training.initialised_from``), with that model's scores on the validation cells
    (``training.initial_validation``), the mark any new checkpoint must be compared against.

    ``mine``: before training, predict the training cells with the ``init_from`` model and
    draw its false objects as hard negatives (:func:`rtsflow.model.mining.mine_hard_negatives`;
    counts in ``training.mined``).

    ``out`` becomes a checkpoint directory (``model.safetensors``,
    ``rtsflow_model.json``) with ``training_log.csv`` (one row per epoch). The
    checkpoint is written to a temporary sibling and renamed into place.
    """
    import torch

    from rtsflow.model.engine import resolve_device
    from rtsflow.progress import progress_bar

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    device = resolve_device(config.device)
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    if device == "cpu":
        torch.use_deterministic_algorithms(True)
    if mine and init_from is None:
        raise ValueError("mining hard negatives needs a model to mine with: pass init_from (CLI: --init-from)")
    model = build_model(
        architecture=config.architecture,
        encoder=config.encoder,
        in_channels=len(config.bands),
        encoder_depth=config.encoder_depth,
        decoder_channels=config.decoder_channels,
    ).to(device)
    initialised_from = _initialise(model, init_from, config) if init_from is not None else None
    mining = None
    if mine:
        from rtsflow.model.mining import mine_hard_negatives

        # Before the split into tile pools, so that the pools hold the mined hard negatives.
        mining = mine_hard_negatives(model, areas, config=config, device=device)
        areas = mining.areas
    train_pools, val_sets, val_cells = split_areas(areas, config=config)
    n_val_tiles = sum(len(vt) for vt, _ in val_sets)
    n_pos = sum(len(p.positive) for p in train_pools)
    n_neg = sum(len(p.negative) for p in train_pools)
    n_hard = sum(len(p.hard) for p in train_pools)
    if n_pos == 0:
        raise ValueError("no training tile contains a slump label: check the labels' area, CRS and --where filter")
    if n_val_tiles == 0:
        raise ValueError(
            f"no validation tiles: the areas cover too few split cells of {config.split_size} px; "
            "lower split_size or raise val_fraction"
        )
    log.info("training tiles: %d with slumps, %d without (%d with rejected candidates); %d validation tiles "
             "in %d split cells", n_pos, n_neg, n_hard, n_val_tiles, val_cells)  # fmt: skip
    if val_cells < MIN_VALIDATION_CELLS:
        # Areas stacked on one place of the grid share its cells: the validation set is then a few draws, and
        # the checkpoint its scores pick is luck (37 synthetic regions on one place: 399 or 45 tiles, by seed).
        warnings.warn(
            f"the validation set lies in only {val_cells} split cells of {config.split_size} px (distinct "
            f"places on the grid): its scores, and the checkpoint they choose, will be noisy; train on areas "
            f"spread over more of the grid or lower split_size",
            stacklevel=2,
        )
    mined = None
    if mining is not None:
        mined = {"false_objects": sum(mining.false_objects), "training_km2": round(mining.training_km2, 2),
                 "per_100km2": round(mining.per_100km2, 2), "hard_negative_tiles": n_hard}  # fmt: skip
        log.info("mined %d false objects on %.1f km² of training cells (%d hard-negative tiles)",
                 mined["false_objects"], mining.training_km2, n_hard)  # fmt: skip

    if device == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        opt, T_0=config.restart_epochs * config.steps_per_epoch
    )
    autocast = dict(
        device_type="cuda" if device == "cuda" else "cpu", dtype=torch.bfloat16, enabled=config.precision == "bf16"
    )

    staging = out.with_name(f".{out.name}.training")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    log_path = staging / LOG_NAME
    history: list[dict] = []
    best = {"val_score": -1.0}
    best_epoch, stale, t0 = -1, 0, time.perf_counter()
    stopped = "epochs"
    training_info = {
        "areas": [a.source for a in areas],
        "config": config.to_dict(),
        # CPU results are bit-identical only at the same thread count (the order of float sums changes).
        "torch_threads": torch.get_num_threads(),
        "tiles": {"train_positive": n_pos, "train_negative": n_neg, "train_hard_negative": n_hard,
                  "validation": n_val_tiles, "validation_cells": val_cells},
    }
    if n_hard:
        training_info["hard_negative_share"] = HARD_NEGATIVE_SHARE
    if initialised_from:
        training_info["initialised_from"] = initialised_from
        model.eval()
        training_info["initial_validation"] = _validate(model, areas, val_sets, config, device)
    if mined:
        training_info["mined"] = mined
    with progress_bar(total=config.epochs, desc="training", unit="epoch", enabled=progress) as bar:
        for epoch in range(config.epochs):
            model.train()
            losses = []
            te = time.perf_counter()
            for _ in range(config.steps_per_epoch):
                x, y, v = _draw(rng, areas, train_pools, config)
                xt = torch.from_numpy(x).to(device)
                if device == "cuda":
                    xt = xt.to(memory_format=torch.channels_last)
                with torch.autocast(**autocast):
                    logits = model(xt)
                loss = _masked_loss(
                    logits.float()[:, 0], torch.from_numpy(y).to(device), torch.from_numpy(v).to(device), config.loss
                )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
            model.eval()
            metrics = _validate(model, areas, val_sets, config, device)
            row = {
                "epoch": epoch + 1,
                "train_loss": float(np.mean(losses)),
                **metrics,
                "lr": opt.param_groups[0]["lr"],
                "seconds": time.perf_counter() - te,
            }
            history.append(row)
            _write_log(log_path, history)
            bar.set_postfix_str(
                f"loss {row['train_loss']:.3f}, val IoU {row['val_iou']:.3f}, "
                f"detection F1 {row['val_detection_f1']:.3f}"
            )
            bar.update()
            # A better score wins; an equal one (e.g. 0 while a sparse label set leaves the validation cells with
            # hardly any slump) goes to the lower validation loss, so training is not stuck on epoch 1.
            better = row["val_score"] > best["val_score"] or (
                row["val_score"] == best["val_score"] and row["val_loss"] < best.get("val_loss", np.inf)
            )
            if np.isfinite(row["val_score"]) and better:
                best, best_epoch, stale = row, epoch + 1, 0
                save_checkpoint(
                    model,
                    staging,
                    architecture=config.architecture,
                    encoder=config.encoder,
                    encoder_depth=config.encoder_depth,
                    decoder_channels=config.decoder_channels,
                    bands=list(config.bands),
                    normalisation=list(config.normalisation),
                    tile_size=config.tile,
                    threshold=config.threshold,
                    training={**training_info, "best_epoch": best_epoch},
                    metrics={k: v for k, v in row.items() if k.startswith("val_")},
                )
            else:
                stale += 1
            if stale >= config.patience:
                stopped = f"early stopping after {config.patience} epochs without a better validation score"
                break
            if config.max_minutes is not None and time.perf_counter() - t0 > 60 * config.max_minutes:
                stopped = f"time cap of {config.max_minutes} min"
                break
    if best_epoch < 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise RuntimeError("the validation score was never finite: the validation cells hold no valid pixels")
    # Record how training ended next to the log, then move the checkpoint into place.
    import json

    record_path = staging / "rtsflow_model.json"
    record = json.loads(record_path.read_text())
    record["training"].update(
        stopped=stopped, epochs_run=len(history), log=LOG_NAME, minutes=round((time.perf_counter() - t0) / 60, 2)
    )
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    from rtsflow.model.checkpoint import read_record

    spec = ModelSpec(path=str(out.resolve()), sha256=read_record(out)["weights_sha256"])
    return TrainResult(spec=spec, log=out / LOG_NAME, best_epoch=best_epoch, metrics=best, history=history)


def _initialise(model, path: str | Path, config: TrainConfig) -> dict:
    """Load a checkpoint's weights (sha256 checked) into ``model``; refuse one of another shape."""
    import safetensors.torch

    from rtsflow.model.checkpoint import WEIGHTS, verify_checkpoint

    record = verify_checkpoint(path)
    ours = {"architecture": config.architecture, "encoder": config.encoder, "encoder_depth": config.encoder_depth,
            "decoder_channels": list(config.decoder_channels) if config.decoder_channels else None,
            "bands": list(config.bands), "normalisation": [s.to_dict() for s in config.normalisation]}  # fmt: skip
    for key, value in ours.items():
        if record.get(key) != value:
            raise ValueError(f"init_from {path}: {key} is {record.get(key)!r} in the checkpoint but {value!r} in "
                             "the training config")  # fmt: skip
    model.load_state_dict(safetensors.torch.load_file(str(Path(path) / WEIGHTS), device="cpu"), strict=True)
    return {"path": str(Path(path).resolve()), "weights_sha256": record["weights_sha256"]}


def config_like(record: dict, base: TrainConfig) -> TrainConfig:
    """``base`` with the model shape (architecture, encoder, bands, normalisation, tile) of a checkpoint record."""
    from rtsflow.model.normalise import BandScaling

    return replace(base, architecture=record["architecture"], encoder=record["encoder"],
                   encoder_depth=record.get("encoder_depth", 5),
                   decoder_channels=tuple(record["decoder_channels"]) if record.get("decoder_channels") else None,
                   bands=tuple(record["bands"]),
                   normalisation=tuple(BandScaling(**d) for d in record["normalisation"]),
                   tile=int(record.get("tile_size", base.tile)))  # fmt: skip


def _write_log(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
