"""Per-band normalisation of feature tiles for the model (pure NumPy).

Defaults follow the paper's scheme (fixed metre ranges for dDEM and σ,
slope / 90) with two deliberate differences from the reference code: values
outside a range are clipped instead of set to zero, and NaN (no data) becomes
0 with a separate validity mask, so the loss can ignore those pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["DEFAULT_NORMALISATION", "BandScaling", "normalise"]


@dataclass(frozen=True)
class BandScaling:
    """Linear map of [low, high] onto [-1, 1] (or [0, 1] when ``low == 0``), then clipping."""

    band: str
    low: float
    high: float

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT_NORMALISATION: tuple[BandScaling, ...] = (
    BandScaling("ddem_norm", -10.0, 10.0),
    BandScaling("ddem", -20.0, 20.0),
    BandScaling("ddem_sigma", 0.0, 10.0),
    BandScaling("slope", 0.0, 90.0),
)


def normalise(
    bands: np.ndarray, scalings: Sequence[BandScaling], *, out: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Scale a ``(band, y, x)`` stack; return ``(scaled float32, valid bool (y, x))``.

    A pixel is valid when every band is finite; invalid pixels are 0 in every band.
    ``out``: a float32 array of the stack's shape to write into (e.g. a slot of a
    pinned batch buffer), instead of a new one.
    """
    x = np.asarray(bands, dtype=np.float32)
    if x.shape[0] != len(scalings):
        raise ValueError(f"expected {len(scalings)} bands ({[s.band for s in scalings]}), got {x.shape[0]}")
    # Band by band into one mask (no (band, y, x) temporary, no strided reduction over bands).
    valid = np.isfinite(x[0])
    finite = np.empty_like(valid)
    for band in x[1:]:
        valid &= np.isfinite(band, out=finite)
    if out is None:
        out = np.empty_like(x)
    # In place, in the order of ``2 (x - low) / (high - low) - 1`` (float32 throughout, like the
    # expression), so the result is the same to the bit while allocating nothing per band.
    for i, s in enumerate(scalings):
        o = out[i]
        if s.low == 0.0:
            np.divide(x[i], s.high, out=o)
            lo, hi = 0.0, 1.0
        else:
            np.subtract(x[i], s.low, out=o)
            np.multiply(o, 2.0, out=o)
            np.divide(o, s.high - s.low, out=o)
            np.subtract(o, 1.0, out=o)
            lo, hi = -1.0, 1.0
        np.clip(o, lo, hi, out=o)  # ±inf → the range ends; NaN stays NaN (and is zeroed below)
    # A pixel with NaN in any band is invalid and 0 in every band, so no separate NaN → 0 pass is needed.
    np.copyto(out, 0.0, where=~valid[None])
    return out, valid
