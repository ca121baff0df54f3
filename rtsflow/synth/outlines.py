"""Real RTS outlines as slump shapes: published polygons normalised to a slump's local frame.

Each polygon (e.g. the Maier et al. 2025 Ellesmere reference polygons, the
Bernhard et al. 2022 Taymyr inventory; ``../shared/data``) is rotated so that
its minimum bounding rectangle is axis-aligned with the longer side across
the slope (RTS are mostly wider than long), centred, and scaled to the
slump frame: ``s`` 0 (headwall) → 1 (toe) downslope, ``t`` −1 → 1 across. The
slump's own length and width (from the size distribution) then scale it back,
so an outline lends its *shape* and the inventory its sizes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import shapely
from shapely import affinity

__all__ = ["load_outlines", "normalise_outline"]


def normalise_outline(polygon: shapely.Polygon, *, tolerance: float = 0.01) -> np.ndarray | None:
    """Vertices ``(n, 2)`` of ``polygon`` in the slump frame ``(s, t)``, or None for a degenerate one."""
    if polygon.is_empty or polygon.area <= 0:
        return None
    polygon = shapely.Polygon(polygon.exterior)  # holes are rare in RTS outlines and irrelevant to a scar shape
    rect = polygon.minimum_rotated_rectangle
    x, y = np.asarray(rect.exterior.coords)[:4].T
    edges = np.hypot(np.diff(np.r_[x, x[0]]), np.diff(np.r_[y, y[0]]))
    k = int(np.argmax(edges))  # the longer side goes across the slope (along t)
    angle = np.degrees(np.arctan2(y[(k + 1) % 4] - y[k], x[(k + 1) % 4] - x[k]))
    c = rect.centroid
    p = affinity.rotate(affinity.translate(polygon, -c.x, -c.y), -angle, origin=(0, 0))
    minx, miny, maxx, maxy = p.bounds
    across, down = maxx - minx, maxy - miny  # after rotation the long side lies along x
    if across <= 0 or down <= 0:
        return None
    # x (across) → t in [−1, 1]; y (down the rectangle) → s in [0, 1].
    p = affinity.scale(p, xfact=2.0 / across, yfact=1.0 / down, origin=(0, 0))
    p = affinity.translate(p, 0.0, 0.5)
    p = p.simplify(tolerance, preserve_topology=True)
    if not isinstance(p, shapely.Polygon) or p.is_empty or not p.is_valid:
        return None
    t, s = np.asarray(p.exterior.coords).T
    return np.column_stack([s, t])


def load_outlines(paths: str | Path | list[str | Path] | tuple[str | Path, ...]) -> tuple[np.ndarray, ...]:
    """Normalised outlines of every polygon in the vector files ``paths`` (any format geopandas reads)."""
    import geopandas as gpd

    if isinstance(paths, str | Path):
        paths = [paths]
    out = []
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"outlines: {path} does not exist")
        gdf = gpd.read_file(path)
        if gdf.crs is None:
            raise ValueError(f"outlines: {path} has no CRS")
        if gdf.crs.is_geographic:
            gdf = gdf.to_crs(gdf.estimate_utm_crs())
        for geom in gdf.geometry:
            if geom is None or geom.is_empty:
                continue
            if geom.geom_type == "MultiPolygon":
                geom = max(geom.geoms, key=lambda g: g.area)
            if geom.geom_type != "Polygon":
                continue
            v = normalise_outline(geom)
            if v is not None and len(v) >= 4:
                out.append(v)
    if not out:
        raise ValueError(f"outlines: no polygon in {[str(p) for p in paths]}")
    return tuple(out)
