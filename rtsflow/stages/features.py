"""Pair stages: co-registration of the later composite onto the earlier one, then the pair features, per block.

``coreg_pair`` fits the later winter's composite to the earlier one over each
block on stable ground (both composites valid, not water, slope < 40°) and
stores the raw fit. ``features`` applies the block's fit (or its neighbours'
mean shift: the 3 × 3 fallback rule) with a halo and computes dDEM, σ,
dDEM_norm, slope, masks and counts. Composites are read from the epochs'
stores, so an epoch shared by several pairs is computed once. The results
equal :func:`rtsflow.graph.features.pair_features` on the same domain.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import xarray as xr

from rtsflow.graph.coreg import _FIT_DOC, CoregConfig
from rtsflow.grid import Grid, Window
from rtsflow.io.blocks import GridStore, block_region, write_block
from rtsflow.kernels.coreg import FIT_FIELDS, STATUS, apply_fit, fit_block, resolve_fallbacks
from rtsflow.kernels.ddem import ddem as ddem_kernel
from rtsflow.kernels.ddem import ddem_norm as ddem_norm_kernel
from rtsflow.kernels.ddem import ddem_sigma as ddem_sigma_kernel
from rtsflow.kernels.terrain import slope_horn
from rtsflow.stages.base import BlockJob, Stage, Upstream
from rtsflow.stages.composite import _grow, coreg_halo
from rtsflow.stages.stores import FitStore, GridVariable, create_fit_store, create_grid_store

__all__ = ["coreg_pair_stage", "features_block", "features_stage", "fit_pair"]

_PAIR_MEMBER = "later"


def _stable(earlier: GridStore, later: GridStore, cube: GridStore, win: Window, *, water: str | None,
            max_slope: float):  # fmt: skip
    h1 = earlier.read("dem", _grow(win, 1))
    slope = slope_horn(h1, resolution=earlier.grid.resolution)[1:-1, 1:-1]
    n1 = earlier.read("n_obs", win, dtype=np.int16)
    n2 = later.read("n_obs", win, dtype=np.int16)
    quality = (n1 == 0) | (n2 == 0)
    water_mask = _water(cube, win, water)
    with np.errstate(invalid="ignore"):
        stable = ~quality & (water_mask == 0) & (slope < max_slope)
    return h1, slope, quality, water_mask, stable, (n1, n2)


def _water(cube: GridStore, win: Window, water: str | None) -> np.ndarray:
    if water is None:
        return np.zeros(win.shape, dtype=np.uint8)
    return (np.nan_to_num(cube.read(water, win), nan=0.0) > 0).astype(np.uint8)


def fit_pair(
    block: tuple[int, int],
    *,
    cube: str,
    earlier: str,
    later: str,
    grid: Grid,
    domain: Window,
    water: str | None,
    coreg: CoregConfig,
    out: str,
) -> dict:
    """Fit the later composite to the earlier one over one block; store the raw fit."""
    e, lt = GridStore(earlier, grid=grid, domain=domain), GridStore(later, grid=grid, domain=domain)
    c = GridStore(cube, grid=grid, domain=domain)
    win = grid.block_window(*block)
    h1, _, _, _, stable, _ = _stable(e, lt, c, win, water=water, max_slope=coreg.max_slope_deg)
    h2 = lt.read("dem", win)
    fit = fit_block(
        h1[1:-1, 1:-1], h2, stable, transform=grid.transform(win), crs=grid.crs, min_stable=coreg.min_stable,
        max_shift_px=coreg.max_shift_px, outlier_nmad=coreg.outlier_nmad, deramp=coreg.deramp,
        subsample=coreg.subsample, max_iterations=coreg.max_iterations, offset_threshold=coreg.offset_threshold,
    )  # fmt: skip
    FitStore(out).write(block, {_PAIR_MEMBER: fit})
    return {"n_valid": int(fit[FIT_FIELDS.index("n_stable")]), "fit_status": int(fit[-1])}


def features_block(
    block: tuple[int, int],
    *,
    cube: str,
    earlier: str,
    later: str,
    grid: Grid,
    domain: Window,
    water: str | None,
    coreg: CoregConfig | None,
    fits: str | None,
    out: str,
) -> dict:
    """The pair features of one block (dDEM, σ, dDEM_norm, slope, quality, water, n_obs, the block's fit)."""
    e, lt = GridStore(earlier, grid=grid, domain=domain), GridStore(later, grid=grid, domain=domain)
    c = GridStore(cube, grid=grid, domain=domain)
    win = grid.block_window(*block)
    max_slope = coreg.max_slope_deg if coreg is not None else 40.0
    h1, slope, quality, water_mask, _, (n1, n2) = _stable(e, lt, c, win, water=water, max_slope=max_slope)
    h1 = h1[1:-1, 1:-1]
    if fits:
        halo = coreg_halo(coreg)
        values, i, j = FitStore(fits).neighbourhood(block, [_PAIR_MEMBER])
        fit = resolve_fallbacks(values[0])[i, j]
        h2 = apply_fit(lt.read("dem", _grow(win, halo)), fit, resolution=grid.resolution, origin=(0, 0), halo=halo)
    else:
        fit = None
        h2 = lt.read("dem", win)
    s1, s2 = e.read("sigma", win), lt.read("sigma", win)
    d = ddem_kernel(h2, h1).astype(np.float32)
    d_sigma = ddem_sigma_kernel(s2, s1).astype(np.float32)
    d_norm = ddem_norm_kernel(d, d_sigma).astype(np.float32)
    yx = ("y", "x")
    data = {
        "ddem": (yx, d),
        "ddem_sigma": (yx, d_sigma),
        "ddem_norm": (yx, d_norm),
        "slope": (yx, slope.astype(np.float32)),
        "quality": (yx, quality.astype(np.uint8)),
        "water": (yx, water_mask),
        "n_obs": (("winter", "y", "x"), np.stack([n1, n2]).astype(np.int16)),
    }
    region = block_region(win, domain)
    if fit is not None:
        b = grid.block_size
        by, bx = block[0] - domain.row // b, block[1] - domain.col // b
        for k, name in enumerate(FIT_FIELDS):
            data[f"coreg_{name}"] = (("block_y", "block_x"), np.full((1, 1), fit[k]))
        region = {**region, "block_y": slice(by, by + 1), "block_x": slice(bx, bx + 1)}
    write_block(out, data, region={**region, "winter": slice(0, 2)})
    return {"n_valid": int(np.isfinite(d).sum())}


def coreg_pair_stage(
    *,
    pair: tuple[int, int],
    cube: str,
    composites: dict[int, Path],
    grid: Grid,
    domain: Window,
    blocks: list[tuple[int, int]],
    water: str | None,
    coreg: CoregConfig,
    out: Path,
) -> Stage:
    """Per-block fits of the later composite onto the earlier one."""
    key = f"{pair[0]}_{pair[1]}"

    def create():
        create_fit_store(out, grid=grid, window=domain, members=[_PAIR_MEMBER],
                         attrs={"title": f"rtsflow pair co-registration fits {key}", "earlier": int(pair[0]),
                                "later": int(pair[1])})  # fmt: skip

    params = dict(cube=cube, earlier=str(composites[pair[0]]), later=str(composites[pair[1]]), grid=grid,
                  domain=domain, water=water, coreg=coreg, out=str(out))  # fmt: skip
    upstream = [Upstream("composite", str(pair[0]), radius=1), Upstream("composite", str(pair[1]), radius=0)]
    return Stage(name="coreg_pair", key=key, function=fit_pair, params=params,
                 jobs=[BlockJob(b) for b in blocks], output=out, create=create, upstream=upstream)  # fmt: skip


def _attrs(long_name: str, units: str, description: str) -> dict:
    return {"long_name": long_name, "units": units, "description": description}


def features_stage(
    *,
    pair: tuple[int, int],
    cube: str,
    composites: dict[int, Path],
    grid: Grid,
    domain: Window,
    blocks: list[tuple[int, int]],
    water: str | None,
    coreg: CoregConfig | None,
    fits: Path | None,
    years: float,
    selection=None,
    out: Path,
) -> Stage:
    """The features stage of one pair (``fits``: a ``coreg_pair`` store, or ``None`` for no co-registration)."""
    earlier, later = pair
    key = f"{earlier}_{later}"

    def create():
        lead = (("winter", (int(earlier), int(later))),)
        variables = {
            "ddem": GridVariable("float32", _attrs(
                "elevation change", "m", f"Later minus earlier winter composite ({later} − {earlier}); "
                "negative where ground was lost. The later composite is co-registered to the earlier one.")),
            "ddem_sigma": GridVariable("float32", _attrs(
                "elevation change error (1 sigma)", "m", "√(σ_later² + σ_earlier²) of the composites.")),
            "ddem_norm": GridVariable("float32", _attrs(
                "normalised elevation change", "1", "dDEM / σ_dDEM (Maier et al. 2025, Eq. 2).")),
            "slope": GridVariable("float32", _attrs(
                "terrain slope", "degree", f"Horn slope of the earlier composite ({earlier}).")),
            "quality": GridVariable("uint8", _attrs(
                "SAR quality mask", "1", "1 = unusable: no observation passed selection and the SAR "
                "quality mask (layover/shadow, coherence, incidence) in one of the two winters.")),
            "water": GridVariable("uint8", _attrs("water mask", "1", "1 = water (from the supplied mask).")),
            "n_obs": GridVariable("int16", _attrs("number of observations", "1",
                                                  "Observations in each winter composite at this pixel."), lead=lead),
        }  # fmt: skip
        attrs = {"earlier": int(earlier), "later": int(later), "years": float(years),
                 "title": f"rtsflow pair features {earlier}→{later}", "Conventions": "CF-1.10"}  # fmt: skip
        if selection is not None:
            attrs["observation_selection"] = json.dumps(
                selection.assign(time=selection.time.astype(str)).to_dict(orient="records"))
        extra = enc = None
        if fits is not None:
            extra, enc = _fit_variables(grid, domain)
        create_grid_store(out, grid=grid, window=domain, variables=variables, attrs=attrs, extra=extra,
                          extra_encoding=enc)  # fmt: skip

    params = dict(cube=cube, earlier=str(composites[earlier]), later=str(composites[later]), grid=grid,
                  domain=domain, water=water, coreg=coreg, fits=None if fits is None else str(fits), out=str(out))
    upstream = [Upstream("composite", str(earlier), radius=1), Upstream("composite", str(later), radius=1)]
    if fits is not None:
        upstream.append(Upstream("coreg_pair", key, radius=1))
    return Stage(name="features", key=key, function=features_block, params=params,
                 jobs=[BlockJob(b) for b in blocks], output=out, create=create, upstream=upstream)  # fmt: skip


def _fit_variables(grid: Grid, domain: Window) -> tuple[xr.Dataset, dict]:
    """Empty ``coreg_*`` variables over ``block_y × block_x`` (one chunk per block), as the lazy API names them."""
    import dask.array as da

    b = grid.block_size
    by = np.arange(domain.row // b, domain.row_stop // b)
    bx = np.arange(domain.col // b, domain.col_stop // b)
    units = {"shift_x": "m", "shift_y": "m", "shift_z": "m", "n_stable": "1", "nmad_before": "m",
             "nmad_after": "m", "status": "1"}  # fmt: skip
    data = {}
    for name in FIT_FIELDS:
        doc = _FIT_DOC.get(name, "Deramp polynomial coefficient (block-relative pixel indices).")
        attrs = {"long_name": name.replace("_", " "), "units": units.get(name, "m"), "description": doc}
        if name == "status":
            attrs |= {"flag_values": list(STATUS.values()), "flag_meanings": " ".join(STATUS)}
        data[f"coreg_{name}"] = (("block_y", "block_x"), da.full((len(by), len(bx)), np.nan), attrs)
    ds = xr.Dataset(data, coords={"block_y": by, "block_x": bx})
    return ds, {f"coreg_{name}": {"chunks": (1, 1)} for name in FIT_FIELDS}
