"""RTS polygon and region tables on disk: GeoParquet (default) or GeoPackage, with a metadata record."""

from __future__ import annotations

import json
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import geopandas as gpd
import pandas as pd
import pyarrow.parquet as pq

from rtsflow import __version__

__all__ = ["read_metadata", "run_metadata", "write_vectors"]

_KEY = b"rtsflow"
_GPKG_LAYER = "rtsflow_metadata"


def run_metadata(**extra: Any) -> dict[str, Any]:
    """Software versions and time, plus whatever the caller adds (config, store paths, model sha256)."""
    import dask
    import numpy
    import shapely
    import xarray
    import zarr

    return {
        "rtsflow_version": __version__,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "versions": {m.__name__: m.__version__ for m in (numpy, xarray, dask, zarr, shapely, gpd)},
        **extra,
    }


def write_vectors(gdf: gpd.GeoDataFrame, path: str | Path, *, metadata: dict[str, Any]) -> Path:
    """Write a GeoDataFrame as GeoParquet (``.parquet``) or GeoPackage (``.gpkg``) with a metadata record.

    GeoParquet keeps the record in the file's key-value metadata; a GeoPackage
    keeps it in a ``rtsflow_metadata`` attribute table.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    text = json.dumps(metadata, default=str)
    if path.suffix == ".parquet":
        gdf.to_parquet(tmp)
        table = pq.read_table(tmp)
        meta = dict(table.schema.metadata or {})
        meta[_KEY] = text.encode()
        pq.write_table(table.replace_schema_metadata(meta), tmp)
    elif path.suffix == ".gpkg":
        tmp.unlink(missing_ok=True)
        gdf.to_file(tmp, layer="rts", driver="GPKG")
        pd.DataFrame({"key": ["rtsflow"], "value": [text]}).pipe(gpd.GeoDataFrame).to_file(
            tmp, layer=_GPKG_LAYER, driver="GPKG"
        )
    else:
        raise ValueError(f"{path}: expected a .parquet or .gpkg file name")
    tmp.replace(path)
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata record of a file written by :func:`write_vectors`."""
    path = Path(path)
    if path.suffix == ".parquet":
        return json.loads(pq.read_schema(path).metadata[_KEY])
    table = gpd.read_file(path, layer=_GPKG_LAYER)
    return json.loads(table["value"].iloc[0])
