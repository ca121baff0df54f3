"""Weighted composites of elevation stacks with propagated error.

The composite is accumulated observation by observation (running Σw, Σw·h,
Σw²σ² and a count per pixel), so memory is a few arrays of one window
whatever the number of observations; :func:`weighted_composite` does the same
over a stack and gives identical results (float64 sums in observation order).
"""

from __future__ import annotations

import numpy as np

__all__ = ["CompositeAccumulator", "composite_weights", "weighted_composite"]

METHODS = ("coherence", "inverse_variance")


def composite_weights(sigma: np.ndarray, weights: np.ndarray | None, *, method: str) -> np.ndarray:
    """Per-pixel weights (float64): the coherence γ (``"coherence"``) or 1/σ² (``"inverse_variance"``)."""
    if method == "coherence":
        if weights is None:
            raise ValueError("method='coherence' needs weights (the coherence of each observation)")
        return np.asarray(weights, dtype=np.float64)
    if method == "inverse_variance":
        with np.errstate(divide="ignore"):
            return 1.0 / np.asarray(sigma, dtype=np.float64) ** 2
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


class CompositeAccumulator:
    """Running weighted mean of elevations with its propagated 1σ error, one observation at a time.

    Parameters
    ----------
    shape
        Shape of the window every observation covers.
    method
        ``"coherence"`` (w = γ, the paper) or ``"inverse_variance"`` (w = 1/σ²).
    """

    def __init__(self, shape: tuple[int, ...], *, method: str = "coherence") -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.method = method
        self.sum_w = np.zeros(shape)
        self.sum_wh = np.zeros(shape)
        self.sum_w2s2 = np.zeros(shape)
        self.count = np.zeros(shape, dtype=np.int16)
        self.dtype = np.dtype(np.float32)

    def add(self, dem: np.ndarray, sigma: np.ndarray, *, weights: np.ndarray | None = None,
            where: tuple[slice, slice] | None = None) -> None:  # fmt: skip
        """Add one observation (NaN elevations and non-positive or NaN weights are skipped).

        ``where`` places a smaller array (an observation that covers part of the
        window) at those slices; elsewhere it counts as missing.
        """
        dem = np.asarray(dem)
        self.dtype = np.result_type(self.dtype, dem.dtype, np.float32)
        w = composite_weights(sigma, weights, method=self.method)
        # An observation counts where it has an elevation and a usable weight; an
        # unknown σ (DEM-only product without error layer) leaves the composite σ unknown.
        valid = np.isfinite(dem) & np.isfinite(w) & (w > 0)
        w = np.where(valid, w, 0.0)
        h = np.where(valid, dem, 0.0).astype(np.float64)
        s = np.where(valid, sigma, 0.0).astype(np.float64)
        at = where if where is not None else (Ellipsis,)
        self.sum_w[at] += w
        self.sum_wh[at] += w * h
        self.sum_w2s2[at] += w * w * s * s
        self.count[at] += valid

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(composite, sigma, count)``: NaN (count 0) where no observation was valid."""
        with np.errstate(invalid="ignore", divide="ignore"):
            composite = self.sum_wh / self.sum_w
            sig = np.sqrt(self.sum_w2s2) / self.sum_w
        empty = self.count == 0
        composite[empty] = np.nan
        sig[empty] = np.nan
        return composite.astype(self.dtype), sig.astype(self.dtype), self.count.copy()


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
    if method == "coherence" and weights is None:
        raise ValueError("method='coherence' needs weights (the coherence of each observation)")
    acc = CompositeAccumulator(dem.shape[1:], method=method)
    acc.dtype = np.result_type(dem.dtype, np.float32)
    for i in range(dem.shape[0]):
        acc.add(dem[i], sigma[i], weights=None if weights is None else np.asarray(weights)[i])
    return acc.result()
