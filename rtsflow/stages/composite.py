"""Epoch stages: per-observation co-registration fits, then the streaming winter composite, block by block.

``coreg_obs`` (only with a reference DEM) fits every observation of the epoch
that has data in a block to the reference over that block (xDEM Nuth & Kääb +
ramp, on stable ground) and stores the raw fits. ``composite`` then
accumulates the block's observations one at a time — quality mask, σ_h,
weight, and the observation's fit (its own, or its neighbours' mean shift when
it has none: the 3 × 3 fallback rule) applied with a halo — into running sums,
so a task holds a few block-sized arrays whatever the number of observations.
Both read only the observations whose footprint meets the block (plus halo).
The results equal :func:`rtsflow.graph.dem.seasonal_composites` on the same
domain.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from rtsflow.graph.coreg import CoregConfig
from rtsflow.graph.dem import CompositeConfig
from rtsflow.grid import Grid, Window
from rtsflow.io.blocks import GridStore, block_region, write_block
from rtsflow.io.footprints import FootprintIndex
from rtsflow.kernels.composite import CompositeAccumulator
from rtsflow.kernels.coreg import apply_fit, fit_block, resolve_fallbacks
from rtsflow.kernels.error import sigma_h
from rtsflow.kernels.quality import sar_quality_mask, unwrapping_blunders
from rtsflow.kernels.terrain import slope_horn
from rtsflow.stages.base import BlockJob, Stage, Upstream
from rtsflow.stages.stores import FitStore, GridVariable, create_fit_store, create_grid_store

__all__ = ["composite_block", "composite_stage", "coreg_halo", "coreg_obs_stage", "fit_observations"]

#: (store position, product id, kind, HoA) of one observation, as a plan lists it; a job adds
#: the extent ``(row, col, height, width)`` of the observation's data tiles in the block ± halo.
ObsMeta = tuple[int, str, str, float]


def coreg_halo(coreg: CoregConfig) -> int:
    """Pixels of context a fit's shift may pull in (as :func:`rtsflow.graph.coreg.coregister` uses)."""
    return math.ceil(coreg.max_shift_px) + 2


def _grow(window: Window, px: int) -> Window:
    return Window(window.row - px, window.col - px, window.height + 2 * px, window.width + 2 * px)


def _observation(cube: GridStore, meta: ObsMeta, window: Window, *, config: CompositeConfig):
    """Masked DEM, σ and weight of one observation over ``window`` (as the lazy graph computes them)."""
    index, _, kind, hoa = meta[:4]
    sel = {"obs": index}
    dem = cube.read("dem", window, index=sel)
    if kind == "insar":
        coh = cube.read("coherence", window, index=sel)
        bad = sar_quality_mask(coh, layover_shadow=cube.read("layover_shadow", window, index=sel),
                               incidence=cube.read("incidence", window, index=sel),
                               min_coherence=config.min_coherence, max_incidence=config.max_incidence)  # fmt: skip
        sigma = sigma_h(coh, np.float32(hoa), looks=config.looks).astype(np.float32)
        weight = coh
        dem = np.where(bad, np.float32(np.nan), dem)
    else:
        bad = np.zeros(window.shape, dtype=bool)
        sigma = cube.read("sigma", window, index=sel)
        weight = np.ones(window.shape, dtype=np.float32)
    return dem, sigma, weight, bad


def _stable_base(cube: GridStore, block: Window, *, reference: str, water: str | None, max_slope: float):
    """Stable-ground candidates of a block for fits to the reference: gentle reference slope, not water."""
    ref = cube.read(reference, _grow(block, 1))
    slope = slope_horn(ref, resolution=cube.grid.resolution)[1:-1, 1:-1]
    with np.errstate(invalid="ignore"):
        stable = slope < max_slope
    if water is not None:
        w = cube.read(water, block)
        stable &= ~(np.nan_to_num(w, nan=0.0) > 0)
    return ref[1:-1, 1:-1], stable


