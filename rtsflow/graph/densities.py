"""Regional RTS densities: count, area- and volume-change rates per km² of valid ground (lazy).

As in Maier et al. 2025 (Table 3, Fig. 6) rates are normalised by the valid
area of each region: pixels with a dDEM that are neither water nor masked by
the SAR quality mask, counted with their true ground area.

A region's summed volume counts only the RTS on valid ground; those under the
quality mask (layover, shadow, low coherence: steep terrain) are unseen. With a
reference DEM the land under those voids is known too (``land_area_km2``: the
reference's finite pixels and the valid ones, less water), and each zone also
gets a void-filled volume, ``volume_void_filled_m3 = volume_m3 · land / valid``:
its volume-change density carried over its unobserved land, as voids in
geodetic mass balance are filled with the mean of the observed area. Its σ adds
to the scaled measurement σ a sampling term, the extrapolated part over
√max(n_rts, 1) (RTS counted as a Poisson draw). It assumes the unobserved land
holds as much loss per km² as the observed, which steep voids need not.
"""

from __future__ import annotations

import dask
import dask.array as da
import geopandas as gpd
import numpy as np
import shapely
import xarray as xr
from dask.delayed import Delayed

from rtsflow.graph.chunks import chunk_windows
from rtsflow.grid import GRID_CRS, GRID_ORIGIN, Grid, Window
from rtsflow.kernels import gdal

__all__ = ["assemble_densities", "ground_area", "regional_densities", "site_of", "void_filled"]


def _zone_labels(window: Window, *, grid: Grid, regions: gpd.GeoDataFrame | None, cell_size: float | None):
    """Zone index + 1 of every pixel of a chunk (0 = no zone), for regions or regular cells."""
    if regions is not None:
        return gdal.rasterize(
            zip(regions.geometry, np.arange(1, len(regions) + 1), strict=True), out_shape=window.shape,
            transform=grid.transform(window), fill=0, dtype="int32",
        )  # fmt: skip
    x, y = grid.coords(window)
    cx = np.floor((x - GRID_ORIGIN[0]) / cell_size).astype(np.int64)
    cy = np.floor((GRID_ORIGIN[1] - y) / cell_size).astype(np.int64)
    return cy[:, None], cx[None, :]


def ground_area(ddem, quality, water, reference=None, *, window: Window, grid: Grid, regions, cell_size):
    """Valid and land ground area (m²) of every density zone in one chunk.

    Valid: a finite dDEM, neither water nor under the quality mask. Land: valid, or a
    finite ``reference`` DEM, and not water (NaN without a reference: the land under
    voids is not known). Returns ``(2, n_zones)`` for ``regions``, else a dict
    ``(cell row, cell col) → [valid, land]``.
    """
    valid = np.isfinite(ddem)
    if quality is not None:
        valid &= quality != 1
    if water is not None:
        valid &= water != 1
    land = None
    if reference is not None:
        land = valid | np.isfinite(reference)
        if water is not None:
            land &= water != 1
    area = grid.pixel_ground_area(window, step=16)
    weights = [(area * valid).ravel(), (area * land).ravel() if land is not None else None]
    zones = _zone_labels(window, grid=grid, regions=regions, cell_size=cell_size)
    if regions is not None:
        n = len(regions) + 1
        return np.stack([np.bincount(zones.ravel(), weights=w, minlength=n)[1:] if w is not None
                         else np.full(n - 1, np.nan) for w in weights])  # fmt: skip
    cy, cx = np.broadcast_arrays(*zones)
    keys = cy.ravel() * (1 << 32) + cx.ravel()
    uniq, inv = np.unique(keys, return_inverse=True)
    sums = [np.bincount(inv, weights=w) if w is not None else np.full(len(uniq), np.nan) for w in weights]
    return {(int(k >> 32), int(k & 0xFFFFFFFF)): np.array([v, lnd])
            for k, v, lnd in zip(uniq, *sums, strict=True)}  # fmt: skip


