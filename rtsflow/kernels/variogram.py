"""Spatially correlated dDEM error: empirical variogram, multi-range fit, error of an area mean (pure NumPy).

The volume of an RTS is mean(dh) · A, so its error is the error of a mean over
an area. With DEM errors correlated over short (multi-looking, a few pixels)
and long (residual ramps and undulations, kilometres) ranges that error is far
from both extremes: independent pixels (Eq. 8 of Maier et al. 2025, too
optimistic) and one fully correlated offset (too pessimistic). Following
Rolstad et al. (2009) and Hugonnet et al. (2022), the variogram of the
standardised dDEM (dh / σ) on stable terrain is fitted by a sum of a
Gaussian and two spherical models and integrated over a disk of the RTS's area.

xdem.spatialstats implements the same steps but needs scikit-gstat (with numba,
and an older SciPy than ours) for even the model functions; on a regular grid
the variogram is a few array differences, so it is done here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import curve_fit

_GAUSS_LEGENDRE = np.polynomial.legendre.leggauss(64)

__all__ = ["LAGS_PX", "VariogramModel", "fit_variogram", "semivariance_sums", "spherical"]

#: Lags (px) of the empirical variogram: fine where the short range lives, sparse towards kilometres.
LAGS_PX = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)


def spherical(h: np.ndarray, a: float, c: float) -> np.ndarray:
    """Spherical variogram of range ``a`` and partial sill ``c``."""
    r = np.minimum(np.asarray(h, dtype=float) / a, 1.0)
    return c * (1.5 * r - 0.5 * r**3)


def gaussian(h: np.ndarray, a: float, c: float) -> np.ndarray:
    """Gaussian variogram of (practical, 98 %) range ``a`` and partial sill ``c`` (scikit-gstat's form)."""
    return c * (1.0 - np.exp(-((np.asarray(h, dtype=float) / (a / 2.0)) ** 2)))


_FORMS = {"spherical": spherical, "gaussian": gaussian}


def semivariance_sums(z: np.ndarray, *, lags: tuple[int, ...] = LAGS_PX) -> tuple[np.ndarray, np.ndarray]:
    """Σ (z(p) − z(p+h))² / 2 and pair counts along rows and columns, per lag (NaN = no data).

    Sums, not means, so that windows are combined exactly by adding.
    """
    sums, counts = np.zeros(len(lags)), np.zeros(len(lags))
    for k, lag in enumerate(lags):
        for d in (z[:, lag:] - z[:, :-lag], z[lag:, :] - z[:-lag, :]):
            ok = np.isfinite(d)
            sums[k] += 0.5 * float(np.sum(d[ok] ** 2))
            counts[k] += int(ok.sum())
    return sums, counts


@dataclass(frozen=True)
class VariogramModel:
    """A sum of spherical variograms of the standardised error dh / σ (ranges in m, sills in σ² units).

    One range and partial sill per model of ``forms`` (fitted: a Gaussian and two spherical ones).
    """

    ranges: tuple[float, ...]
    sills: tuple[float, ...]
    n_pairs: int = 0
    forms: tuple[str, ...] | None = None  # model of each range; default all spherical

    def __post_init__(self):
        if len(self.ranges) != len(self.sills) or not self.ranges:
            raise ValueError(f"need as many ranges as sills (≥ 1), got {self.ranges} and {self.sills}")
        if self.forms is not None and (len(self.forms) != len(self.ranges) or set(self.forms) - set(_FORMS)):
            raise ValueError(f"forms must be one of {sorted(_FORMS)} per range, got {self.forms}")
        if min(self.ranges) <= 0 or min(self.sills) < 0:
            raise ValueError(f"ranges must be > 0 and sills ≥ 0, got {self.ranges} and {self.sills}")

    @classmethod
    def single(cls, correlation_length: float, sill: float = 1.0) -> VariogramModel:
        """One range, unit sill: the fixed-L model."""
        return cls(ranges=(float(correlation_length),), sills=(float(sill),))

    @property
    def sill(self) -> float:
        return float(sum(self.sills))

    def __call__(self, h: np.ndarray) -> np.ndarray:
        forms = self.forms or ("spherical",) * len(self.ranges)
        return sum(_FORMS[f](h, a, c) for f, a, c in zip(forms, self.ranges, self.sills, strict=True))

    def mean_error_variance(self, area: np.ndarray) -> np.ndarray:
        """Variance (σ² units) of the mean of the error over a disk of ``area`` m².

        Exact for a disk: the covariance C(d) = sill − γ(d) averaged over the
        distance d between two uniform points in the disk (its density is known
        in closed form), by Gauss–Legendre quadrature. Rolstad et al.'s (2009)
        centre-to-point approximation, used by xdem, overstates it for RTS-sized
        areas (mean pair distance 0.91 R, not 0.67 R): by 40–70 % in standard
        deviation for 0.1–2.5 ha on our realistic scenes. A disk has the shortest
        pair distances of any shape of its area, so for real outlines this errs
        on the safe side.
        """
        radius = np.sqrt(np.asarray(area, dtype=float) / np.pi)
        t, w = _GAUSS_LEGENDRE
        u = 0.5 * (t + 1.0)  # d / (2R) on (0, 1)
        # density of d/(2R) for two uniform points in a disk: (16/π) u (arccos u − u √(1 − u²))
        density = 16.0 / np.pi * u * (np.arccos(u) - u * np.sqrt(1.0 - u**2))
        d = 2.0 * radius[..., None] * u
        covariance = self.sill - self(d)
        return np.sum(covariance * density * 0.5 * w, axis=-1)

    def to_dict(self) -> dict:
        forms = list(self.forms or ("spherical",) * len(self.ranges))
        return {"forms": forms, "ranges_m": list(self.ranges), "sills": list(self.sills), "n_pairs": self.n_pairs}


def fit_variogram(
    sums: np.ndarray,
    counts: np.ndarray,
    *,
    resolution: float,
    variance: float | None = None,
    lags: tuple[int, ...] = LAGS_PX,
    min_pairs: int = 50_000,
    short: str = "gaussian",
) -> VariogramModel:
    """Fit a ``short`` (Gaussian) plus two spherical models to summed semivariances (:func:`semivariance_sums`).

    Smooth short-range error (multi-looking), its tail (compositing, a few
    pixels more) and long-range error (residual ramps, undulations); no range is
    forced, as the data may have fewer (a component's sill may be 0). Two
    components are not enough: the short-range shape takes both, and the slow
    rise of the variogram over hundreds of metres, a few per cent of the sill
    but shared by every pixel of an RTS, is left out; the standard deviation of
    the mean over 2–5 ha of stable ground was then 9–39 % too small on our
    realistic scenes (benchmarks/RESULTS.md, "The volume σ: three ranges").

    Weighted least squares (errors ∝ (γ + 5 % of the largest γ) / √pairs, so the
    short lags, where γ is small, still count), from several starting ranges;
    the best fit is kept. Ranges lie between the white-noise limit (a
    covariance integrating to one pixel's area: 2·res/√π Gaussian, res·√(5/π)
    spherical) and 4× the longest lag. A range beyond the longest lag is an
    extrapolation of the variogram's slope, whose sill the lags cannot bound:
    ``variance``, the variance of dh / σ over the whole sample (the windows
    spread over the region), can. Where the fitted sill exceeds it (and the
    model's own value at the longest lag), the longest component's sill and
    range shrink together, keeping its slope over the lags. Raises
    ``ValueError`` when there are fewer than ``min_pairs`` pairs at the first lag.
    """
    counts = np.asarray(counts, dtype=float)
    if counts[0] < min_pairs:
        raise ValueError(f"too few stable pixel pairs for a variogram: {int(counts[0])} < {min_pairs}")
    ok = counts > 0
    h = np.asarray(lags, dtype=float)[ok] * resolution
    gamma = np.asarray(sums, dtype=float)[ok] / counts[ok]
    top = float(gamma.max())
    if not top > 0:
        raise ValueError("the standardised dDEM does not vary on stable terrain: no variogram to fit")

    def model(h, a1, c1, a2, c2, a3, c3):
        return _FORMS[short](h, a1, c1) + spherical(h, a2, c2) + spherical(h, a3, c3)

    # Shortest ranges: covariances that integrate to one pixel's area (Gaussian π a²/4, spherical π a²/5), the
    # white-noise limit on this grid; a shorter one would let the mean of N independent pixels vary less than 1/N.
    a_min = {"gaussian": 2.0 * resolution / np.sqrt(np.pi), "spherical": resolution * np.sqrt(5.0 / np.pi)}
    a_max = 4.0 * h[-1]
    bounds = ([a_min[short], 0.0, a_min["spherical"], 0.0, a_min["spherical"], 0.0],
              [a_max, 2 * top, a_max, 2 * top, a_max, 2 * top])  # fmt: skip
    errors = (gamma + 0.05 * top) / np.sqrt(counts[ok])
    best, best_cost = None, np.inf
    for a1 in (2 * resolution, 8 * resolution, h[-1] / 2):
        for a3 in (h[-1] / 4, h[-1], 0.99 * a_max):
            p0 = [max(a1, 1.01 * a_min[short]), 0.8 * top, min(0.99 * a_max, 4 * a1), 0.1 * top, a3, 0.1 * top]
            try:
                p, _ = curve_fit(model, h, gamma, p0=p0, bounds=bounds, sigma=errors, maxfev=20_000)
            except RuntimeError:
                continue
            cost = float(np.sum(((model(h, *p) - gamma) / errors) ** 2))
            if cost < best_cost:
                best, best_cost = p, cost
    if best is None:
        raise RuntimeError("the variogram fit did not converge")
    a1, c1, *spherical_parts = (float(v) for v in best)
    (a2, c2), (a3, c3) = sorted(zip(spherical_parts[::2], spherical_parts[1::2], strict=True))
    if variance is not None and c3 > 0:
        cap = max(float(variance), float(model(h[-1], a1, c1, a2, c2, a3, c3)))
        excess = c1 + c2 + c3 - cap
        if excess > 0:
            shrink = max(c3 - excess, 0.0) / c3
            c3, a3 = c3 * shrink, max(a3 * shrink, a_min["spherical"])
            (a2, c2), (a3, c3) = sorted([(a2, c2), (a3, c3)])
    return VariogramModel(ranges=(a1, a2, a3), sills=(c1, c2, c3), n_pairs=int(counts[0]),
                          forms=(short, "spherical", "spherical"))  # fmt: skip
