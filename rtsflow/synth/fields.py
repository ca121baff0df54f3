"""Pure NumPy kernels for synthetic Arctic terrain, evaluated at any coordinates.

Every field is an analytic function of EPSG:3413 coordinates ``(x, y)``, so a
region can be generated window by window (no global state, no seams), and a
horizontal shift of an observation is an exact evaluation at shifted
coordinates. Random parameters come from :class:`numpy.random.Generator`
seeded by ``(seed, purpose, ...)``, never by evaluation order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "PlaneWaves",
    "bump",
    "cell_candidate",
    "rng_for",
]

_PURPOSES = {
    "hills": 1,
    "valleys": 2,
    "lakes": 3,
    "slumps": 4,
    "pits": 5,
    "patches": 6,
    "obs": 7,
    "noise": 8,
    "atmosphere": 9,
    "lake_change": 10,
    "wetness": 11,
    "noise_correlated": 12,
    "blunders": 13,
    "negatives": 14,
}


def rng_for(seed: int, purpose: str, *keys: int) -> np.random.Generator:
    """A generator that depends only on ``seed``, a purpose name and integer keys."""
    return np.random.default_rng([int(seed), _PURPOSES[purpose], *(int(k) & 0x7FFFFFFF for k in keys)])


@dataclass(frozen=True)
class PlaneWaves:
    """A band-limited random field: a sum of plane waves, evaluated separably.

    ``f(x, y) = Σ a_i cos(kx_i x + ky_i y + φ_i)``. On a grid, each wave costs
    two outer products of 1-D vectors, so a 4096² window is cheap.
    """

    kx: np.ndarray
    ky: np.ndarray
    amplitude: np.ndarray
    phase: np.ndarray

    @classmethod
    def random(
        cls,
        rng: np.random.Generator,
        *,
        n: int,
        wavelength: tuple[float, float],
        rms: float,
        spectral_slope: float = 1.0,
    ) -> PlaneWaves:
        """Waves with log-uniform wavelengths, amplitudes ∝ wavelength**slope, total RMS ``rms``."""
        lam = np.exp(rng.uniform(np.log(wavelength[0]), np.log(wavelength[1]), n))
        theta = rng.uniform(0.0, np.pi, n)
        k = 2.0 * np.pi / lam
        amp = lam**spectral_slope
        amp *= rms / np.sqrt(0.5 * np.sum(amp**2))
        return cls(k * np.cos(theta), k * np.sin(theta), amp, rng.uniform(0.0, 2.0 * np.pi, n))

    def on_grid(self, x: np.ndarray, y: np.ndarray, *, dtype: type = np.float32) -> np.ndarray:
        """Evaluate on the grid ``x`` (columns) × ``y`` (rows); returns shape ``(len(y), len(x))``."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        out = np.zeros((y.size, x.size), dtype=dtype)
        for kx, ky, a, ph in zip(self.kx, self.ky, self.amplitude, self.phase, strict=True):
            cx = np.cos(kx * x + ph).astype(dtype)
            sx = np.sin(kx * x + ph).astype(dtype)
            cy = (a * np.cos(ky * y)).astype(dtype)
            sy = (a * np.sin(ky * y)).astype(dtype)
            # cos(A + B) = cos A cos B - sin A sin B, as two rank-1 updates
            out += cy[:, None] * cx[None, :]
            out -= sy[:, None] * sx[None, :]
        return out

    def at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Evaluate at scattered points (same shape as ``x``)."""
        x = np.asarray(x, dtype=np.float64)[..., None]
        y = np.asarray(y, dtype=np.float64)[..., None]
        return np.sum(self.amplitude * np.cos(self.kx * x + self.ky * y + self.phase), axis=-1)

    def gradient_at(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Analytic (∂f/∂x, ∂f/∂y) at scattered points."""
        x = np.asarray(x, dtype=np.float64)[..., None]
        y = np.asarray(y, dtype=np.float64)[..., None]
        s = -self.amplitude * np.sin(self.kx * x + self.ky * y + self.phase)
        return np.sum(s * self.kx, axis=-1), np.sum(s * self.ky, axis=-1)


def cell_candidate(
    seed: int, purpose: str, i: int, j: int, *, cell: float, probability: float
) -> tuple[np.random.Generator, float, float, float] | None:
    """The random candidate point of lattice cell ``(i, j)``, or ``None``.

    Whether the cell has a candidate, where (uniform in the cell) and its
    thinning priority depend only on ``(seed, purpose, i, j)``.

    Returns
    -------
    ``(rng, x, y, priority)``; ``rng`` continues the cell's stream for the
    object's other random properties.
    """
    rng = rng_for(seed, purpose, i, j)
    if rng.random() >= probability:
        return None
    x = (i + rng.random()) * cell
    y = (j + rng.random()) * cell
    return rng, x, y, float(rng.random())


def bump(r2: np.ndarray, power: float = 1.0) -> np.ndarray:
    """``(1 - r²)^power`` inside the unit disc, 0 outside."""
    return np.where(r2 < 1.0, np.clip(1.0 - r2, 0.0, None) ** power, 0.0)
