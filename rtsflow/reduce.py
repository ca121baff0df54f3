"""Probability + features → measured, filtered RTS polygons (one lazy graph)."""

from __future__ import annotations

import dask
import xarray as xr
from dask.delayed import Delayed

from rtsflow.graph.masswasting import measure
from rtsflow.graph.polygons import vectorize
from rtsflow.grid import Grid
from rtsflow.postprocess import DEFAULT_FILTERS, FilterConfig, apply_filters

__all__ = ["detect_rts"]


def detect_rts(
    probability: xr.DataArray,
    features: xr.Dataset,
    *,
    grid: Grid,
    threshold: float | None = 0.5,
    filters: FilterConfig = DEFAULT_FILTERS,
    correlation_length: float = 200.0,
) -> Delayed:
    """Threshold, vectorise and stitch, measure mass wasting, and apply the post-processing filters.

    Parameters
    ----------
    probability
        Model probability on the features' grid (or a 0/1 mask with ``threshold=None``).
    features
        Pair features (``ddem``, ``ddem_sigma``, ``water``, ``quality``).

    Returns
    -------
    dask.delayed.Delayed
        A GeoDataFrame of every polygon, with ``kept`` and ``filter_reason``.
    """
    polygons = vectorize(probability, grid=grid, threshold=threshold)
    measured = measure(polygons, features, grid=grid, correlation_length=correlation_length)
    return dask.delayed(apply_filters)(measured, config=filters)