def void_filled(volume, sigma, n_rts, valid_km2, land_km2) -> tuple[np.ndarray, np.ndarray]:
    """Zone volumes carried over the land under voids, and their σ (module docstring).

    NaN where a zone has no valid ground (no density to carry) or its land is unknown.
    """
    volume, sigma = np.asarray(volume, dtype=float), np.asarray(sigma, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(np.asarray(valid_km2) > 0, np.maximum(land_km2, valid_km2) / valid_km2, np.nan)
        filled = volume * scale
        sampling = volume * (scale - 1.0) / np.sqrt(np.maximum(n_rts, 1))
    return filled, np.hypot(sigma * scale, sampling)


def assemble_densities(
    rts: gpd.GeoDataFrame, parts, *, regions, cell_size, years: float, name: str, carbon=None
) -> gpd.GeoDataFrame:
    if regions is not None:
        valid, land = np.sum(parts, axis=0) if parts else np.zeros((2, len(regions)))
        zones = regions.reset_index(drop=True)
        zone_name = zones[name].astype(str) if name in zones else zones.index.astype(str)
        geoms = zones.geometry.values
        centroids = rts.geometry.centroid
        idx = np.full(len(rts), -1)
        if len(rts):
            ci, zi = gpd.GeoSeries(geoms, crs=GRID_CRS).sindex.query(centroids.values, predicate="within")
            idx[ci] = zi
    else:
        total: dict = {}
        for p in parts:
            for k, v in p.items():
                total[k] = total.get(k, 0.0) + v
        c = rts.geometry.centroid
        r_i = np.floor((GRID_ORIGIN[1] - c.y.to_numpy()) / cell_size).astype(int)
        c_i = np.floor((c.x.to_numpy() - GRID_ORIGIN[0]) / cell_size).astype(int)
        # Cells are reported where there is valid ground, known land or an RTS (a cell of the
        # cube's window that is all no-data and holds no RTS is left out).
        keys = sorted({k for k, v in total.items() if v[0] > 0 or v[1] > 0}
                      | set(zip(r_i.tolist(), c_i.tolist(), strict=True)))  # fmt: skip
        valid, land = np.array([total.get(k, np.zeros(2)) for k in keys]).reshape(-1, 2).T
        x0, y0 = GRID_ORIGIN
        geoms = [shapely.box(x0 + c * cell_size, y0 - (r + 1) * cell_size, x0 + (c + 1) * cell_size, y0 - r * cell_size)
                 for r, c in keys]  # fmt: skip
        zone_name = [f"cell_{r}_{c}" for r, c in keys]
        lookup = {k: i for i, k in enumerate(keys)}
        idx = np.array([lookup.get((a, b), -1) for a, b in zip(r_i, c_i, strict=True)], dtype=int)
    n = len(geoms)
    sel = idx >= 0
    # RTS without any valid dDEM pixel have no volume: counted, but left out of the volume sums.
    vol_known = np.isfinite(rts["volume_m3"].to_numpy())
    count = np.bincount(idx[sel], minlength=n)
    no_volume = np.bincount(idx[sel], weights=(~vol_known[sel]).astype(float), minlength=n).astype(int)
    area = np.bincount(idx[sel], weights=rts["area_m2"].to_numpy()[sel], minlength=n)
    vol = np.bincount(idx[sel], weights=np.nan_to_num(rts["volume_m3"].to_numpy()[sel]), minlength=n)
    var = np.bincount(idx[sel], weights=np.nan_to_num(rts["volume_sigma_m3"].to_numpy()[sel]) ** 2, minlength=n)
    km2 = valid / 1e6
    filled, filled_sigma = void_filled(vol, np.sqrt(var), count, km2, land / 1e6)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = gpd.GeoDataFrame(
            {
                "region": list(zone_name),
                "valid_area_km2": km2,
                "n_rts": count,
                "n_rts_without_volume": no_volume,
                "rts_density_per_km2": count / km2,
                "rts_area_m2": area,
                "volume_m3": vol,
                "volume_sigma_m3": np.sqrt(var),
                "area_change_rate_m2_per_yr_km2": area / years / km2,
                "volume_change_rate_m3_per_yr_km2": vol / years / km2,
                "volume_change_rate_sigma_m3_per_yr_km2": np.sqrt(var) / years / km2,
                "land_area_km2": land / 1e6,
                "volume_void_filled_m3": filled,
                "volume_void_filled_sigma_m3": filled_sigma,
                "years": years,
            },
            geometry=list(geoms),
            crs=GRID_CRS,
        )
    if carbon is not None:
        from rtsflow.carbon import KG_PER_PG, zone_carbon

        kg, sigma = zone_carbon(rts, idx, n_zones=n, model=carbon)
        with np.errstate(divide="ignore", invalid="ignore"):
            out["carbon_kg"], out["carbon_sigma_kg"] = kg, sigma
            out["carbon_rate_kg_per_yr_km2"] = kg / years / km2
            out["carbon_rate_pg_per_yr"] = kg / years / KG_PER_PG
            out["carbon_rate_sigma_pg_per_yr"] = sigma / years / KG_PER_PG
    return out


def site_of(rts: gpd.GeoDataFrame, regions: gpd.GeoDataFrame, *, name: str) -> np.ndarray:
    """Name of the region holding each RTS's centroid (``""`` outside every region), as densities count them."""
    zones = regions.to_crs(GRID_CRS).reset_index(drop=True)
    names = zones[name].astype(str).to_numpy() if name in zones else zones.index.astype(str).to_numpy()
    out = np.full(len(rts), "", dtype=object)
    if len(rts):
        ci, zi = zones.sindex.query(rts.geometry.centroid.values, predicate="within")
        out[ci] = names[zi]
    return out


def regional_densities(
    rts: gpd.GeoDataFrame | Delayed,
    features: xr.Dataset,
    *,
    grid: Grid,
    regions: gpd.GeoDataFrame | None = None,
    cell_size: float | None = None,
    name: str = "name",
    carbon=None,
    reference: xr.DataArray | None = None,
) -> Delayed:
    """RTS count and area/volume-change rates per km² of valid ground, per region or per grid cell.

    Parameters
    ----------
    rts
        Measured (and usually filtered) RTS polygons with ``area_m2``,
        ``volume_m3``, ``volume_sigma_m3``; each RTS counts in the region
        holding its centroid.
    features
        Pair features (``ddem``, ``quality``, ``water``) defining the valid area.
    regions
        Sites (any CRS; should not overlap), named by column ``name``; or
    cell_size
        a regular grid of square cells (m) anchored at the grid origin (e.g. 10 000, 100 000).
    reference
        The cube's reference DEM on the features' grid (e.g. ``open_cube(c).reference_dem``):
        with it each zone also gets its land under voids (``land_area_km2``) and the
        void-filled volume (module docstring); without it those are NaN.

    Returns
    -------
    dask.delayed.Delayed
        A GeoDataFrame of regions with ``valid_area_km2``, ``n_rts``,
        ``area_change_rate_m2_per_yr_km2``, ``volume_change_rate_m3_per_yr_km2``
        and its ``_sigma``; with ``carbon`` (a :class:`rtsflow.carbon.CarbonModel`) also
        ``carbon_kg`` ± ``carbon_sigma_kg`` and ``carbon_rate_pg_per_yr`` ± σ; ``land_area_km2``,
        ``volume_void_filled_m3`` and its ``_sigma_m3``.
    """
    if (regions is None) == (cell_size is None):
        raise ValueError("give exactly one of regions= or cell_size=")
    if regions is not None:
        regions = regions.to_crs(GRID_CRS).reset_index(drop=True)
    window = grid.window_from_coords(features["x"].values, features["y"].values)
    chunks = features["ddem"].data.chunks
    # Unoptimised: keys stay those of the features graph, so work shared with other outputs is done once.
    names = ("ddem", "quality", "water")
    arrays = [features[v].data.to_delayed(optimize_graph=False) if v in features else None for v in names]
    if reference is not None:
        ref = da.asarray(_on_features_grid(reference, features).data).rechunk(chunks)
        arrays.append(ref.to_delayed(optimize_graph=False))
    parts = []
    for i, j, w in chunk_windows(chunks, window):
        blocks = [a[i, j] if a is not None else None for a in arrays]
        parts.append(dask.delayed(ground_area)(*blocks, window=w, grid=grid, regions=regions, cell_size=cell_size))
    years = float(features.attrs.get("years", 1.0))
    return dask.delayed(assemble_densities)(rts, parts, regions=regions, cell_size=cell_size, years=years, name=name,
                                            carbon=carbon)  # fmt: skip


def _on_features_grid(reference: xr.DataArray, features: xr.Dataset) -> xr.DataArray:
    """``reference`` cut to the features' pixels (the same grid: every pixel must be there)."""
    try:
        return reference.sel(x=features["x"].values, y=features["y"].values)
    except KeyError as err:
        raise ValueError(f"reference: not on the features' grid (pixel {err} missing); pass the cube's "
                         f"reference DEM on the same grid and window or a larger one") from None  # fmt: skip
