"""SAR quality mask (Maier et al. 2025, Sec. 2.2) and the phase-unwrapping blunder screen."""

from __future__ import annotations

import numpy as np

__all__ = ["sar_quality_mask", "unwrapping_blunders"]


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


def unwrapping_blunders(dem: np.ndarray, reference: np.ndarray, hoa: float, *, fraction: float = 0.5) -> np.ndarray:
    """Pixels of one InSAR DEM off the reference DEM by more than ``fraction`` · HoA: unwrapping blunders.

    A phase-unwrapping error displaces a patch by a multiple of the height of ambiguity
    (Rizzoli et al. 2017, Sec. 4); a height within HoA/2 of an independent reference DEM is on
    the right ambiguity cycle, one farther is not (the check the TanDEM-X DEM change maps make
    against the global DEM, Lachaise et al. 2018). Real change larger than ``fraction`` · HoA
    is screened too: lost to the composite (NaN), never a biased height. ``dem`` must be aligned
    to ``reference`` (co-registered). NaN in either never flags.

    Returns
    -------
    numpy.ndarray of bool, True where the pixel is a blunder.
    """
    with np.errstate(invalid="ignore"):
        limit = fraction * np.asarray(hoa, dtype=np.float32)  # float32 whether HoA comes as a scalar or an array
        return np.abs(np.asarray(dem, dtype=np.float32) - np.asarray(reference, dtype=np.float32)) > limit
