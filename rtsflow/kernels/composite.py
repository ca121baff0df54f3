"""Weighted composites of elevation stacks with propagated error.

The composite is accumulated observation by observation (running Σw, Σw·h,
Σw²σ² and a count per pixel), so memory is a few arrays of one window
whatever the number of observations; :func:`weighted_composite` does the same
over a stack and gives identical results (float64 sums in observation order).

Unwrapping blunders (``blunder`` flags, :func:`rtsflow.kernels.quality.unwrapping_blunders`)
are resolved per pixel in the same single pass, from a second set of sums over the
unflagged observations only:

- some observations flagged, others not: the unflagged ones (a blunder strikes one
  observation; the others are right);
- every observation flagged, two or more of them: all of them (the surface itself is
  off the reference, as a slump deeper than HoA/2 since the reference was made is, in
  every observation alike);
- one observation, flagged: nothing (NaN; a blunder cannot be told from real change).
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
        self.clean = None  # sums over the observations not flagged as blunders, once one is flagged

    def add(self, dem: np.ndarray, sigma: np.ndarray, *, weights: np.ndarray | None = None,
            where: tuple[slice, slice] | None = None, blunder: np.ndarray | None = None) -> None:  # fmt: skip
        """Add one observation (NaN elevations and non-positive or NaN weights are skipped).

        ``where`` places a smaller array (an observation that covers part of the
        window) at those slices; elsewhere it counts as missing. ``blunder``: its
        pixels flagged as unwrapping blunders (see the module docstring).
        """
        if blunder is not None and self.clean is None:
            self.clean = CompositeAccumulator(self.sum_w.shape, method=self.method)
            # Until now no observation was flagged: the clean sums are the sums so far.
            for name in ("sum_w", "sum_wh", "sum_w2s2", "count"):
                setattr(self.clean, name, getattr(self, name).copy())
        if self.clean is not None:
            self.clean._add(dem if blunder is None else np.where(blunder, np.nan, dem), sigma, weights=weights,
                            where=where)  # fmt: skip
        self._add(dem, sigma, weights=weights, where=where)

    def _add(self, dem, sigma, *, weights, where) -> None:
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
        """``(composite, sigma, count)``: NaN (count 0) where no observation was valid.

        With blunder flags: per pixel the clean sums where any observation is unflagged,
        all sums where two or more are and all of them are flagged, none (count 0) where
        the only observation is flagged; ``count`` counts the observations used.
        """
        sums = [self.sum_w, self.sum_wh, self.sum_w2s2, self.count]
        if self.clean is not None:
            c = self.clean
            use_clean = (c.count > 0) | (self.count < 2)
            clean = [c.sum_w, c.sum_wh, c.sum_w2s2, c.count]
            sums = [np.where(use_clean, a, b) for a, b in zip(clean, sums, strict=True)]
        sum_w, sum_wh, sum_w2s2, count = sums
        with np.errstate(invalid="ignore", divide="ignore"):
            composite = sum_wh / sum_w
            sig = np.sqrt(sum_w2s2) / sum_w
        empty = count == 0
        composite[empty] = np.nan
        sig[empty] = np.nan
        return composite.astype(self.dtype), sig.astype(self.dtype), np.asarray(count, dtype=np.int16).copy()


def weighted_composite(
    dem: np.ndarray,
    sigma: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    method: str = "coherence",
    blunder: np.ndarray | None = None,
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
    blunder
        Optional stack of unwrapping-blunder flags (see the module docstring).

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
        acc.add(dem[i], sigma[i], weights=None if weights is None else np.asarray(weights)[i],
                blunder=None if blunder is None else np.asarray(blunder)[i])  # fmt: skip
    return acc.result()
