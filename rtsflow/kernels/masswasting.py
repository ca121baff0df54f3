"""Per-RTS mass-wasting numbers from zonal sums (Maier et al. 2025, Sec. 2.6), pure NumPy/pandas."""

from __future__ import annotations

import numpy as np
import pandas as pd

from rtsflow.kernels.local_reference import MIN_RING_PIXELS, RING_FIELDS, difference_terms, histogram_median
from rtsflow.kernels.variogram import VariogramModel
from rtsflow.kernels.zonal import DEPTH_LAYERS, MAX_FIELDS, ZONAL_FIELDS

__all__ = ["mass_wasting_table"]


def mass_wasting_table(
    sums: np.ndarray,
    maxima: np.ndarray,
    *,
    years: float,
    nominal_area: float,
    correlation_length: float = 200.0,
    error_model: VariogramModel | None = None,
    resolution: float = 10.0,
) -> pd.DataFrame:
    """Area, elevation and volume change with uncertainties, one row per polygon.

    Volumes follow δv = mean(dh) · area (the mean over pixels with a valid dDEM,
    times the polygon's whole true ground area), so gaps in the dDEM do not
    shrink volumes.

    Uncertainty
    -----------
    ``volume_sigma_eq8_m3``
        Eq. 8 of the paper: independent pixel errors, σ_V = √Σ(σᵢ aᵢ)², scaled
        like the volume. It shrinks like 1/√n and is too optimistic for
        spatially correlated DEM errors.
    ``volume_sigma_m3``
        Correlated errors. With ``error_model`` (a variogram of dh / σ fitted on
        the pair's stable terrain, :mod:`rtsflow.graph.error_model`): the
        variance of the mean error over a disk of the RTS's area (Rolstad et al.
        2009), σ_V = σ_rms · A · √(var_mean(A)). Without it, n_eff = max(1, A /
        (π L²)) independent patches of correlation length L
        (``correlation_length``, m) and σ_V = σ_rms · A / √n_eff: for a slump
        smaller than one correlation area the error is fully correlated (σ_rms · A).
        Where part of the polygon has no valid dDEM (layover, shadow, the quality
        mask: often the steep headwall), its mean is carried over that part, and
        the unknown difference between the two means adds (A − A_valid) · s_dh
        in quadrature, s_dh being the spread (SD) of dh over the valid pixels:
        the missing part is taken to differ from the rest by as much as the
        observed pixels differ among themselves (``volume_void_sigma_m3``; an
        assumption, not a bound: a void over the whole headwall can differ more).

    Local reference (:mod:`rtsflow.kernels.local_reference`)
    ---------------------------------------------------------
    ``reference_dh_m``
        Median dDEM of the stable ring 30–100 m around the RTS (NaN with fewer than
        ``MIN_RING_PIXELS`` stable pixels or beyond ±5 m); ``reference_n_pixels`` its pixels.
    ``volume_local_m3``
        (mean(dh) − ``reference_dh_m``) · area: the volume relative to the ground around
        the RTS, free of the long-range error both share (and of any real change of the
        surroundings, e.g. regional subsidence, which it removes too).
    ``volume_local_sigma_m3``
        Its 1σ: the error of the difference of the two area means under the same error
        model (the long range cancels), with the ring's own RMS σ. The void term above adds in quadrature.

    Parameters
    ----------
    sums, maxima
        From :func:`rtsflow.kernels.zonal.zonal_sums` (combined over blocks).
    years
        Length of the period (for yearly rates).
    nominal_area
        Nominal grid-cell area (m², 100 for 10 m pixels): ``*_nominal_*`` columns
        use it instead of the true ground area, for comparison with published
        numbers that did (Maier et al. used 100 m² per pixel).
    correlation_length
        L of the fixed-length error model (m), used without ``error_model``.
    error_model
        The pair's fitted three-range error model.
    resolution
        Pixel size (m) of the raster the ring terms are integrated on.
    """
    f = {name: sums[:, i] for i, name in enumerate(ZONAL_FIELDS)}
    m = {name: maxima[:, i] for i, name in enumerate(MAX_FIELDS)}
    with np.errstate(divide="ignore", invalid="ignore"):
        coverage = f["area_m2"] / f["area_all_m2"]
        scale = 1.0 / coverage  # extend the mean over valid pixels to the whole polygon
        area = f["area_all_m2"]
        volume = f["volume_m3"] * scale
        sigma_rms = np.sqrt(f["sum_sigma2"] / f["n_sigma"])
        n = f["n_pixels"]
        # SD of dh over the valid pixels (NaN from fewer than two: no spread to carry over a void)
        spread = np.sqrt(np.maximum(f["sum_dh2"] - f["sum_dh"] ** 2 / n, 0.0) / (n - 1.0))
        void_sigma = np.where(coverage < 1.0, (area - f["area_m2"]) * spread, 0.0)
        if error_model is not None:
            mean_sd = np.sqrt(error_model.mean_error_variance(np.nan_to_num(area)))
        else:
            mean_sd = 1.0 / np.sqrt(np.maximum(1.0, area / (np.pi * correlation_length**2)))
        out = pd.DataFrame(
            {
                "n_pixels": f["n_total"].astype(np.int64),
                "n_valid": f["n_pixels"].astype(np.int64),
                "coverage": coverage,
                "area_m2": area,
                "area_nominal_m2": f["n_total"] * nominal_area,
                "mean_dh_m": f["volume_m3"] / f["area_m2"],
                "max_abs_dh_m": m["max_abs_dh"],
                "max_loss_m": m["max_loss_m"],
                "volume_m3": volume,
                "volume_nominal_m3": f["sum_dh"] / f["n_pixels"] * f["n_total"] * nominal_area,
                "loss_m3": f["loss_m3"] * scale,
                "gain_m3": f["gain_m3"] * scale,
                "volume_sigma_eq8_m3": np.sqrt(f["var_volume_m6"]) * scale,
                "volume_sigma_m3": np.hypot(sigma_rms * area * mean_sd, void_sigma),
                "volume_void_sigma_m3": void_sigma,
                "water_fraction": f["n_water"] / f["n_total"],
                "quality_fraction": f["n_quality"] / f["n_total"],
            }
        )
        model = error_model if error_model is not None else VariogramModel.single(correlation_length)
        ring = sums[:, [ZONAL_FIELDS.index(name) for name in RING_FIELDS]]
        n_ring = f["ring_n_pixels"]
        reference = np.where(n_ring >= MIN_RING_PIXELS, histogram_median(ring[:, 3:]), np.nan)
        sigma_ring = np.sqrt(f["ring_sum_sigma2"] / f["ring_n_sigma"])
        v_pp, v_rr, v_pr = difference_terms(model, area, resolution=resolution)
        var_local = sigma_rms**2 * v_pp + sigma_ring**2 * v_rr - 2.0 * sigma_rms * sigma_ring * v_pr
        out["reference_dh_m"] = reference
        out["reference_n_pixels"] = n_ring.astype(np.int64)
        out["volume_local_m3"] = volume - reference * area
        out["volume_local_sigma_m3"] = np.hypot(area * np.sqrt(np.maximum(var_local, 0.0)), void_sigma)
        for i, (top, bottom) in enumerate(DEPTH_LAYERS):
            name = f"loss_{top:g}_{bottom:g}m_m3" if np.isfinite(bottom) else f"loss_below_{top:g}m_m3"
            out[name] = f[f"loss_layer_{i}_m3"] * scale
        out["years"] = years
        for col in (
            "volume_m3",
            "loss_m3",
            "volume_sigma_eq8_m3",
            "volume_sigma_m3",
            "volume_local_m3",
            "volume_local_sigma_m3",
        ):
            out[col.replace("_m3", "_per_year_m3")] = out[col] / years
        out["area_per_year_m2"] = out["area_m2"] / years
    return out
