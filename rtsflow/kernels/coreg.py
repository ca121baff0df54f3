"""Per-block co-registration with xDEM, and applying a fit to any window (NumPy only).

A fit aligns a *target* DEM to a *reference* DEM over one block:
``aligned(x, y) = target(x − shift_x, y − shift_y) + shift_z + ramp(col, row)``
with ``ramp = Σ c_ij col^i row^j`` (i, j ≤ 1) in block-relative pixel indices, the
form of ``xdem.coreg.Deramp(poly_order=1)``; the shift is from
``xdem.coreg.NuthKaab``. Applying is done here (bilinear resampling, halo
supplied by the caller) so a fit made on a block can be applied to any dask
chunk of it.
"""

from __future__ import annotations

import warnings

import numpy as np
from affine import Affine

__all__ = ["FIT_FIELDS", "STATUS", "apply_fit", "fit_block", "nmad", "resolve_fallbacks"]

#: Order of the values in a fit vector.
FIT_FIELDS = (
    "shift_x", "shift_y", "shift_z", "ramp_c00", "ramp_c01", "ramp_c10", "ramp_c11",
    "n_stable", "nmad_before", "nmad_after", "status",
)  # fmt: skip
#: Status codes of a block's fit.
STATUS = {"fit": 0, "neighbours": 1, "none": 2, "failed": 3}


