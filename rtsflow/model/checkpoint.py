"""Model checkpoints: a directory with ``model.safetensors`` and a JSON record. Never unpickled.

The JSON record holds everything needed to use the weights correctly:
architecture, encoder, ordered band names, per-band normalisation, tile size,
threshold, training data and period, validation metrics, software versions
and the sha256 of the weights (checked on every load).
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtsflow import __version__
from rtsflow.model.factory import build_model
from rtsflow.model.normalise import BandScaling

__all__ = ["DEFAULT_MODEL", "CheckpointError", "ModelSpec", "load_checkpoint", "save_checkpoint", "verify_checkpoint"]

#: The model shipped with rtsflow: what a run uses when its config names none (recipe: ``pipelines.demo``).
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "default"
WEIGHTS = "model.safetensors"
RECORD = "rtsflow_model.json"
_PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, naming the file and the problem."""


@dataclass(frozen=True)
class ModelSpec:
    """What a task needs to find and verify a model: small and cheap to send to workers."""

    path: str
    sha256: str


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(
    model,
    directory: str | Path,
    *,
    architecture: str,
    encoder: str,
    bands: list[str],
    normalisation: list[BandScaling],
    tile_size: int = 512,
    threshold: float = 0.5,
    encoder_depth: int = 5,
    decoder_channels: tuple[int, ...] | None = None,
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> ModelSpec:
    """Write ``model.safetensors`` and the JSON record; return the spec (path + sha256)."""
    import safetensors.torch
    import segmentation_models_pytorch as smp
    import torch

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if [s.band for s in normalisation] != list(bands):
        raise CheckpointError(f"normalisation bands {[s.band for s in normalisation]} != bands {bands}")
    weights = directory / WEIGHTS
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(state, str(weights))
    sha = _sha256(weights)
    record = {
        "format": "rtsflow-model/1",
        "architecture": architecture,
        "encoder": encoder,
        "encoder_depth": encoder_depth,
        "decoder_channels": list(decoder_channels) if decoder_channels else None,
        "in_channels": len(bands),
        "bands": list(bands),
        "normalisation": [s.to_dict() for s in normalisation],
        "tile_size": tile_size,
        "threshold": threshold,
        "training": training or {},
        "validation_metrics": metrics or {},
        "weights_sha256": sha,
        "software": {
            "rtsflow": __version__,
            "torch": torch.__version__,
            "segmentation_models_pytorch": smp.__version__,
            "python": platform.python_version(),
        },
    }
    (directory / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return ModelSpec(path=str(directory.resolve()), sha256=sha)


def read_record(path: str | Path) -> dict[str, Any]:
    """The JSON record of a checkpoint directory (refuses pickle files)."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() in _PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path}: pickle checkpoints are refused (unpickling can run arbitrary code); "
            f"give a checkpoint directory with {WEIGHTS} and {RECORD}"
        )
    record_path = path / RECORD
    if not record_path.exists():
        raise CheckpointError(f"{path}: not an rtsflow checkpoint (missing {RECORD})")
    try:
        return json.loads(record_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{record_path}: not valid JSON ({e})") from e


def load_checkpoint(path: str | Path, *, expected_sha256: str | None = None, device: str = "cpu"):
    """Build the model and load its weights after checking their sha256.

    Returns
    -------
    model (eval mode, on ``device``), record (dict)
    """
    import safetensors.torch

    path = Path(path)
    record = verify_checkpoint(path, expected_sha256=expected_sha256)
    model = build_model(architecture=record["architecture"], encoder=record["encoder"],
                        in_channels=record["in_channels"], encoder_depth=record.get("encoder_depth", 5),
                        decoder_channels=record.get("decoder_channels"))  # fmt: skip
    state = safetensors.torch.load_file(str(path / WEIGHTS), device="cpu")
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), record


def verify_checkpoint(path: str | Path, *, expected_sha256: str | None = None) -> dict[str, Any]:
    """The record of a checkpoint whose weights match the record's sha256 (and ``expected_sha256``)."""
    path = Path(path)
    record = read_record(path)
    weights = path / WEIGHTS
    if not weights.exists():
        raise CheckpointError(f"{path}: missing {WEIGHTS}")
    sha = _sha256(weights)
    if sha != record.get("weights_sha256"):
        raise CheckpointError(
            f"{weights}: sha256 {sha[:12]}… does not match the record's {record.get('weights_sha256')}"
        )
    if expected_sha256 is not None and sha != expected_sha256:
        raise CheckpointError(f"{weights}: sha256 {sha[:12]}… is not the expected {expected_sha256[:12]}…")
    return record
