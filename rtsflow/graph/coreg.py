"""Lazy per-block co-registration (xDEM fits per grid block, applied chunk by chunk)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import dask.array as da
import numpy as np
import xarray as xr

from rtsflow.graph.chunks import chunk_windows
from rtsflow.grid import Grid
from rtsflow.kernels.coreg import FIT_FIELDS, STATUS, apply_fit, fit_block, resolve_fallbacks

__all__ = ["DEFAULT_COREG", "CoregConfig", "coregister"]


@dataclass(frozen=True)
class CoregConfig:
    """Co-registration settings (``NuthKaab + Deramp(poly_order=1)`` by default).

    Parameters
    ----------
    deramp
        Also fit a first-order ramp (tilt) after the shift.
    min_stable
        Stable pixels a block needs for its own fit; otherwise it borrows its
        neighbours' mean shift, or stays unaligned.
    max_shift_px
        Larger fitted shifts are rejected (and the halo is sized from it).
    max_slope_deg
        Steeper pixels are not used as stable ground.
    """

    deramp: bool = True
    min_stable: int = 2000
    max_shift_px: float = 8.0
    max_slope_deg: float = 40.0
    outlier_nmad: float = 4.0
    subsample: int = 200_000
    max_iterations: int = 30
    offset_threshold: float = 0.001


DEFAULT_COREG = CoregConfig()


def coregister(
    reference: xr.DataArray,
    target: xr.DataArray,
    stable: xr.DataArray,
    *,
    grid: Grid,
    config: CoregConfig = DEFAULT_COREG,
) -> tuple[xr.DataArray, xr.Dataset]:
    """Align ``target`` to ``reference``, fitting one transformation per grid block.

    The fit unit is the grid block (not the dask chunk), so results do not
    depend on chunking; each chunk is aligned with its block's fit, with a
    halo so shifts see across chunk edges.

    Returns
    -------
    aligned
        The target, aligned (lazy).
    fits
        Dataset over ``(block_y, block_x)`` with every field of
        :data:`rtsflow.kernels.coreg.FIT_FIELDS` (lazy; tiny).
    """
    window = grid.window_from_coords(reference["x"].values, reference["y"].values)
    b = grid.block_size
    if window.row % b or window.col % b or window.height % b or window.width % b:
        raise ValueError("co-registration needs block-aligned arrays (as in every rtsflow store)")
    for name, arr in (("reference", reference), ("target", target)):
        if any(b % c for c in arr.data.chunks[0] + arr.data.chunks[1]):
            raise ValueError(f"{name}: dask chunks must divide the {b}-px block")
    nby, nbx = window.height // b, window.width // b
    tba = target.data
    nf = len(FIT_FIELDS)
    by0, bx0 = window.row // b, window.col // b

    def fit_one(r: np.ndarray, t: np.ndarray, s: np.ndarray, block_info=None) -> np.ndarray:
        i, j = block_info[0]["chunk-location"]
        block = grid.block_window(by0 + i, bx0 + j)
        fit = fit_block(
            r, t, s, transform=grid.transform(block), crs=grid.crs,
            min_stable=config.min_stable, max_shift_px=config.max_shift_px,
            outlier_nmad=config.outlier_nmad, deramp=config.deramp, subsample=config.subsample,
            max_iterations=config.max_iterations, offset_threshold=config.offset_threshold,
        )  # fmt: skip
        return fit[None, None, :]

    # One fit task per grid block, as array blocks rather than dask.delayed calls: a delayed call on a dask
    # array copies that array's whole graph under fresh keys, so every fit recomputed all its upstream work.
    fits = da.map_blocks(
        fit_one, *(a.rechunk(b) for a in (reference.data, tba, stable.data)), new_axis=2,
        chunks=((1,) * nby, (1,) * nbx, (nf,)), dtype=np.float64, meta=np.empty((0, 0, 0), np.float64),
    )  # fmt: skip
    # A block without a usable fit borrows from its 8 neighbours only, so each block's parameters
    # depend on its 3 x 3 neighbourhood of fits, never on the whole region (blocks stay independent).
    neighbourhoods = da.overlap.overlap(fits, depth={0: 1, 1: 1, 2: 0}, boundary="none")
    table = da.map_blocks(_resolve_centre, neighbourhoods, chunks=fits.chunks, dtype=np.float64,
                          meta=np.empty((0, 0, 0), np.float64))  # fmt: skip

    # One parameter vector (+ chunk origin within its block) per dask chunk.
    halo = math.ceil(config.max_shift_px) + 2
    rows: dict[int, list] = {}
    for i, _, w in chunk_windows(tba.chunks, window):
        # Chunk origin relative to the block it lies in (the ramp is block-relative).
        origin = da.from_array(np.array([w.row % b, w.col % b], dtype=np.float64), chunks=2)
        fit = table[(w.row - window.row) // b, (w.col - window.col) // b]
        rows.setdefault(i, []).append(da.concatenate([fit, origin])[None, :])
    params = da.concatenate([da.concatenate(r, axis=1) for _, r in sorted(rows.items())], axis=0)
    params = params.rechunk((1, len(FIT_FIELDS) + 2))

    padded = da.overlap.overlap(tba, depth={0: halo, 1: halo}, boundary=np.nan)
    res = grid.resolution

    def apply_chunk(t: np.ndarray, p: np.ndarray) -> np.ndarray:
        p = p.reshape(-1)
        core = apply_fit(t, p[: len(FIT_FIELDS)], resolution=res, origin=(int(p[-2]), int(p[-1])), halo=halo)
        return np.pad(core, halo, mode="constant", constant_values=np.nan)

    out = da.map_blocks(apply_chunk, padded, params, dtype=np.float32, chunks=padded.chunks,
                        meta=np.empty((0, 0), np.float32))  # fmt: skip
    aligned_data = da.overlap.trim_internal(out, {0: halo, 1: halo}, boundary={0: np.nan, 1: np.nan})
    aligned = xr.DataArray(aligned_data, dims=target.dims, coords=target.coords, attrs=dict(target.attrs))

    by = np.arange(window.row // b, window.row // b + nby)
    bx = np.arange(window.col // b, window.col // b + nbx)
    fit_vars = {}
    units = {"shift_x": "m", "shift_y": "m", "shift_z": "m", "n_stable": "1", "nmad_before": "m",
             "nmad_after": "m", "status": "1"}  # fmt: skip
    for k, name in enumerate(FIT_FIELDS):
        doc = _FIT_DOC.get(name, "Deramp polynomial coefficient (block-relative pixel indices).")
        attrs = {"long_name": name.replace("_", " "), "units": units.get(name, "m"), "description": doc}
        fit_vars[f"coreg_{name}"] = (("block_y", "block_x"), table[:, :, k], attrs)
    fits_ds = xr.Dataset(fit_vars, coords={"block_y": by, "block_x": bx})
    fits_ds["coreg_status"].attrs["flag_values"] = list(STATUS.values())
    fits_ds["coreg_status"].attrs["flag_meanings"] = " ".join(STATUS)
    return aligned, fits_ds


def _resolve_centre(neighbourhood: np.ndarray, block_info=None) -> np.ndarray:
    """The centre block's fit after :func:`resolve_fallbacks` of its (edge-clipped) 3 x 3 neighbourhood.

    Same result as resolving the whole table at once: a block only ever borrows from its 8 neighbours.
    """
    i, j = block_info[0]["chunk-location"][:2]
    i, j = min(i, 1), min(j, 1)  # position of the centre in a neighbourhood clipped at the region's edge
    return resolve_fallbacks(neighbourhood)[i : i + 1, j : j + 1]


_FIT_DOC = {
    "shift_x": "Eastward shift applied to the later composite (Nuth & Kääb).",
    "shift_y": "Northward shift applied to the later composite (Nuth & Kääb).",
    "shift_z": "Vertical offset added to the later composite.",
    "n_stable": "Stable pixels used for the fit.",
    "nmad_before": "NMAD of the dDEM over stable pixels before alignment.",
    "nmad_after": "NMAD of the dDEM over stable pixels after alignment.",
    "status": "0 fit, 1 borrowed from neighbouring blocks, 2 none (too few stable pixels), 3 failed.",
}