def fit_observations(
    block: tuple[int, int],
    *,
    cube: str,
    grid: Grid,
    domain: Window,
    reference: str,
    water: str | None,
    composite: CompositeConfig,
    coreg: CoregConfig,
    out: str,
    obs: list[ObsMeta],
) -> dict:
    """Fit each listed observation to the reference DEM over one block; store the raw fits."""
    if not obs:
        return {"status": "skipped", "reason": "no observation of the epoch in the block"}
    store = GridStore(cube, grid=grid, domain=domain)
    win = grid.block_window(*block)
    ref, stable_base = _stable_base(store, win, reference=reference, water=water, max_slope=composite.max_slope_deg)
    fits = {}
    for meta in obs:
        dem, _, _, bad = _observation(store, meta, win, config=composite)
        stable = stable_base & ~bad & np.isfinite(dem)
        fits[meta[1]] = fit_block(
            ref, dem, stable, transform=grid.transform(win), crs=grid.crs, min_stable=coreg.min_stable,
            max_shift_px=coreg.max_shift_px, outlier_nmad=coreg.outlier_nmad, deramp=coreg.deramp,
            subsample=coreg.subsample, max_iterations=coreg.max_iterations, offset_threshold=coreg.offset_threshold,
        )  # fmt: skip
    FitStore(out).write(block, fits)
    n_fit = sum(int(f[-1]) == 0 for f in fits.values())
    return {"n_valid": n_fit, "n_obs": len(obs)}


def resolved_fits(store: FitStore, block: tuple[int, int], members: list[str]) -> dict[str, np.ndarray]:
    """Each member's fit for a block after the neighbour fallback rule (:func:`resolve_fallbacks`)."""
    values, i, j = store.neighbourhood(block, members)
    return {m: resolve_fallbacks(values[k])[i, j] for k, m in enumerate(members)}


def composite_block(
    block: tuple[int, int],
    *,
    cube: str,
    grid: Grid,
    domain: Window,
    composite: CompositeConfig,
    coreg: CoregConfig | None,
    fits: str | None,
    out: str,
    obs: list[ObsMeta],
    reference: str | None = None,
) -> dict:
    """The weighted composite of one block, accumulated observation by observation (co-registered if ``fits``).

    With ``fits`` and ``reference`` (the cube's reference DEM, which the fits align to) and
    ``composite.blunder_hoa_fraction`` set, InSAR pixels off the reference by more than that
    fraction of their HoA are dropped as unwrapping blunders, as the lazy graph does.
    """
    if not obs:
        return {"status": "skipped", "reason": "no observation of the epoch in the block"}
    store = GridStore(cube, grid=grid, domain=domain)
    win = grid.block_window(*block)
    halo = coreg_halo(coreg) if fits else 0
    acc = CompositeAccumulator(win.shape, method=composite.method)
    # The 3 x 3 neighbourhood of fits is read once for all the block's observations.
    resolved = resolved_fits(FitStore(fits), block, [m[1] for m in obs]) if fits else None
    screen = resolved is not None and reference is not None and composite.blunder_hoa_fraction is not None
    ref = store.read(reference, win) if screen else None  # once per block, for every observation
    for meta in obs:
        # Work only where the observation can reach: its data tiles grown by the halo a shift may pull
        # from (pixels beyond get no data from it whatever the fit, so the sums are the same as over
        # the whole block; the ramp stays block-relative through ``origin``).
        core = _grow(Window(*meta[4]), halo).intersection(win)
        if core is None:
            continue
        read = _grow(core, halo)
        dem, sigma, weight, _ = _observation(store, meta, read, config=composite)
        inner = (slice(halo, halo + core.height), slice(halo, halo + core.width))
        if resolved is not None:
            dem = apply_fit(dem, resolved[meta[1]], resolution=grid.resolution,
                            origin=(core.row - win.row, core.col - win.col), halo=halo)  # fmt: skip
        else:
            dem = dem[inner]
        at = core.relative_to(win)
        blunder = None  # DEM-only products carry no HoA: never flagged (as in the lazy graph)
        if screen and meta[2] == "insar":
            blunder = unwrapping_blunders(dem, ref[at], meta[3], fraction=composite.blunder_hoa_fraction)
        acc.add(dem, sigma[inner], weights=weight[inner], where=at, blunder=blunder)
    h, sigma, count = acc.result()
    write_block(out, {"dem": (("y", "x"), h.astype(np.float32)), "sigma": (("y", "x"), sigma.astype(np.float32)),
                      "n_obs": (("y", "x"), count.astype(np.int16))},
                region=block_region(win, domain))  # fmt: skip
    return {"n_valid": int(np.isfinite(h).sum()), "n_obs": len(obs)}


