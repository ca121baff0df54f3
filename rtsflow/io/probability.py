"""The probability store: model output on the grid as Zarr (uint8 0–250 scaled, or float16), with the model's hash."""

from __future__ import annotations

from pathlib import Path

import xarray as xr

from rtsflow.grid import Grid
from rtsflow.io.features import write_grid_dataset

__all__ = ["PROBABILITY_DTYPES", "open_probability", "write_probability"]

# uint8: 0–250 ↔ 0–1 in steps of 0.004 (0.5 is exactly 125), 255 = no data. A quarter of float32's size.
PROBABILITY_DTYPES = {
    "uint8": {"dtype": "uint8", "scale_factor": 1.0 / 250.0, "add_offset": 0.0, "_FillValue": 255},
    "float16": {"dtype": "float16"},
}


def write_probability(
    probability: xr.DataArray,
    path: str | Path,
    *,
    grid: Grid,
    dtype: str = "uint8",
    overwrite: bool = False,
    resources: dict | None = None,
    attrs: dict | None = None,
) -> Path:
    """Compute and write a probability map (atomic: temporary store, then rename).

    Parameters
    ----------
    probability
        Lazy map from :func:`rtsflow.model.inference.predict` (carries ``model_sha256``).
    dtype
        ``"uint8"`` (0–250 scaled, 255 = no data) or ``"float16"``.
    resources
        Dask worker resources for the whole write, e.g. ``{"GPU": 1}``: the inference
        stage is submitted on its own so it runs only on GPU-tagged workers (needs a
        distributed client).
    attrs
        Extra dataset attributes (e.g. the features path, the run).
    """
    if dtype not in PROBABILITY_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(PROBABILITY_DTYPES)}, got {dtype!r}")
    if "model_sha256" not in probability.attrs:
        raise ValueError("probability has no 'model_sha256' attribute; make it with rtsflow.model.inference.predict")
    ds = probability.rename("probability").to_dataset()
    ds.attrs.update(attrs or {})
    ds.attrs["model_sha256"] = probability.attrs["model_sha256"]
    ds.attrs["title"] = "rtsflow RTS probability"
    compute_kwargs = {"resources": resources} if resources else None
    return write_grid_dataset(
        ds,
        path,
        grid=grid,
        overwrite=overwrite,
        encoding={"probability": dict(PROBABILITY_DTYPES[dtype])},
        compute_kwargs=compute_kwargs,
    )


def open_probability(path: str | Path, *, chunk: int | None = None) -> xr.DataArray:
    """Open a probability store lazily (float, NaN where no data; chunks = blocks or ``chunk``)."""
    import zarr

    from rtsflow.io.repo import zarr_store

    store = zarr_store(path)  # a stage store (versioned) or the lazy API's output (plain Zarr)
    attrs = zarr.open_group(store, mode="r", zarr_format=3).attrs
    if "model_sha256" not in attrs:
        raise ValueError(f"{path}: not an rtsflow probability store (no 'model_sha256' attribute)")
    b = Grid.from_attrs(attrs).block_size if chunk is None else int(chunk)
    ds = xr.open_zarr(store, consolidated=False, chunks={"y": b, "x": b})
    prob = ds["probability"].astype("float32")
    prob.attrs.update(model_sha256=attrs["model_sha256"])
    return prob
