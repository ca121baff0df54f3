"""Which polygons of a table lie in a box, safely from many threads at once.

Dask hands one GeoDataFrame of RTS polygons to every block task of a worker, and
the threaded scheduler (and workers with several threads) run those tasks together.
GEOS predicates are not safe there: a geometry that was ever *prepared* — which
``shapely.contains_xy``, ``shapely.prepare`` and ``shapely.prepared.prep`` leave on
the object — makes ``shapely.intersects`` (and so ``GeoDataFrame.cx``) use GEOS'
prepared-geometry path, whose lazily built indexes are not thread-safe
(libgeos/geos#825). Four threads calling ``shapely.intersects`` on one prepared
table crash the process (segmentation fault, or a hang) within a second, with
Shapely 2.1.2 / GEOS 3.13.1 and 2.2.0 / GEOS 3.14.1 alike. A bounding-box test
reads only each geometry's envelope, never a predicate, and gives the same
rasters: a polygon whose box meets the window but not its pixels burns nothing.
"""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import shapely

__all__ = ["polygons_in_box"]


def polygons_in_box(polygons: gpd.GeoDataFrame, box: tuple[float, float, float, float]) -> gpd.GeoDataFrame:
    """Rows of ``polygons`` whose bounding box meets ``box`` (``xmin, ymin, xmax, ymax``; edges included).

    A superset of ``polygons.cx[xmin:xmax, ymin:ymax]`` that calls no GEOS predicate, so
    tasks in several threads may share ``polygons`` (see the module docstring). Null and
    empty geometries are never selected.
    """
    bounds = shapely.bounds(np.asarray(polygons.geometry.values, dtype=object))  # NaN for null/empty
    xmin, ymin, xmax, ymax = box
    meets = (bounds[:, 0] <= xmax) & (bounds[:, 2] >= xmin) & (bounds[:, 1] <= ymax) & (bounds[:, 3] >= ymin)
    return polygons[meets]
