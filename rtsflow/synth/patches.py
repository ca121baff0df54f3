"""A synthetic cube written directly (no GeoTIFFs): observations that each cover a random patch of blocks.

For benchmarks and tests that need many observations quickly, or observations
that cover different parts of a region (as real TanDEM-X scenes do): analytic
terrain (rolling hills, valleys, a regional slope), each observation shifted
by up to ``max_shift_px`` and tilted, with noise from its coherence and HoA
(Eq. 1), written with the cube API (real Zarr shards and footprint index),
plus the unshifted terrain as a reference DEM.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rtsflow.grid import Grid, Window

__all__ = ["PATCH_CENTRE", "patch_cube", "terrain"]

#: EPSG:3413 point the cube is built around (Banks Island).
PATCH_CENTRE = (-1_820_000.0, -480_000.0)


def terrain(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Analytic terrain (m) at EPSG:3413 ``(x, y)``: defined everywhere, so any shift of it is exact."""
    u, v = x / 1000.0, y / 1000.0
    z = 120 + 6 * u + 3 * v
    z += 25 * np.sin(0.9 * u + 0.3 * v) * np.cos(0.7 * v - 0.2 * u)
    z += 12 * np.sin(2.3 * u - 1.1 * v + 1.0)
    z -= 18 * np.exp(-((np.sin(0.5 * u + 1.3 * v)) ** 2) / 0.02)  # valleys
    return z.astype(np.float32)


def patch_cube(
    path: str | Path,
    *,
    grid: Grid,
    blocks: int,
    obs_per_winter: int,
    cover: int,
    winters: tuple[int, int] = (2010, 2016),
    max_shift_px: float = 1.5,
    seed: int = 0,
) -> Window:
    """Write a cube of ``blocks``² grid blocks; each observation covers a random ``cover``² block patch.

    Returns the cube's window.
    """
    from rtsflow.io import cube as cubeio
    from rtsflow.io.footprints import append_footprints
    from rtsflow.io.repo import transaction
    from rtsflow.kernels.error import sigma_h
    from rtsflow.kernels.footprint import tile_valid_counts

    path = Path(path)
    b = grid.block_size
    r0, c0 = grid.pixel_of(*PATCH_CENTRE)
    window = Window(int(r0) // b * b, int(c0) // b * b, blocks * b, blocks * b)
    rng = np.random.default_rng(seed)
    n = len(winters) * obs_per_winter
    epoch = np.repeat(winters, obs_per_winter)
    t = np.array([f"{w}-11-15" for w in epoch], dtype="datetime64[D]") + rng.integers(0, 120, n)
    hoa = rng.uniform(25, 60, n)
    obs = {"time": t.astype("datetime64[ns]"), "hoa": hoa,
           "orbit": np.array(["ascending"] * n, dtype=object), "sensor": np.array(["TanDEM-X"] * n, dtype=object),
           "product_id": np.array([f"patch{i:04d}" for i in range(n)], dtype=object),
           "kind": np.array(["insar"] * n, dtype=object), "source": np.array(["synthetic patch"] * n, dtype=object),
           "content_hash": np.array([f"{i:064d}" for i in range(n)], dtype=object)}  # fmt: skip
    with transaction(path, command="synth", message=f"synthetic patch cube ({n} observations)", create=True) as tx:
        store = tx.store
        cubeio.create_cube(store, grid=grid, window=window, obs=obs)
        entries = []
        for i in range(n):
            br, bc = rng.integers(0, blocks - cover + 1, 2)
            dx, dy = rng.uniform(-max_shift_px, max_shift_px, 2) * grid.resolution
            tilt = rng.normal(0, 2e-5, 2)
            for j in range(br, br + cover):
                for k in range(bc, bc + cover):
                    w = Window(window.row + j * b, window.col + k * b, b, b)
                    x, y = grid.coords(w)
                    xx, yy = np.meshgrid(x, y)
                    coh = (0.55 + 0.35 * np.cos(xx / 2300.0) * np.sin(yy / 1700.0 + i)).astype(np.float32)
                    ramp = tilt[0] * (xx - PATCH_CENTRE[0]) + tilt[1] * (yy - PATCH_CENTRE[1])
                    dem = terrain(xx - dx, yy - dy) + ramp
                    dem = (dem + rng.normal(0, 1, dem.shape) * sigma_h(coh, np.float32(hoa[i]))).astype(np.float32)
                    layers = {"dem": dem, "coherence": coh, "layover_shadow": np.zeros(w.shape, np.float32),
                              "incidence": np.full(w.shape, 0.6, np.float32)}  # fmt: skip
                    cubeio.write_block(store, obs_index=i, block=w, cube_window=window, layers=layers)
                    counts = tile_valid_counts(dem, row=w.row, col=w.col, tile=grid.tile_size)
                    entries.append(np.column_stack([np.full(len(counts), i), counts]))
        append_footprints(store, np.concatenate(entries), n_obs=n)
        cubeio.create_static(store, name="reference_dem", dtype="float32", attributes={"long_name": "reference DEM"})
        for _, part in grid.blocks(window):
            x, y = grid.coords(part)
            xx, yy = np.meshgrid(x, y)
            cubeio.write_static_window(store, name="reference_dem", window=part, cube_window=window,
                                       values=terrain(xx, yy))  # fmt: skip
    return window