def _obs_jobs(blocks, footprints: FootprintIndex, selected: dict[int, ObsMeta], *, halo: int, domain: Window):
    """One job per block with the epoch's observations whose footprint meets the block ± halo.

    Blocks that no observation of the epoch touches are returned as skipped (never submitted).
    """
    found = footprints.extents_by_block(blocks, halo=halo, domain=domain)
    rank = {o: k for k, o in enumerate(selected)}  # acquisition order
    jobs, skip = [], {}
    for blk in blocks:
        extents = found[blk]
        mine = sorted((o for o in extents if o in selected), key=rank.__getitem__)
        if mine:
            obs = [(*selected[o], (e.row, e.col, e.height, e.width)) for o in mine for e in [extents[o]]]
            jobs.append(BlockJob(block=blk, args={"obs": obs}))
        else:
            skip[blk] = "no observation of the epoch in the block"
    return jobs, skip


def coreg_obs_stage(
    *,
    epoch: int,
    cube: str,
    grid: Grid,
    domain: Window,
    blocks: list[tuple[int, int]],
    footprints: FootprintIndex,
    selected: dict[int, ObsMeta],
    reference: str,
    water: str | None,
    composite: CompositeConfig,
    coreg: CoregConfig,
    out: Path,
) -> Stage:
    """The per-observation fit stage of one epoch (``selected``: store position → meta, in time order)."""
    members = [m[1] for m in selected.values()]

    def create():
        create_fit_store(out, grid=grid, window=domain, members=members,
                         attrs={"title": f"rtsflow per-observation co-registration fits, epoch {epoch}",
                                "epoch": int(epoch), "reference": reference})  # fmt: skip

    params = dict(cube=cube, grid=grid, domain=domain, reference=reference, water=water, composite=composite,
                  coreg=coreg, out=str(out))  # fmt: skip
    jobs, skip = _obs_jobs(blocks, footprints, selected, halo=0, domain=domain)
    return Stage(name="coreg_obs", key=str(epoch), function=fit_observations, params=params, jobs=jobs,
                 skip=skip, output=out, create=create)  # fmt: skip


def composite_stage(
    *,
    epoch: int,
    cube: str,
    grid: Grid,
    domain: Window,
    blocks: list[tuple[int, int]],
    footprints: FootprintIndex,
    selected: dict[int, ObsMeta],
    composite: CompositeConfig,
    coreg: CoregConfig | None,
    fits: Path | None,
    out: Path,
    attrs: dict | None = None,
    reference: str | None = None,
) -> Stage:
    """The composite stage of one epoch; with ``fits`` (a ``coreg_obs`` store) observations are co-registered
    (and, with ``reference``, the layer the fits align to, screened for unwrapping blunders)."""
    halo = coreg_halo(coreg) if fits is not None and coreg is not None else 0

    def create():
        def var(long_name, units, description, dtype="float32"):
            return GridVariable(dtype, {"long_name": long_name, "units": units, "description": description})

        create_grid_store(out, grid=grid, window=domain, variables={
            "dem": var("winter composite elevation", "m",
                       f"{composite.method}-weighted mean of the selected, quality-masked observations."),
            "sigma": var("composite elevation error (1 sigma)", "m",
                         "√(Σwᵢ²σᵢ²)/Σwᵢ: propagated from the observations' σ (independent errors)."),
            "n_obs": var("number of observations", "1",
                         "Observations that passed selection and the quality mask at this pixel.", "int16"),
        }, attrs={"title": f"rtsflow winter composite {epoch}", "epoch": int(epoch), "Conventions": "CF-1.10",
                  "coregistered_to_reference": int(fits is not None), "reference": reference or "",
                  **(attrs or {})})  # fmt: skip

    params = dict(cube=cube, grid=grid, domain=domain, composite=composite, coreg=coreg,
                  fits=None if fits is None else str(fits), out=str(out), reference=reference)  # fmt: skip
    upstream = [Upstream("coreg_obs", str(epoch), radius=1)] if fits is not None else []
    jobs, skip = _obs_jobs(blocks, footprints, selected, halo=halo, domain=domain)
    return Stage(name="composite", key=str(epoch), function=composite_block, params=params, jobs=jobs, skip=skip,
                 output=out, create=create, upstream=upstream)  # fmt: skip
