"""Realistic InSAR DEM errors (pure NumPy): short-range correlated height noise and phase-unwrapping blunders.

- **Short-range correlation.** A TanDEM-X DEM is multi-looked: each posting
  averages several interferogram looks, so neighbouring height errors are
  correlated over a few pixels (Rizzoli et al. 2017, *ISPRS J.* 132: the
  random height error is estimated over multi-looked windows; Wessel et al.
  2018, *ISPRS J.* 139: TanDEM-X DEM error correlated over ~1–3 postings).
  :func:`correlated_noise` turns white noise into a unit-variance field with a
  Gaussian correlation function ρ(r) = exp(−r² / L²): ρ(L) = 1/e, L the
  *correlation length* in pixels.
- **Phase-unwrapping blunders.** Where the unwrapper takes a wrong path, a
  whole patch is off by an integer multiple of the height of ambiguity
  (Rizzoli et al. 2017, Sec. 4; Martone et al. 2012). :func:`blunder_offsets`
  draws elliptic patches at a given rate with offsets k · HoA, k = ±1 (±2 in
  one patch of ten), in low-coherence ground (coherence below a limit), where
  unwrapping fails.

Long-range errors (ramps, atmospheric undulations) and misregistration are in
:mod:`rtsflow.synth.observations`. Every field here depends on the global
pixel position only (lattice cells with their own seeds), so a region can be
generated window by window.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["blunder_offsets", "correlated_noise", "halo_px"]

BLUNDER_CELL = 256  # px: lattice of the blunder draws
MAX_BLUNDER_RADIUS_PX = 40


def halo_px(length_px: float) -> int:
    """Pixels of white noise needed on each side for :func:`correlated_noise` (4 σ of its kernel)."""
    return int(np.ceil(4.0 * _kernel_sigma(length_px)))


def _kernel_sigma(length_px: float) -> float:
    # Gaussian kernel σ_k gives ρ(r) = exp(−r² / (4 σ_k²)); ρ(L) = 1/e ⇒ σ_k = L / 2.
    return length_px / 2.0


def correlated_noise(white: np.ndarray, *, length_px: float) -> np.ndarray:
    """Unit-variance noise with correlation length ``length_px`` from a white field with a halo.

    ``white`` is standard normal, ``(y + 2h, x + 2h)`` with ``h = halo_px(length_px)``; the result is
    ``(y, x)``. Exactly unit variance: divided by the kernel's L2 norm.
    """
    h = halo_px(length_px)
    if length_px <= 0:
        return white[h : white.shape[0] - h, h : white.shape[1] - h].copy()
    s = _kernel_sigma(length_px)
    r = np.arange(-h, h + 1)
    k1 = np.exp(-(r**2) / (2 * s**2))
    k1 /= np.sqrt((k1**2).sum())  # separable: ‖k‖₂ of the 2-D kernel is the product of the 1-D norms
    out = ndimage.convolve1d(white.astype(np.float64), k1, axis=0, mode="constant")
    out = ndimage.convolve1d(out, k1, axis=1, mode="constant")
    return out[h : white.shape[0] - h, h : white.shape[1] - h].astype(np.float32)


def blunder_offsets(
    *,
    rows: np.ndarray,
    cols: np.ndarray,
    coherence: np.ndarray,
    hoa: float,
    rate_per_cell: float,
    rng_for_cell,
    max_coherence: float = 0.5,
) -> np.ndarray:
    """Height offsets (m) of unwrapping blunders on the pixels ``rows`` × ``cols`` (global indices).

    Each ``BLUNDER_CELL``² cell of the global lattice holds a Poisson(``rate_per_cell``) number of elliptic
    patches (radii 6–``MAX_BLUNDER_RADIUS_PX`` px) drawn from ``rng_for_cell(cell_row, cell_col)``; a patch
    offsets its pixels whose coherence is below ``max_coherence`` by k · ``hoa``.
    """
    out = np.zeros((rows.size, cols.size), np.float32)
    if rate_per_cell <= 0:
        return out
    n, m = BLUNDER_CELL, MAX_BLUNDER_RADIUS_PX
    for cr in range((rows[0] - m) // n, (rows[-1] + m) // n + 1):
        for cc in range((cols[0] - m) // n, (cols[-1] + m) // n + 1):
            rng = rng_for_cell(cr, cc)
            for _ in range(rng.poisson(rate_per_cell)):
                r0, c0 = cr * n + rng.uniform(0, n), cc * n + rng.uniform(0, n)
                a, b = rng.uniform(6, m, size=2)
                theta = rng.uniform(0, np.pi)
                k = rng.choice([-2, -1, 1, 2], p=[0.05, 0.45, 0.45, 0.05])
                dr, dc = rows[:, None] - r0, cols[None, :] - c0
                u = dr * np.cos(theta) + dc * np.sin(theta)
                v = -dr * np.sin(theta) + dc * np.cos(theta)
                inside = (u / a) ** 2 + (v / b) ** 2 <= 1.0
                out[inside] = k * hoa  # a later patch replaces an earlier one: still one multiple of HoA
    return np.where(coherence < max_coherence, out, np.float32(0.0))
