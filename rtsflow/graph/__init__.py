"""Lazy dask/xarray graphs built from the NumPy kernels; nothing here computes."""
