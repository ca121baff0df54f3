"""Elevation error of InSAR DEMs from coherence (Maier et al. 2025, Eq. 1)."""

from __future__ import annotations

import numpy as np

__all__ = ["sigma_h"]


def sigma_h(coherence: np.ndarray, hoa: np.ndarray | float, *, looks: float = 4.0) -> np.ndarray:
    """Height error (1σ, metres) of an InSAR DEM from its coherence.

    σ_h = √(1 − γ²) / (γ √(2L)) · HoA / (2π)

    Parameters
    ----------
    coherence
        Interferometric coherence γ in [0, 1].
    hoa
        Height of ambiguity in metres (scalar or broadcastable).
    looks
        Number of looks L (the paper uses 4).

    Returns
    -------
    numpy.ndarray
        float32 for float32 input, float64 otherwise; ``+inf`` where γ = 0,
        NaN where γ or HoA is NaN. Never raises for γ → 0.
    """
    gamma = np.asarray(coherence)
    dtype = np.float32 if gamma.dtype == np.float32 else np.float64
    gamma = gamma.astype(dtype, copy=False)
    with np.errstate(divide="ignore", invalid="ignore"):
        phase_sigma = np.sqrt(np.clip(1.0 - gamma * gamma, 0.0, None)) / (gamma * np.sqrt(2.0 * looks))
        out = phase_sigma * (np.asarray(hoa, dtype=dtype) / (2.0 * np.pi))
    return out.astype(dtype, copy=False)
