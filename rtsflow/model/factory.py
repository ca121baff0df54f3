"""Build segmentation models by name (segmentation-models-pytorch; offline, no pretrained weights)."""

from __future__ import annotations

ARCHITECTURES = {"unet": "Unet", "unetplusplus": "UnetPlusPlus", "deeplabv3plus": "DeepLabV3Plus"}

__all__ = ["ARCHITECTURES", "build_model"]


def build_model(*, architecture: str = "unetplusplus", encoder: str = "resnet18", in_channels: int = 4,
                classes: int = 1, encoder_depth: int = 5, decoder_channels: tuple[int, ...] | None = None):  # fmt: skip
    """A randomly initialised smp model (UNet++ with a ResNet18 encoder by default, as in the paper).

    Weights are never downloaded: ``encoder_weights=None``; models are trained by rtsflow.
    ``decoder_channels`` defaults to smp's (256, 128, 64, 32, 16), cut to ``encoder_depth``.
    """
    import segmentation_models_pytorch as smp

    key = architecture.lower().replace("_", "").replace("-", "")
    if key not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {sorted(ARCHITECTURES)}, got {architecture!r}")
    cls = getattr(smp, ARCHITECTURES[key])
    kwargs = {"encoder_name": encoder, "encoder_weights": None, "in_channels": in_channels, "classes": classes}
    if key != "deeplabv3plus":
        kwargs["encoder_depth"] = encoder_depth
        kwargs["decoder_channels"] = tuple(decoder_channels or (256 // 2**i for i in range(encoder_depth)))
    return cls(**kwargs)
