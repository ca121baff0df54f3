"""Model factory, normalisation and checkpoints (CPU)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from rtsflow.model.checkpoint import CheckpointError, load_checkpoint, read_record, save_checkpoint
from rtsflow.model.factory import build_model
from rtsflow.model.normalise import DEFAULT_NORMALISATION, normalise

BANDS = [s.band for s in DEFAULT_NORMALISATION]


def test_normalisation_clips_and_masks_nan():
    x = np.array([[[-30.0, 0.0, 5.0, np.nan]], [[-40.0, 0.0, 10.0, 1.0]], [[2.0, 0.0, 20.0, 1.0]],
                  [[45.0, 0.0, 90.0, 1.0]]], dtype="float32")  # fmt: skip
    out, valid = normalise(x, DEFAULT_NORMALISATION)
    assert valid.tolist() == [[True, True, True, False]]
    np.testing.assert_allclose(out[:, 0, 0], [-1.0, -1.0, 0.2, 0.5])  # clipped, not zeroed
    np.testing.assert_allclose(out[:, 0, 2], [0.5, 0.5, 1.0, 1.0])
    assert (out[:, 0, 3] == 0).all()
    with pytest.raises(ValueError, match="expected 4 bands"):
        normalise(x[:3], DEFAULT_NORMALISATION)


@pytest.mark.parametrize("architecture", ["unet", "unetplusplus", "deeplabv3plus"])
def test_factory_builds_offline(architecture):
    model = build_model(architecture=architecture, encoder="resnet18", in_channels=4).eval()
    with torch.no_grad():
        y = model(torch.zeros(1, 4, 64, 64))
    assert y.shape == (1, 1, 64, 64)
    with pytest.raises(ValueError, match="architecture must be one of"):
        build_model(architecture="segformer-xl")


def test_checkpoint_roundtrip_is_bit_identical_and_pickles_are_refused(tmp_path):
    torch.manual_seed(0)
    model = build_model(architecture="unet", encoder="resnet18", in_channels=4, encoder_depth=3).eval()
    spec = save_checkpoint(model, tmp_path / "ckpt", architecture="unet", encoder="resnet18", encoder_depth=3,
                           bands=BANDS, normalisation=list(DEFAULT_NORMALISATION), training={"seed": 0},
                           metrics={"val_iou": 0.0})  # fmt: skip
    x = torch.randn(2, 4, 64, 64)
    with torch.no_grad():
        expected = model(x)
        back, record = load_checkpoint(spec.path, expected_sha256=spec.sha256)
        got = back(x)
    assert torch.equal(expected, got)
    assert record["bands"] == BANDS and record["weights_sha256"] == spec.sha256
    assert pickle.loads(pickle.dumps(spec)) == spec  # the spec travels to workers, not the module
    # Pickle checkpoints are refused before anything is read.
    pt = tmp_path / "model.pt"
    torch.save(model.state_dict(), pt)
    with pytest.raises(CheckpointError, match="pickle checkpoints are refused"):
        read_record(pt)
    with pytest.raises(CheckpointError, match="pickle checkpoints are refused"):
        load_checkpoint(pt)
    # Tampered weights are detected.
    w = tmp_path / "ckpt" / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(spec.path)
