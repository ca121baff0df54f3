"""Regional RTS densities: count, area- and volume-change rates per km² of valid ground (lazy).

As in Maier et al. 2025 (Table 3, Fig. 6) rates are normalised by the valid
area of each region: pixels with a dDEM that are neither water nor masked by
the SAR quality mask, counted with their true ground area.
"""

from __future__ import annotations

import dask
import geopandas as gpd
import numpy as np
import shapely
import xarray as xr
from dask.delayed import Delayed

from rtsflow.graph.chunks import chunk_windows
from rtsflow.grid import GRID_CRS, GRID_ORIGIN, Grid, Window
from rtsflow.kernels import gdal

__all__ = ["assemble_densities", "regional_densities", "site_of", "valid_area"]


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


def valid_area(ddem, quality, water, *, window: Window, grid: Grid, regions, cell_size):
    valid = np.isfinite(ddem)
    if quality is not None:
        valid &= quality != 1
    if water is not None:
        valid &= water != 1
    area = grid.pixel_ground_area(window, step=16)
    zones = _zone_labels(window, grid=grid, regions=regions, cell_size=cell_size)
    if regions is not None:
        return np.bincount(zones.ravel(), weights=(area * valid).ravel(), minlength=len(regions) + 1)[1:]
    cy, cx = np.broadcast_arrays(*zones)
    out: dict[tuple[int, int], float] = {}
    keys = cy.ravel() * (1 << 32) + cx.ravel()
    uniq, inv = np.unique(keys, return_inverse=True)
    sums = np.bincount(inv, weights=(area * valid).ravel())
    for k, s in zip(uniq, sums, strict=True):
        out[(int(k >> 32), int(k & 0xFFFFFFFF))] = float(s)
    return out


def assemble_densities(
    rts: gpd.GeoDataFrame, parts, *, regions, cell_size, years: float, name: str, carbon=None
) -> gpd.GeoDataFrame:
    if regions is not None:
        valid = np.sum(parts, axis=0) if parts else np.zeros(len(regions))
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
        # Cells are reported where there is valid ground or an RTS (a cell of the cube's
        # window that is all no-data and holds no RTS is left out).
        keys = sorted({k for k, v in total.items() if v > 0} | set(zip(r_i.tolist(), c_i.tolist(), strict=True)))
        valid = np.array([total.get(k, 0.0) for k in keys])
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

    Returns
    -------
    dask.delayed.Delayed
        A GeoDataFrame of regions with ``valid_area_km2``, ``n_rts``,
        ``area_change_rate_m2_per_yr_km2``, ``volume_change_rate_m3_per_yr_km2``
        and its ``_sigma``; with ``carbon`` (a :class:`rtsflow.carbon.CarbonModel`) also
        ``carbon_kg`` ± ``carbon_sigma_kg`` and ``carbon_rate_pg_per_yr`` ± σ.
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
    parts = []
    for i, j, w in chunk_windows(chunks, window):
        blocks = [a[i, j] if a is not None else None for a in arrays]
        parts.append(dask.delayed(valid_area)(*blocks, window=w, grid=grid, regions=regions, cell_size=cell_size))
    years = float(features.attrs.get("years", 1.0))
    return dask.delayed(assemble_densities)(rts, parts, regions=regions, cell_size=cell_size, years=years, name=name,
                                            carbon=carbon)  # fmt: skip
