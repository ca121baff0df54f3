"""Pair features: the model inputs and what the reduction needs, for two winters (lazy)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from rtsflow.graph.coreg import DEFAULT_COREG, CoregConfig, coregister
from rtsflow.graph.dem import DEFAULT_COMPOSITE, CompositeConfig, seasonal_composites
from rtsflow.grid import Grid
from rtsflow.kernels.ddem import ddem as ddem_kernel
from rtsflow.kernels.ddem import ddem_norm as ddem_norm_kernel
from rtsflow.kernels.ddem import ddem_sigma as ddem_sigma_kernel
from rtsflow.kernels.terrain import slope_horn

__all__ = ["MODEL_BANDS", "pair_features", "slope"]

#: Model input channels, in order (Maier et al. 2025).
MODEL_BANDS = ("ddem_norm", "ddem", "ddem_sigma", "slope")


def slope(dem: xr.DataArray, *, resolution: float) -> xr.DataArray:
    """Horn slope (degrees) with a 1-pixel halo across chunks; NaN on the outer edge."""
    data = da.map_overlap(
        slope_horn, dem.data, depth=1, boundary=np.nan, resolution=resolution, dtype=np.float32,
        meta=np.empty((0, 0), np.float32),
    )  # fmt: skip
    return xr.DataArray(data, dims=dem.dims, coords=dem.coords)


def _attrs(long_name: str, units: str, description: str) -> dict:
    return {"long_name": long_name, "units": units, "description": description, "grid_mapping": "spatial_ref"}


def pair_features(
    cube: xr.Dataset,
    *,
    grid: Grid,
    earlier: int,
    later: int,
    water: xr.DataArray | None = None,
    reference: xr.DataArray | None = None,
    composite: CompositeConfig = DEFAULT_COMPOSITE,
    coreg: CoregConfig | None = DEFAULT_COREG,
) -> tuple[xr.Dataset, pd.DataFrame]:
    """Features for the period between two winters, as one lazy graph.

    Parameters
    ----------
    cube
        Observation cube (dask-backed).
    grid
        The cube's grid.
    earlier, later
        Winters (labelled by the year they start), e.g. 2010 and 2016.
    water
        Optional water mask on the cube's grid (``y × x``, 1 / True = water).
    reference
        Optional reference DEM on the cube's grid: every observation is then
        co-registered to it before compositing (recommended: misregistered
        observations otherwise blur slumps and bias volumes low).
    composite
        Selection, quality masking and weighting of the winter composites.
    coreg
        Co-registration of the later composite onto the earlier one; ``None`` skips it.

    Returns
    -------
    features
        Dataset (dims ``y × x``, plus ``block_y × block_x`` for the
        co-registration fits and ``winter`` for ``n_obs``) with ``ddem``,
        ``ddem_sigma``, ``ddem_norm``, ``slope``, ``quality``, ``water``,
        ``n_obs``; attribute ``years`` = time span.
    selection
        Which observations were used, and why the others were not.
    """
    if later <= earlier:
        raise ValueError(f"later winter ({later}) must come after the earlier one ({earlier})")
    comps, selection = seasonal_composites(cube, winters=[earlier, later], config=composite, reference=reference,
                                           water=water, coreg=coreg or DEFAULT_COREG)  # fmt: skip
    h1, h2 = comps["dem"].sel(winter=earlier, drop=True), comps["dem"].sel(winter=later, drop=True)
    s1, s2 = comps["sigma"].sel(winter=earlier, drop=True), comps["sigma"].sel(winter=later, drop=True)
    n = comps["n_obs"]
    quality = (n.sel(winter=earlier, drop=True) == 0) | (n.sel(winter=later, drop=True) == 0)
    if water is not None:
        water_mask = (water.fillna(0) > 0).astype(np.uint8)
        water_mask = water_mask.chunk(dict(zip(water_mask.dims, h1.data.chunks, strict=True)))
    else:
        water_mask = xr.zeros_like(h1, dtype=np.uint8)
    slope_deg = slope(h1, resolution=grid.resolution)

    fits = None
    if coreg is not None:
        stable = ~quality & (water_mask == 0) & (slope_deg < coreg.max_slope_deg)
        h2, fits = coregister(h1, h2, stable, grid=grid, config=coreg)

    d = xr.apply_ufunc(ddem_kernel, h2, h1, dask="parallelized", output_dtypes=[np.float32])
    ds_sigma = xr.apply_ufunc(ddem_sigma_kernel, s2, s1, dask="parallelized", output_dtypes=[np.float32])
    d_norm = xr.apply_ufunc(ddem_norm_kernel, d, ds_sigma, dask="parallelized", output_dtypes=[np.float32])
    if composite.rules.epoch == "winter":
        years = float(later - earlier)
    else:
        t = selection[selection.selected].groupby("epoch").time.mean()
        years = float((t[later] - t[earlier]) / np.timedelta64(1, "D") / 365.25)
    out = xr.Dataset(
        {
            "ddem": d.astype(np.float32).assign_attrs(_attrs(
                "elevation change", "m", f"Later minus earlier winter composite ({later} − {earlier}); "
                "negative where ground was lost. The later composite is co-registered to the earlier one.")),
            "ddem_sigma": ds_sigma.astype(np.float32).assign_attrs(_attrs(
                "elevation change error (1 sigma)", "m", "√(σ_later² + σ_earlier²) of the composites.")),
            "ddem_norm": d_norm.astype(np.float32).assign_attrs(_attrs(
                "normalised elevation change", "1", "dDEM / σ_dDEM (Maier et al. 2025, Eq. 2).")),
            "slope": slope_deg.astype(np.float32).assign_attrs(_attrs(
                "terrain slope", "degree", f"Horn slope of the earlier composite ({earlier}).")),
            "quality": quality.astype(np.uint8).assign_attrs(_attrs(
                "SAR quality mask", "1", "1 = unusable: no observation passed selection and the SAR "
                "quality mask (layover/shadow, coherence, incidence) in one of the two winters.")),
            "water": water_mask.assign_attrs(_attrs("water mask", "1", "1 = water (from the supplied mask).")),
            "n_obs": n.assign_attrs(_attrs("number of observations", "1",
                                           "Observations in each winter composite at this pixel.")),
        },
        attrs={"earlier": int(earlier), "later": int(later), "years": years,
               "title": f"rtsflow pair features {earlier}→{later}", "Conventions": "CF-1.10"},
    )  # fmt: skip
    if fits is not None:
        out = out.merge(fits, compat="no_conflicts", join="outer")
    obs_fits = [v for v in comps.data_vars if v.startswith("obs_coreg_")]
    if obs_fits:
        out = out.merge(comps[obs_fits], compat="no_conflicts", join="outer")
    if "spatial_ref" in cube.coords:
        out = out.assign_coords(spatial_ref=cube["spatial_ref"])
    return out, selection
