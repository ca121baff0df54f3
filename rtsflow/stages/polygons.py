"""Reduction stages: probability → RTS polygons with volume change ± σ and regional densities, block by block.

``polygons``: each block's probability is thresholded and traced; pieces that
touch block edges are stitched across blocks on the client (small vectors).
``zonal``: each block rasterises the stitched polygons that overlap it once and
sums dDEM, σ, water and quality under all of them; it also sums the valid
ground of every density zone. Sums are added across blocks, then the
mass-wasting table, the filters and the density tables are assembled. The
result equals :func:`rtsflow.reduce.detect_rts` and
:func:`rtsflow.graph.densities.regional_densities` on the same domain.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import geopandas as gpd
import numpy as np
import shapely

from rtsflow.graph.densities import assemble_densities, ground_area, site_of
from rtsflow.graph.masswasting import assemble_measures, block_sums
from rtsflow.graph.polygons import _block_pieces, grown_block, polygons_from_mask
from rtsflow.graph.rts_terrain import assemble_terrain, block_terrain
from rtsflow.grid import Grid, Window
from rtsflow.io.blocks import GridStore
from rtsflow.kernels.grow import DEFAULT_GROWTH, OutlineGrowth, growth_halo_px
from rtsflow.kernels.local_reference import ring_halo_px
from rtsflow.kernels.rts_terrain import TERRAIN_FIELDS, WATER_SEARCH_PX
from rtsflow.kernels.zonal import MAX_FIELDS, ZONAL_FIELDS
from rtsflow.postprocess import DEFAULT_FILTERS, FilterConfig, apply_filters
from rtsflow.stages.base import BlockJob, Stage, Upstream, block_name, run_stage

if TYPE_CHECKING:
    import xarray as xr

    from rtsflow.kernels.variogram import VariogramModel

__all__ = ["DensitySpec", "fit_error_model", "polygons_block", "polygons_stage", "reduce_pair", "with_carbon",
           "zonal_block", "zonal_stage"]


@dataclass(frozen=True)
class DensitySpec:
    """One density table: regular cells of ``cell_size`` m, or ``regions`` named by column ``name``."""

    label: str
    cell_size: float | None = None
    regions: gpd.GeoDataFrame | None = None
    name: str = "name"


def with_carbon(rts: gpd.GeoDataFrame, *, carbon, densities: Sequence[DensitySpec] = ()) -> gpd.GeoDataFrame:
    """``rts`` with its ``site`` (from a ``sites`` density spec) and, with a carbon model, its carbon columns."""
    sites = [d for d in densities if d.label == "sites" and d.regions is not None]
    if sites:
        rts = rts.assign(site=site_of(rts, sites[0].regions, name=sites[0].name))
    if carbon is None:
        return rts
    from rtsflow.carbon import add_carbon

    return add_carbon(rts, model=carbon)


def polygons_block(block: tuple[int, int], *, probability: str, grid: Grid, domain: Window,
                   threshold: float | None, features: str | None = None,
                   grow_outlines: OutlineGrowth | None = None) -> dict:  # fmt: skip
    """Trace the RTS regions of one block (interior polygons and pieces that continue next door).

    With ``grow_outlines`` the detections grow into the significant loss around them first
    (``ddem_norm`` of ``features``, read with the halo that makes the block's result the whole raster's).
    """
    win = grid.block_window(*block)
    store = GridStore(probability, grid=grid, domain=domain)
    if grow_outlines is None:
        values = store.read("probability", win)
    else:
        halo = growth_halo_px(grow_outlines, resolution=grid.resolution)
        wide = _grow(win, halo)
        ddem_norm = GridStore(features, grid=grid, domain=domain).read("ddem_norm", wide)
        grown = grown_block(store.read("probability", wide), ddem_norm, threshold=threshold, growth=grow_outlines,
                            resolution=grid.resolution)  # fmt: skip
        values, threshold = grown[halo:-halo, halo:-halo], None
    pieces = _block_pieces(values, threshold=threshold, transform=grid.transform(win), block=block)
    return {"pieces": pieces, "n_valid": len(pieces.interior) + len(pieces.edge)}


def zonal_block(block: tuple[int, int], *, features: str, grid: Grid, domain: Window, densities: list[DensitySpec],
                polygons: gpd.GeoDataFrame, terrain: str | None = None,
                reference: tuple[Any, str] | None = None) -> dict:  # fmt: skip
    """Zonal sums under the polygons overlapping one block, and the valid (and land) ground of every density zone.

    With ``terrain`` (the earlier composite's store) also the polygons' terrain sums
    (:func:`rtsflow.graph.rts_terrain.block_terrain`); with ``reference`` (cube, variable: its
    reference DEM) the land under the voids (:func:`rtsflow.graph.densities.ground_area`).
    """
    win = grid.block_window(*block)
    store = GridStore(features, grid=grid, domain=domain)
    halo = ring_halo_px(resolution=grid.resolution)  # the stable rings around RTS by the block's edges
    grown = _grow(win, halo)
    ddem, sigma = store.read("ddem", grown), store.read("ddem_sigma", grown)
    water = store.read("water", grown) if "water" in store.ds else None
    quality = store.read("quality", grown) if "quality" in store.ds else None
    sums, maxima = block_sums(polygons, ddem, sigma, water, quality, grid=grid, window=win, halo=halo)
    inner = (slice(halo, -halo), slice(halo, -halo))
    ddem, water, quality = (None if a is None else a[inner] for a in (ddem, water, quality))
    ref = None
    if reference is not None and densities:
        ref = GridStore(reference[0], grid=grid, domain=domain).read(reference[1], win)
    valid = {d.label: ground_area(ddem, quality, water, ref, window=win, grid=grid, regions=d.regions,
                                  cell_size=d.cell_size) for d in densities}  # fmt: skip
    out = {"rows": polygons["_row"].to_numpy(), "sums": sums, "maxima": maxima, "valid": valid,
           "n_valid": len(polygons)}  # fmt: skip
    if terrain is not None:
        dem = GridStore(terrain, grid=grid, domain=domain).read("dem", _grow(win, 1), dtype=np.float64)
        wet = store.read("water", _grow(win, WATER_SEARCH_PX)) if water is not None else None
        out["terrain"] = block_terrain(polygons, dem, wet, grid=grid, window=win)
    return out


def _grow(window: Window, px: int) -> Window:
    return Window(window.row - px, window.col - px, window.height + 2 * px, window.width + 2 * px)


def polygons_stage(*, key: str, probability: Path, grid: Grid, domain: Window, blocks: Sequence[tuple[int, int]],
                   threshold: float | None, features: Path | None = None,
                   grow_outlines: OutlineGrowth | None = None) -> Stage:  # fmt: skip
    """Tracing every block's RTS regions (results are returned, not stored: the stage reruns with its pair)."""
    params = dict(probability=str(probability), grid=grid, domain=domain, threshold=threshold)
    upstream = [Upstream("probability", key)]
    if grow_outlines is not None:  # the halo reads the next blocks' probability and features
        params.update(features=str(features), grow_outlines=grow_outlines)
        upstream = [Upstream("probability", key, radius=1), Upstream("features", key, radius=1)]
    return Stage(name="polygons", key=key, function=polygons_block, jobs=[BlockJob(b) for b in blocks],
                 params=params, upstream=upstream, resume=False)  # fmt: skip


def zonal_stage(*, key: str, polygons: gpd.GeoDataFrame, features: Path, grid: Grid, domain: Window,
                blocks: Sequence[tuple[int, int]], densities: Sequence[DensitySpec],
                terrain: Path | None = None, reference: tuple[Any, str] | None = None) -> Stage:  # fmt: skip
    """Zonal sums per block; each job carries only the polygons that overlap its block or reach it with their
    stable ring (``_row``: their index)."""
    tree = polygons.sindex
    reach = ring_halo_px(resolution=grid.resolution)
    jobs = []
    for b in blocks:
        box = shapely.box(*grid.bounds(_grow(grid.block_window(*b), reach)))
        hit = np.sort(tree.query(box)) if len(polygons) else np.zeros(0, dtype=int)
        jobs.append(BlockJob(b, args={"polygons": polygons.iloc[hit]}))
    return Stage(name="zonal", key=key, function=zonal_block, jobs=jobs, resume=False,
                 params=dict(features=str(features), grid=grid, domain=domain, densities=list(densities),
                             terrain=str(terrain) if terrain is not None else None, reference=reference),
                 upstream=[Upstream("features", key)])  # fmt: skip


def fit_error_model(features: xr.Dataset, polygons: gpd.GeoDataFrame | None, *, grid: Grid) -> VariogramModel | None:
    """At once (inside one task): read ``features`` (e.g. a store) block by block until enough pairs, and fit.

    Each block's bands are read once, and only while the selection still needs them; the
    same model as the lazy :func:`rtsflow.graph.error_model.error_model`.
    """
    import dask

    from rtsflow.graph import error_model as em

    domain = grid.window_from_coords(features["x"].values, features["y"].values)
    blocks, pairs = [], 0.0
    for block, windows in em.sample_plan(domain, grid=grid):
        if pairs >= em.TARGET_PAIRS:
            break
        # The sync scheduler: this runs inside a worker's task, whose client must not be re-entered.
        ddem, *others = em.block_bands(features, block, domain)
        ddem = dask.compute(ddem, scheduler="sync")[0]
        if np.isfinite(ddem).sum() < em.MIN_STABLE:  # no data here: the other bands need not be read
            continue
        others = dask.compute(*others, scheduler="sync")
        blocks.append(em.block_window_sums(ddem, *others, polygons, grid=grid, block=block, windows=windows))
        pairs += sum(c[0] for _, c, _ in blocks[-1])
    return em.stable_variogram(blocks, resolution=grid.resolution)


def _fitted_error_model(features: Path, polygons: gpd.GeoDataFrame, *, grid: Grid) -> VariogramModel | None:
    from rtsflow.io.features import open_features

    return fit_error_model(open_features(features), polygons, grid=grid)


def reduce_pair(
    client,
    run,
    *,
    key: str,
    probability: Path,
    features: Path,
    grid: Grid,
    domain: Window,
    blocks: Sequence[tuple[int, int]],
    threshold: float | None = 0.5,
    filters: FilterConfig = DEFAULT_FILTERS,
    correlation_length: float | str = "auto",
    densities: Sequence[DensitySpec] = (),
    years: float,
    period: tuple[int, int],
    carbon=None,
    terrain: Path | None = None,
    grow_outlines: OutlineGrowth | None = DEFAULT_GROWTH,
    reference: tuple[Any, str] | None = None,
    progress: bool = False,
) -> tuple[gpd.GeoDataFrame | None, dict[str, gpd.GeoDataFrame], list[str]]:
    """Polygons, mass wasting, filters and densities of one pair (two stages of one task per block each).

    Returns ``(rts, densities by label, failures)``; ``rts`` is ``None`` when blocks failed.
    With ``terrain`` (the earlier composite's store) each RTS also gets its elevation, slope, aspect and
    distance to water (:func:`rtsflow.graph.rts_terrain.rts_terrain`). With ``carbon`` (a
    :class:`rtsflow.carbon.CarbonModel`) every RTS and density zone also gets the soil organic carbon
    it mobilised; RTS are named by the ``sites`` density zone holding them (``site``). With
    ``reference`` (the cube and its reference DEM variable) the densities also carry the land under
    voids and the void-filled volume (:mod:`rtsflow.graph.densities`).
    """
    blocks = sorted(blocks)
    poly_stage = polygons_stage(key=key, probability=probability, grid=grid, domain=domain, blocks=blocks,
                                threshold=threshold, features=features, grow_outlines=grow_outlines)  # fmt: skip
    out = run_stage(client, run, poly_stage, progress=progress)
    if not out.complete:
        return None, {}, out.failed + out.blocked
    polygons = polygons_from_mask([out.results[block_name(b)]["pieces"] for b in blocks], grid=grid)
    polygons = polygons.assign(_row=np.arange(len(polygons)))
    zonal = zonal_stage(key=key, polygons=polygons, features=features, grid=grid, domain=domain, blocks=blocks,
                        densities=densities, terrain=terrain, reference=reference)  # fmt: skip
    out = run_stage(client, run, zonal, progress=progress)
    if not out.complete:
        return None, {}, out.failed + out.blocked
    n = len(polygons)
    sums, maxima = np.zeros((n, len(ZONAL_FIELDS))), np.zeros((n, len(MAX_FIELDS)))
    parts = {d.label: [] for d in densities}
    for b in blocks:  # row-major, as the lazy graph adds its chunks
        res = out.results[block_name(b)]
        rows = res["rows"]
        sums[rows] += res["sums"]
        maxima[rows] = np.maximum(maxima[rows], res["maxima"])
        for label, part in res["valid"].items():
            parts[label].append(part)
    polygons = polygons.drop(columns="_row")
    model = None
    if correlation_length == "auto":  # one task reads the sample windows and fits the pair's error model
        model = client.submit(_fitted_error_model, features, polygons, grid=grid,
                              key=f"error_model-{key}-{uuid.uuid4().hex[:8]}").result()  # fmt: skip
    measured = assemble_measures(polygons, [(sums, maxima)], years=years, nominal_area=grid.pixel_area_nominal,
                                 correlation_length=correlation_length, error_model=model,
                                 resolution=grid.resolution)  # fmt: skip
    sigma_model = measured.attrs["error_model"]
    if terrain is not None:
        t_sums, t_min = np.zeros((n, len(TERRAIN_FIELDS))), np.full((n, 1), np.inf)
        for b in blocks:
            res = out.results[block_name(b)]
            t_sums[res["rows"]] += res["terrain"][0]
            t_min[res["rows"]] = np.minimum(t_min[res["rows"]], res["terrain"][1])
        measured = measured.join(assemble_terrain(polygons, [(t_sums, t_min)]))
    measured = measured.assign(period_start=period[0], period_end=period[1])
    rts = apply_filters(measured, config=filters)
    rts = with_carbon(rts, carbon=carbon, densities=densities)
    rts.attrs["error_model"] = sigma_model  # the volume σ's model, for the run summary (filters drop attrs)
    kept = rts[rts.kept]
    tables = {d.label: assemble_densities(kept, parts[d.label], regions=d.regions, cell_size=d.cell_size,
                                          years=years, name=d.name, carbon=carbon) for d in densities}  # fmt: skip
    return rts, tables, []
