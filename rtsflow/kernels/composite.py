"""Weighted composites of elevation stacks with propagated error."""

from __future__ import annotations

import numpy as np

__all__ = ["weighted_composite"]


def weighted_composite(
    dem: np.ndarray,
    sigma: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    method: str = "coherence",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted mean of a stack of DEMs along axis 0, ignoring NaNs, with its 1σ error.

    Parameters
    ----------
    dem
        Stack ``(n, ...)`` of elevations (m); NaN where an observation is missing or masked.
    sigma
        Stack of the observations' 1σ errors (m), same shape.
    weights
        Per-pixel weights for ``method="coherence"`` (the coherence γ, as in
        Maier et al. 2025); ignored for ``"inverse_variance"``.
    method
        ``"coherence"``: w = γ. ``"inverse_variance"``: w = 1/σ² (the minimum-variance estimate).

    Returns
    -------
    composite, sigma_composite, count
        h = Σwᵢhᵢ / Σwᵢ; σ = √(Σwᵢ²σᵢ²) / Σwᵢ (independent errors), which is
        1/√(Σ1/σᵢ²) for inverse-variance weights; count = observations used.
        NaN (count 0) where no observation is valid; σ is NaN where a used
        observation's σ is unknown.
    """
    dem = np.asarray(dem)
    sigma = np.asarray(sigma)
    dtype = np.result_type(dem.dtype, np.float32)
    if method == "coherence":
        if weights is None:
            raise ValueError("method='coherence' needs weights (the coherence of each observation)")
        w = np.asarray(weights, dtype=np.float64)
    elif method == "inverse_variance":
        with np.errstate(divide="ignore"):
            w = 1.0 / np.asarray(sigma, dtype=np.float64) ** 2
    else:
        raise ValueError(f"method must be 'coherence' or 'inverse_variance', got {method!r}")
    # An observation counts where it has an elevation and a usable weight; an
    # unknown σ (DEM-only product without error layer) leaves the composite σ unknown.
    valid = np.isfinite(dem) & np.isfinite(w) & (w > 0)
    w = np.where(valid, w, 0.0)
    wsum = w.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        h = np.where(valid, dem, 0.0).astype(np.float64)
        composite = (w * h).sum(axis=0) / wsum
        s = np.where(valid, sigma, 0.0).astype(np.float64)
        sig = np.sqrt((w * w * s * s).sum(axis=0)) / wsum
    count = valid.sum(axis=0).astype(np.int16)
    empty = count == 0
    composite[empty] = np.nan
    sig[empty] = np.nan
    return composite.astype(dtype), sig.astype(dtype), count
