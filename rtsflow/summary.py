"""Human-readable summaries of stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

__all__ = ["cube_summary", "store_size"]


def store_size(path: str | Path) -> int:
    """Bytes on disk of a directory store."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def cube_summary(ds: xr.Dataset, *, path: str | Path | None = None) -> str:
    """A short text description of an observation cube (reads no pixel data)."""
    b = ds.attrs.get("grid_tile_size", 512) * ds.attrs.get("grid_block_tiles", 8)
    ny, nx = ds.sizes["y"], ds.sizes["x"]
    res = ds.attrs.get("grid_resolution", float(abs(ds.x[1] - ds.x[0])) if nx > 1 else np.nan)
    lines = []
    if path is not None:
        lines.append(f"cube: {path} ({store_size(path) / 1e6:.1f} MB on disk)")
    lines.append(
        f"grid: EPSG:3413, {res:g} m, {ny} x {nx} px = {ny * nx * res * res / 1e6:.0f} km², "
        f"{(ny // b) * (nx // b)} block(s) of {b}² px"
    )
    lines.append(f"observations: {ds.sizes['obs']}")
    lines.append(f"  {'time (UTC)':<20} {'product id':<28} {'kind':<6} {'orbit':<11} {'HoA (m)':>8}")
    for i in range(ds.sizes["obs"]):
        t = np.datetime_as_string(ds.time.values[i], unit="m")
        hoa = ds.hoa.values[i]
        hoa_s = "-" if np.isnan(hoa) else f"{hoa:.1f}"
        lines.append(
            f"  {t:<20} {ds.product_id.values[i]!s:<28} {ds.kind.values[i]!s:<6} {ds.orbit.values[i]!s:<11} {hoa_s:>8}"
        )
    lines.append(
        "variables: " + ", ".join(f"{k} [{v.attrs.get('units', '')}]" for k, v in ds.data_vars.items() if v.ndim == 3)
    )
    return "\n".join(lines)
