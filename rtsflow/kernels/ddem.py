"""Elevation differences and their normalisation (Maier et al. 2025, Eq. 2)."""

from __future__ import annotations

import numpy as np

__all__ = ["ddem", "ddem_norm", "ddem_sigma"]


def ddem(later: np.ndarray, earlier: np.ndarray) -> np.ndarray:
    """dDEM = h_later − h_earlier (m): negative where ground was lost."""
    return np.asarray(later) - np.asarray(earlier)


def ddem_sigma(sigma_later: np.ndarray, sigma_earlier: np.ndarray) -> np.ndarray:
    """σ_dDEM = √(σ₁² + σ₂²) for independent errors."""
    return np.hypot(np.asarray(sigma_later), np.asarray(sigma_earlier))


def ddem_norm(ddem: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """dDEM_norm = dDEM / σ_dDEM (NaN where σ is 0, NaN or infinite)."""
    d = np.asarray(ddem)
    s = np.asarray(sigma)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = d / s
    return np.where(np.isfinite(s) & (s > 0), out, np.nan).astype(np.result_type(d.dtype, np.float32))
