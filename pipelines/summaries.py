"""Text summaries that read data (pipelines compute; the library stays lazy)."""

from __future__ import annotations

import dask
import numpy as np
import xarray as xr

__all__ = ["features_summary"]


def features_summary(ds: xr.Dataset) -> str:
    """A short description of a feature store: dDEM statistics and co-registration fits (computes small reductions)."""
    # One pass over the store for everything the summary needs.
    ddem, sigma, masked, water = dask.compute(ds["ddem"].data, ds["ddem_sigma"].data, (ds["quality"] == 1).sum(),
                                              (ds["water"] == 1).sum())  # fmt: skip
    finite = ddem[np.isfinite(ddem)]
    valid, masked, water = finite.size, int(masked), int(water)
    lines = [
        f"period: {ds.attrs.get('earlier')} → {ds.attrs.get('later')} ({ds.attrs.get('years', float('nan')):g} years)",
        f"valid dDEM pixels: {valid:,}; no data or SAR-quality masked: {masked:,}; water: {water:,}",
    ]
    if valid:
        q = np.percentile(finite, [1, 50, 99])
        lines.append(f"dDEM percentiles 1/50/99 %: {q[0]:.2f} / {q[1]:.2f} / {q[2]:.2f} m; "
                     f"median σ_dDEM {np.nanmedian(sigma):.2f} m")  # fmt: skip
    if "coreg_status" in ds:
        fits = ds[[v for v in ds.data_vars if v.startswith("coreg_")]].compute()
        for by in fits.block_y.values:
            for bx in fits.block_x.values:
                f = fits.sel(block_y=by, block_x=bx)
                status = ["fit", "neighbours", "none", "failed"][int(f.coreg_status)]
                lines.append(
                    f"co-registration block ({by}, {bx}): {status}, shift "
                    f"({float(f.coreg_shift_x):+.2f}, {float(f.coreg_shift_y):+.2f}, {float(f.coreg_shift_z):+.2f}) m, "
                    f"NMAD {float(f.coreg_nmad_before):.2f} → {float(f.coreg_nmad_after):.2f} m "
                    f"over {int(f.coreg_n_stable):,} stable px"
                )
    return "\n".join(lines)
