"""rasterio's in-memory rasterising and tracing, one call at a time per process.

``rasterio.features.rasterize`` and ``rasterio.features.shapes`` are not safe in
concurrent threads (rasterio 1.4 / GDAL 3.10): now and then a call finds its
in-memory raster without a geotransform ("NotGeoreferencedWarning ... the
identity matrix will be returned"), which could put pixels or polygons in pixel
coordinates (reproduced with a few thousand calls on 4 threads; never with one thread).
Both are a small part of a block's work, so calls take turns on one lock;
dask workers that run one thread each never wait on it.
"""

from __future__ import annotations

import threading

import rasterio.features

__all__ = ["GDAL_LOCK", "rasterize", "shapes"]

GDAL_LOCK = threading.Lock()


def rasterize(shapes, **kwargs):
    """:func:`rasterio.features.rasterize`, serialised (see the module docstring)."""
    with GDAL_LOCK:
        return rasterio.features.rasterize(shapes, **kwargs)


def shapes(source, **kwargs) -> list:
    """:func:`rasterio.features.shapes` as a list, serialised (see the module docstring)."""
    with GDAL_LOCK:
        return list(rasterio.features.shapes(source, **kwargs))