def nmad(values: np.ndarray) -> float:
    """Normalised median absolute deviation, 1.4826 · median(|x − median(x)|), ignoring NaN."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan")
    return float(1.4826 * np.median(np.abs(v - np.median(v))))


def _empty(status: str, n_stable: int = 0, before: float = np.nan) -> np.ndarray:
    out = np.zeros(len(FIT_FIELDS))
    out[FIT_FIELDS.index("n_stable")] = n_stable
    out[FIT_FIELDS.index("nmad_before")] = before
    out[FIT_FIELDS.index("nmad_after")] = np.nan
    out[FIT_FIELDS.index("status")] = STATUS[status]
    return out


def fit_block(
    reference: np.ndarray,
    target: np.ndarray,
    stable: np.ndarray,
    *,
    transform: Affine,
    crs: str = "EPSG:3413",
    min_stable: int = 2000,
    max_shift_px: float = 8.0,
    outlier_nmad: float = 4.0,
    deramp: bool = True,
    subsample: int = 200_000,
    max_iterations: int = 30,
    offset_threshold: float = 0.001,
    random_state: int = 0,
) -> np.ndarray:
    """Fit ``target`` to ``reference`` over one block on stable ground.

    Parameters
    ----------
    reference, target
        Elevations (m) on the same grid; NaN where missing.
    stable
        Candidate stable pixels (quality-masked, not water). Pixels whose
        difference is more than ``outlier_nmad`` NMADs from the median (thaw
        slumps, lakes that changed) are dropped here too.
    transform
        Geotransform of the block.
    min_stable
        Fewer usable stable pixels than this: no fit (status ``none``).
    max_shift_px
        A larger fitted horizontal shift is treated as a failed fit.
    max_iterations, offset_threshold
        Nuth & Kääb iteration limits; xDEM's defaults (10, 0.05) stop ~0.3 px
        short of a 3 px shift on gentle terrain, these converge to < 0.05 px.

    Returns
    -------
    numpy.ndarray
        Values in the order of :data:`FIT_FIELDS`.
    """
    import xdem  # heavy import, only where fits run
    from pyproj import CRS

    ref = np.asarray(reference, dtype=np.float32)
    tba = np.asarray(target, dtype=np.float32)
    d = tba.astype(np.float64) - ref
    ok = np.asarray(stable, dtype=bool) & np.isfinite(d)
    if ok.sum() >= min_stable:
        med, spread = np.median(d[ok]), nmad(d[ok])
        ok &= np.abs(d - med) <= outlier_nmad * max(spread, 0.05)
    n_stable = int(ok.sum())
    before = nmad(d[ok]) if n_stable else np.nan
    if n_stable < min_stable:
        return _empty("none", n_stable, before)
    # Fit on the bounding box of the usable pixels only: blocks at a region's edge are mostly
    # empty, and xDEM's cost scales with the array it is given.
    rows, cols = np.nonzero(ok)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    pad = int(np.ceil(max_shift_px)) + 2
    r0, c0 = max(r0 - pad, 0), max(c0 - pad, 0)
    r1, c1 = min(r1 + pad, ok.shape[0]), min(c1 + pad, ok.shape[1])
    ref, tba, ok = ref[r0:r1, c0:c1], tba[r0:r1, c0:c1], ok[r0:r1, c0:c1]
    transform = transform @ Affine.translation(c0, r0)
    steps = [xdem.coreg.NuthKaab(subsample=subsample, max_iterations=max_iterations, offset_threshold=offset_threshold)]
    if deramp:
        steps.append(xdem.coreg.Deramp(poly_order=1, subsample=subsample))
    coreg = xdem.coreg.CoregPipeline(steps)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            coreg.fit(ref, tba, inlier_mask=ok, transform=transform, crs=CRS.from_user_input(crs),
                      random_state=random_state)  # fmt: skip
    except Exception:
        return _empty("failed", n_stable, before)
    shift = coreg.pipeline[0].meta["outputs"]["affine"]
    out = np.zeros(len(FIT_FIELDS))
    out[0], out[1], out[2] = shift["shift_x"], shift["shift_y"], shift["shift_z"]
    if deramp:
        c00, c01, c10, c11 = np.asarray(coreg.pipeline[1].meta["outputs"]["fitorbin"]["fit_params"], dtype=np.float64)
        # The ramp was fitted in indices of the cropped array (col - c0, row - r0): express it
        # in block indices.
        out[3:7] = (
            c00 - c10 * c0 - c01 * r0 + c11 * c0 * r0,
            c01 - c11 * c0,
            c10 - c11 * r0,
            c11,
        )
    res = abs(transform.a)
    if not np.isfinite(out[:7]).all() or max(abs(out[0]), abs(out[1])) > max_shift_px * res:
        return _empty("failed", n_stable, before)
    out[FIT_FIELDS.index("n_stable")] = n_stable
    out[FIT_FIELDS.index("nmad_before")] = before
    halo = int(np.ceil(max(abs(out[0]), abs(out[1])) / res)) + 3
    padded = np.pad(tba, halo, mode="constant", constant_values=np.nan)
    aligned = apply_fit(padded, out, resolution=res, origin=(int(r0), int(c0)), halo=halo)
    out[FIT_FIELDS.index("nmad_after")] = nmad((aligned - ref)[ok])
    out[FIT_FIELDS.index("status")] = STATUS["fit"]
    return out


def apply_fit(
    target: np.ndarray, fit: np.ndarray, *, resolution: float, origin: tuple[int, int], halo: int
) -> np.ndarray:
    """Apply a fit to a window of the target DEM.

    Parameters
    ----------
    target
        Window of the target DEM **including** ``halo`` pixels on every side.
    fit
        Values in the order of :data:`FIT_FIELDS`.
    origin
        (row, col) of the first non-halo pixel relative to the fitted block's origin.
    halo
        Halo width (pixels); the returned array excludes it. Must exceed the shift.

    Returns
    -------
    numpy.ndarray (float32) of the window without its halo.
    """
    t = np.asarray(target, dtype=np.float64)
    status = int(fit[FIT_FIELDS.index("status")])
    ny, nx = t.shape[0] - 2 * halo, t.shape[1] - 2 * halo
    if status in (STATUS["none"], STATUS["failed"]):
        return t[halo : halo + ny, halo : halo + nx].astype(np.float32)
    dc = -fit[0] / resolution  # target(x - shift_x): shift_x metres east = -dc columns
    dr = fit[1] / resolution  # y - shift_y: north is -row
    if max(abs(dc), abs(dr)) > max(halo - 2, 0) and (dc or dr):
        raise ValueError(f"shift ({dc:.2f}, {dr:.2f}) px needs a halo > {halo}")
    shifted = shift_cubic(t, dr, dc, halo=halo, shape=(ny, nx))
    r0, c0 = origin
    col = np.arange(c0, c0 + nx, dtype=np.float64)[None, :]
    row = np.arange(r0, r0 + ny, dtype=np.float64)[:, None]
    c = np.asarray(fit[3:7], dtype=np.float64).reshape(2, 2)
    # numpy.polynomial.polyval2d(col, row, c) written out to broadcast row × col.
    ramp = c[0, 0] + c[0, 1] * row + c[1, 0] * col + c[1, 1] * col * row
    return (shifted + fit[2] + ramp).astype(np.float32)


def _keys_weights(frac: float, a: float = -0.5) -> np.ndarray:
    """Keys (1981) cubic-convolution weights of the 4 samples around a fractional position."""
    d = np.abs(np.array([1.0 + frac, frac, 1.0 - frac, 2.0 - frac]))
    w = np.where(d <= 1, (a + 2) * d**3 - (a + 3) * d**2 + 1, a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a)
    return np.where(d < 2, w, 0.0)


def shift_cubic(t: np.ndarray, dr: float, dc: float, *, halo: int, shape: tuple[int, int]) -> np.ndarray:
    """Sample ``t`` at (row + dr, col + dc) for every pixel of the halo-free window (cubic convolution).

    A constant shift makes interpolation a separable 4-tap filter; cubic
    convolution keeps slump scarps sharper than bilinear resampling (which
    smooths them and leaks volume out of their outlines). NaN spreads only to
    the 4 × 4 neighbourhood.
    """
    ny, nx = shape
    if abs(dr) < 1e-12 and abs(dc) < 1e-12:
        return t[halo : halo + ny, halo : halo + nx]
    ir, fr = int(np.floor(dr)), dr - np.floor(dr)
    ic, fc = int(np.floor(dc)), dc - np.floor(dc)
    wr, wc = _keys_weights(fr), _keys_weights(fc)
    out = np.zeros((ny, nx))
    for i in range(4):
        r0 = halo + ir + i - 1
        rows = t[r0 : r0 + ny]
        part = np.zeros((ny, nx))
        for j in range(4):
            c0 = halo + ic + j - 1
            part += wc[j] * rows[:, c0 : c0 + nx]
        out += wr[i] * part
    return out


def resolve_fallbacks(fits: np.ndarray) -> np.ndarray:
    """Blocks without a usable fit take the mean of their fitted 8-neighbours, else none.

    Parameters
    ----------
    fits
        ``(n_block_rows, n_block_cols, len(FIT_FIELDS))``.

    Returns
    -------
    A copy where ``none``/``failed`` blocks with fitted neighbours carry the
    neighbours' mean shift (no ramp: a ramp is block-relative) and status
    ``neighbours``.
    """
    out = np.array(fits, dtype=np.float64, copy=True)
    status = out[..., FIT_FIELDS.index("status")]
    fitted = status == STATUS["fit"]
    ny, nx = status.shape
    for i in range(ny):
        for j in range(nx):
            if fitted[i, j]:
                continue
            nb = [(a, b) for a in range(max(i - 1, 0), min(i + 2, ny)) for b in range(max(j - 1, 0), min(j + 2, nx))
                  if fitted[a, b]]  # fmt: skip
            if nb:
                mean = np.mean([fits[a, b, :3] for a, b in nb], axis=0)
                out[i, j, :3] = mean
                out[i, j, 3:7] = 0.0
                out[i, j, FIT_FIELDS.index("status")] = STATUS["neighbours"]
    return out
