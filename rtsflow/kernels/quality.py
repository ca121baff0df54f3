"""SAR quality mask (Maier et al. 2025, Sec. 2.2)."""

from __future__ import annotations

import numpy as np

__all__ = ["sar_quality_mask"]


def sar_quality_mask(
    coherence: np.ndarray,
    *,
    layover_shadow: np.ndarray | None = None,
    incidence: np.ndarray | None = None,
    min_coherence: float = 0.3,
    max_incidence: float = 1.0,
) -> np.ndarray:
    """Pixels unfit for elevation change: layover/shadow, γ < ``min_coherence``, incidence > ``max_incidence`` rad.

    Parameters
    ----------
    coherence
        γ in [0, 1]; NaN (no observation) counts as bad.
    layover_shadow
        1 = layover or shadow; NaN (layer not supplied) counts as clear.
    incidence
        Local incidence angle (rad); NaN counts as clear.

    Returns
    -------
    numpy.ndarray of bool, True where the pixel is **bad**.
    """
    gamma = np.asarray(coherence)
    with np.errstate(invalid="ignore"):
        bad = ~(gamma >= min_coherence)  # NaN compares False: bad
        if layover_shadow is not None:
            bad |= np.asarray(layover_shadow) == 1
        if incidence is not None:
            bad |= np.asarray(incidence) > max_incidence
    return bad
