"""Lazy per-observation error, quality masks and seasonal composites of an observation cube."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from rtsflow.graph.coreg import DEFAULT_COREG, CoregConfig, coregister
from rtsflow.grid import Grid
from rtsflow.kernels.composite import weighted_composite
from rtsflow.kernels.error import sigma_h
from rtsflow.kernels.quality import sar_quality_mask, unwrapping_blunders
from rtsflow.selection import SelectionRules, select_observations

__all__ = ["DEFAULT_COMPOSITE", "CompositeConfig", "observation_error", "quality_mask", "seasonal_composites"]


@dataclass(frozen=True)
class CompositeConfig:
    """How observations become winter composites.

    Parameters
    ----------
    method
        ``"coherence"`` (paper: weights = γ; DEM-only products weigh 1) or
        ``"inverse_variance"`` (weights = 1/σ²).
    looks
        Number of looks L of Eq. 1.
    min_coherence, max_incidence
        Quality-mask thresholds (γ, radians).
    rules
        Observation selection.
    max_slope_deg
        Steepest reference slope (°) counted as stable ground for co-registration fits.
    blunder_hoa_fraction
        With a reference DEM: pixels of an InSAR observation farther than this fraction of its
        height of ambiguity from the reference (after co-registration) are flagged as
        phase-unwrapping blunders (:func:`rtsflow.kernels.quality.unwrapping_blunders`) and
        left out of the composite where other observations of the epoch are not flagged;
        where all are (two or more), the surface itself has moved that far (a deep slump since
        the reference) and all are used; a lone flagged observation is dropped
        (:mod:`rtsflow.kernels.composite`). ``None``: no screen. Unscreened, one blunder of
        k·HoA in one of three observations moves the composite by ~k·HoA/3 over its patch.
    """

    method: str = "coherence"
    looks: float = 4.0
    min_coherence: float = 0.3
    max_incidence: float = 1.0
    rules: SelectionRules = field(default_factory=SelectionRules)
    max_slope_deg: float = 40.0
    blunder_hoa_fraction: float | None = 0.5


DEFAULT_COMPOSITE = CompositeConfig()


def observation_error(cube: xr.Dataset, *, looks: float = 4.0) -> xr.DataArray:
    """1σ elevation error of every observation: σ_h(γ, HoA) for InSAR, the ``sigma`` layer for DEM-only."""
    sig = xr.apply_ufunc(
        sigma_h,
        cube["coherence"],
        cube["hoa"].astype(np.float32),
        kwargs={"looks": looks},
        dask="parallelized",
        output_dtypes=[np.float32],
    )
    out = xr.where(cube["kind"] == "insar", sig, cube["sigma"]).astype(np.float32)
    out.attrs = {"long_name": "elevation error (1 sigma)", "units": "m",
                 "description": "σ_h from coherence and HoA (Maier et al. 2025, Eq. 1) for InSAR "
                                "observations; the product's error layer for DEM-only ones."}  # fmt: skip
    return out.rename("sigma_h")


def quality_mask(cube: xr.Dataset, *, min_coherence: float = 0.3, max_incidence: float = 1.0) -> xr.DataArray:
    """True where an InSAR observation is unusable (layover/shadow, low γ, steep incidence); never for DEM-only."""

    def kernel(coh, ls, inc):
        return sar_quality_mask(coh, layover_shadow=ls, incidence=inc, min_coherence=min_coherence,
                                max_incidence=max_incidence)  # fmt: skip

    bad = xr.apply_ufunc(
        kernel,
        cube["coherence"],
        cube["layover_shadow"],
        cube["incidence"],
        dask="parallelized",
        output_dtypes=[bool],
    )
    out = bad & (cube["kind"] == "insar")
    out.attrs = {"long_name": "SAR quality mask", "units": "1",
                 "description": f"True = unusable: layover/shadow, coherence < {min_coherence}, "
                                f"local incidence > {max_incidence} rad."}  # fmt: skip
    return out.rename("bad")


def _composite_block(dem: np.ndarray, sigma: np.ndarray, weight: np.ndarray, blunder: np.ndarray | None = None, *,
                     method: str) -> np.ndarray:  # fmt: skip
    comp, sig, count = weighted_composite(dem, sigma, weights=weight, method=method, blunder=blunder)
    return np.stack([comp.astype(np.float32), sig.astype(np.float32), count.astype(np.float32)])


def seasonal_composites(
    cube: xr.Dataset,
    *,
    winters: Sequence[int] | None = None,
    config: CompositeConfig = DEFAULT_COMPOSITE,
    reference: xr.DataArray | None = None,
    water: xr.DataArray | None = None,
    coreg: CoregConfig = DEFAULT_COREG,
) -> tuple[xr.Dataset, pd.DataFrame]:
    """Per-winter weighted composites of the selected, quality-masked observations (lazy).

    Parameters
    ----------
    cube
        Observation cube (dask-backed, as from :func:`rtsflow.io.cube.open_cube`).
    winters
        Epochs to build: winters labelled by the year they start (or YYYYMMDD
        dates with ``rules.epoch == "date"``); default: every epoch with a
        selected observation.
    config
        Weighting, thresholds and selection rules.
    reference
        Optional reference DEM on the cube's grid (``y × x``). When given, every
        selected observation is first co-registered to it per block (xDEM, see
        :func:`rtsflow.graph.coreg.coregister`), so misregistered observations
        do not blur the composite and the result is geolocated like the reference.
    water
        Optional water mask (1 = water), excluded from the stable ground of those fits.
    coreg
        Settings of the per-observation co-registration.

    Returns
    -------
    composites
        Dataset with dims ``winter × y × x``: ``dem``, ``sigma`` (propagated
        1σ) and ``n_obs`` (observations that contributed to each pixel); with
        a ``reference``, also the per-observation fits ``obs_coreg_*``
        (``aligned_obs × block_y × block_x``).
    selection
        One row per observation: winter, used or not, and why not.
    """
    selection = select_observations(cube, rules=config.rules)
    used = selection[selection.selected]
    if winters is None:
        winters = sorted(used.epoch.unique())
    winters = [int(w) for w in winters]
    missing = [w for w in winters if not (used.epoch == w).any()]
    if missing:
        raise ValueError(
            f"no selected observation in epoch(s) {missing} ({config.rules.epoch}s); see the selection table for why"
        )
    sig = observation_error(cube, looks=config.looks)
    bad = quality_mask(cube, min_coherence=config.min_coherence, max_incidence=config.max_incidence)
    dem = cube["dem"].where(~bad)
    weight = xr.where(cube["kind"] == "insar", cube["coherence"], np.float32(1.0)).astype(np.float32)
    obs_fits = blunder = None
    if reference is not None:
        dem, obs_fits = _align_observations(cube, dem, bad, used[used.epoch.isin(winters)].obs.to_numpy(),
                                            reference=reference, water=water, config=config, coreg=coreg)  # fmt: skip
        if config.blunder_hoa_fraction is not None:
            blunder = _blunders(dem, reference, cube, fraction=config.blunder_hoa_fraction)
    layers = []
    for w in winters:
        idx = used.obs[used.epoch == w].to_numpy()
        stack = [a.isel(obs=idx).data.rechunk({0: -1}) for a in (dem, sig, weight)]
        if blunder is not None:
            stack.append(blunder.isel(obs=idx).data.rechunk({0: -1}))
        out = da.map_blocks(
            _composite_block, *stack, method=config.method, drop_axis=0, new_axis=0,
            chunks=((3,), *stack[0].chunks[1:]), dtype=np.float32, meta=np.empty((0, 0, 0), np.float32),
        )  # fmt: skip
        layers.append(out)
    stacked = da.stack(layers)  # winter, 3, y, x
    coords = {"winter": ("winter", np.asarray(winters), {"long_name": "winter (year it starts)"}),
              "y": cube["y"], "x": cube["x"]}  # fmt: skip
    if "spatial_ref" in cube.coords:
        coords["spatial_ref"] = cube["spatial_ref"]
    ds = xr.Dataset(
        {
            "dem": (("winter", "y", "x"), stacked[:, 0], {
                "long_name": "winter composite elevation", "units": "m", "grid_mapping": "spatial_ref",
                "description": f"{config.method}-weighted mean of the selected, quality-masked observations."}),
            "sigma": (("winter", "y", "x"), stacked[:, 1], {
                "long_name": "composite elevation error (1 sigma)", "units": "m", "grid_mapping": "spatial_ref",
                "description": "√(Σwᵢ²σᵢ²)/Σwᵢ: propagated from the observations' σ (independent errors)."}),
            "n_obs": (("winter", "y", "x"), stacked[:, 2].astype(np.int16), {
                "long_name": "number of observations", "units": "1", "grid_mapping": "spatial_ref",
                "description": "Observations that passed selection and the quality mask at this pixel."}),
        },
        coords=coords,
    )  # fmt: skip
    if obs_fits is not None:
        ds = ds.merge(obs_fits)
    return ds, selection


def _blunders(dem: xr.DataArray, reference: xr.DataArray, cube: xr.Dataset, *, fraction: float) -> xr.DataArray:
    """Unwrapping blunders of every InSAR observation against the reference (lazy; DEM-only products: none)."""
    flags = xr.apply_ufunc(unwrapping_blunders, dem, reference, cube["hoa"].astype(np.float32),
                           kwargs={"fraction": fraction}, dask="parallelized", output_dtypes=[bool])  # fmt: skip
    return flags & (cube["kind"] == "insar")


def _align_observations(cube, dem, bad, obs_idx, *, reference, water, config, coreg):
    """Co-register each listed observation to the reference DEM; returns the aligned dem stack and fits."""
    from rtsflow.graph.features import slope  # local: features imports this module

    grid = grid_of(cube)
    ref = reference.astype(np.float32)
    stable_base = slope(ref, resolution=grid.resolution) < config.max_slope_deg
    if water is not None:
        stable_base = stable_base & ~(water.fillna(0) > 0)
    aligned, fits = {}, []
    for i in obs_idx:
        target = dem.isel(obs=int(i))
        stable = stable_base & ~bad.isel(obs=int(i)) & target.notnull()
        a, f = coregister(ref, target, stable, grid=grid, config=coreg)
        aligned[int(i)] = a
        fits.append(f.rename({k: k.replace("coreg_", "obs_coreg_") for k in f.data_vars}))
    stack = [aligned.get(i, dem.isel(obs=i)).data for i in range(cube.sizes["obs"])]
    out = xr.DataArray(da.stack(stack), dims=dem.dims, coords=dem.coords)
    fit_ds = xr.concat(fits, dim="aligned_obs").assign_coords(
        aligned_obs=("aligned_obs", cube["product_id"].values[obs_idx].astype(str).astype(object))
    )
    return out, fit_ds


def grid_of(ds: xr.Dataset) -> Grid:
    """The grid recorded in a cube's or feature store's attributes (default grid otherwise)."""
    a = ds.attrs
    if "grid_resolution" in a:
        return Grid.from_attrs(a)
    return Grid(resolution=float(abs(ds["x"].values[1] - ds["x"].values[0])))
