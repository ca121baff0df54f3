"""Ingest products into the observation cube: check everything, then write only touched blocks.

Ingest is all-or-nothing per call. Every product is checked (sidecar, CRS,
layer grids, pixel value ranges, duplicate ids) before the store is touched,
so bad input leaves the cube byte-identical. The write is one transaction of
the cube's Icechunk repository (:mod:`rtsflow.io.repo`): readers see the cube
before or after it, never between; an ingest that fails or is killed changes
nothing, and the next writer clears what it left.
"""

from __future__ import annotations

import errno
import logging
import shutil
import sys
import warnings
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import dask
import numpy as np

from rtsflow.grid import DEFAULT_GRID, GRID_CRS, Grid, Window
from rtsflow.io import cube as cubeio
from rtsflow.io import footprints
from rtsflow.io import repo as cuberepo
from rtsflow.io.lock import DirectoryLock, LockedError
from rtsflow.io.rasters import (
    LAYER_RULES,
    RasterInfo,
    check_layer_values,
    inspect_raster,
    warp_to_window,
)
from rtsflow.kernels.footprint import tile_valid_counts
from rtsflow.products import Product, ProductError, read_product

__all__ = [
    "IngestReport", "LockedError", "PreparedProduct", "cube_lock", "ingest", "ingest_mask", "ingest_reference_dem",
    "prepare_product",
]  # fmt: skip

log = logging.getLogger(__name__)

#: How long a writer waits for another writer of the same cube by default (s).
LOCK_WAIT_S = 3600.0


@dataclass(frozen=True)
class PreparedProduct:
    """A product whose sidecar and rasters passed every check."""

    product: Product
    content_hash: str
    layers: dict[str, RasterInfo]
    footprint: Window
    already_present: bool = False


@dataclass
class IngestReport:
    """What one ingest call did."""

    cube: Path
    added: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    blocks_written: int = 0
    input_bytes: int = 0
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [
            f"cube: {self.cube}",
            f"added {len(self.added)} observation(s), skipped {len(self.skipped)} already present",
            f"wrote {self.blocks_written} block(s) from {self.input_bytes / 1e6:.1f} MB of input",
        ]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def prepare_product(
    sidecar: str | Path, *, grid: Grid = DEFAULT_GRID, present: Mapping[str, str] | None = None
) -> PreparedProduct:
    """Check one product completely (reads every pixel once) without writing anything.

    Parameters
    ----------
    sidecar
        The product's sidecar JSON.
    grid
        Grid the footprint is computed on.
    present
        ``product id -> content hash`` already in the cube: a product found
        there with the same hash skips the pixel checks (``already_present``).

    Raises
    ------
    ProductError
        Naming the file and field at fault.
    """
    product = read_product(sidecar)
    layers = {k: inspect_raster(p, sidecar=product.sidecar, key=k) for k, p in product.rasters.items()}
    dem = layers["dem"]
    for key, info in layers.items():
        if key == "dem":
            continue
        if info.crs != dem.crs:
            raise ProductError(
                info.path,
                key,
                f"CRS {info.crs} differs from the DEM's {dem.crs}; all layers of a product must share the DEM's grid",
            )
        if (info.height, info.width) != (dem.height, dem.width):
            raise ProductError(
                info.path,
                key,
                f"shape {info.height}x{info.width} differs from the DEM's "
                f"{dem.height}x{dem.width}; all layers of a product must share the DEM's grid",
            )
        if not info.transform.almost_equals(dem.transform, precision=1e-6 * abs(dem.transform.a)):
            raise ProductError(
                info.path,
                key,
                "geotransform differs from the DEM's; all layers of a product must share the DEM's grid",
            )
    content_hash = product.content_hash()
    footprint = grid.window_from_bounds(dem.checked_grid_bounds(key="dem"))
    if present is not None and present.get(product.id) == content_hash:
        return PreparedProduct(product, content_hash, layers, footprint, already_present=True)
    for key, info in layers.items():
        if check_layer_values(info, key=key) == 0 and key == "dem":
            raise ProductError(info.path, key, "has no valid pixels (all nodata or NaN)")
    return PreparedProduct(product, content_hash, layers, footprint)


def _compute(tasks: list, *, scheduler, desc: str, unit: str, progress: bool) -> list:
    """``dask.compute`` of delayed tasks, with a progress bar on a distributed client (results in order)."""
    if not progress or scheduler is not None:
        return list(dask.compute(*tasks, scheduler=scheduler))
    try:
        from distributed import as_completed, default_client

        client = default_client()
    except (ImportError, ValueError):
        return list(dask.compute(*tasks))
    from rtsflow.progress import progress_bar

    futures = client.compute(tasks)
    with progress_bar(total=len(futures), desc=desc, unit=unit) as bar:
        for _ in as_completed(futures):
            bar.update()
    return client.gather(futures)


def _catch(fn, *args, **kwargs):
    """Run ``fn`` and return ``(result, None)`` or ``(None, exception)``.

    Tasks return their errors instead of raising so that every task finishes
    before a rollback (a raising task would leave siblings writing).
    """
    try:
        return fn(*args, **kwargs), None
    except Exception as e:
        return None, e


def _in_fork(fork, fn, *args, **kwargs):
    """Run a write ``fn(fork.store, ...)`` in a forked session; return ``(fork, result, error)``.

    The fork goes back to the coordinator, which merges every fork before it
    commits. Errors are returned, not raised, so that every task finishes
    before the transaction is abandoned.
    """
    try:
        return fork, fn(fork.store, *args, **kwargs), None
    except Exception as e:
        return fork, None, e


def _write_forked(tx: cuberepo.Transaction, calls: list[tuple], *, scheduler, desc: str, progress: bool) -> list:
    """Run ``(fn, args, kwargs)`` writes as Dask tasks, each in its own fork of ``tx``; merge them; return results."""
    import dask

    tx.checkpoint("prepare")  # forks need a session without uncommitted changes
    tasks = [dask.delayed(_in_fork, pure=False)(tx.fork(), fn, *args, **kwargs) for fn, args, kwargs in calls]
    results = _compute(tasks, scheduler=scheduler, desc=desc, unit="block", progress=progress)
    errors = [e for _, _, e in results if e is not None]
    if errors:
        raise errors[0]
    tx.merge([f for f, _, _ in results])
    return [r for _, r, _ in results]


def _write_product_block(
    store, prepared: PreparedProduct, *, grid: Grid, cube_window: Window, obs_index: int, block: Window
) -> np.ndarray | None:
    """Warp every layer of one product onto its tiles in one block and write them.

    Returns the footprint-index entries ``(obs, tile_row, tile_col, n_valid)`` of the
    tiles with DEM data, or ``None`` if there was nothing to write.
    """
    part = prepared.footprint.intersection(block)
    if part is None:
        return None
    # Warp only the tiles the footprint touches; untouched tiles stay unstored.
    tiles = grid.snap(part, to="tile").intersection(block)
    layers = {}
    for key, info in prepared.layers.items():
        rule = LAYER_RULES[key]
        outliers = (rule.low, rule.high) if rule.outlier_fraction else None
        sub = warp_to_window(info, grid=grid, window=tiles, resampling=rule.resampling, valid_range=outliers)
        if np.isfinite(sub).any():
            layers[key] = sub
    if "dem" not in layers:
        return None
    cubeio.write_block(store, obs_index=obs_index, block=tiles, cube_window=cube_window, layers=layers)
    counts = tile_valid_counts(layers["dem"], row=tiles.row, col=tiles.col, tile=grid.tile_size)
    return np.column_stack([np.full(len(counts), obs_index), counts])


def _obs_coords(prepared: Sequence[PreparedProduct]) -> dict[str, np.ndarray]:
    return {
        "time": np.array([p.product.acquired for p in prepared], dtype="datetime64[ns]"),
        "hoa": np.array([p.product.hoa for p in prepared], dtype=np.float64),
        "orbit": np.array([p.product.orbit for p in prepared], dtype=object),
        "sensor": np.array([p.product.sensor for p in prepared], dtype=object),
        "product_id": np.array([p.product.id for p in prepared], dtype=object),
        "kind": np.array([p.product.kind for p in prepared], dtype=object),
        "source": np.array([str(p.product.sidecar) for p in prepared], dtype=object),
        "content_hash": np.array([p.content_hash for p in prepared], dtype=object),
    }


def _index_complete(store, n_obs: int) -> bool:
    return (footprints.indexed_count(store) or 0) >= n_obs


def ingest(
    products: Sequence[str | Path],
    *,
    cube: str | Path,
    grid: Grid = DEFAULT_GRID,
    region: Window | None = None,
    scheduler: str | None = None,
    progress: bool = False,
    wait: float = LOCK_WAIT_S,
) -> IngestReport:
    """Ingest product sidecars into an observation cube, in parallel on the current Dask scheduler.

    Parameters
    ----------
    products
        Sidecar JSON paths.
    cube
        Zarr store path; created if it does not exist.
    grid
        Grid of a new cube (an existing cube keeps its own).
    region
        Window of a new cube (block-aligned); default: the union of the
        products' footprints, snapped to blocks.
    scheduler
        Passed to :func:`dask.compute`; ``None`` uses the active
        ``distributed.Client`` if there is one, else threads.
    progress
        Report progress (products checked, blocks written) as bars or log lines.
    wait
        Seconds to wait for another writer of the cube (an ingest in another
        process or on another node) to finish; then :class:`LockedError`.

    Returns
    -------
    IngestReport

    Raises
    ------
    ProductError
        For any bad product; the cube is left exactly as it was.
    LockedError
        If another writer held the cube for longer than ``wait``.

    Notes
    -----
    Writers of one cube (ingests, masks, reference DEMs) take turns: each holds
    the cube's lock (a directory beside it, safe on NFS and Lustre) from its
    first read to its commit, so concurrent ingests of different products all
    land, one after the other. A lock left by a dead process is taken over;
    its uncommitted writes never reached the cube and are cleared.

    The new version's commit records the command, and per product its id,
    sidecar and content hash (``rtsflow cube log``).
    """
    with cube_lock(cube, wait=wait):
        return _ingest_locked(products, cube=cube, grid=grid, region=region, scheduler=scheduler, progress=progress)


def _ingest_locked(products: Sequence[str | Path], *, cube, grid: Grid, region, scheduler, progress) -> IngestReport:
    """:func:`ingest` with the cube lock held."""
    cube = Path(cube)
    report = IngestReport(cube=cube)
    if not products:
        raise ValueError("no products given")
    # A repository without a version is what a first ingest killed before its commit left: start it anew.
    exists = cube.exists() and any(cube.iterdir()) and not (cuberepo.is_repo(cube) and not cuberepo.has_versions(cube))
    if exists:
        try:
            repo = cuberepo.open_repo(cube)
        except cuberepo.NotACubeError as e:
            raise ProductError(cube, None, str(e).removeprefix(f"{cube}: ")) from None
        stale = cuberepo.cleanup(cube, repo=repo)
        if stale:
            report.notes.append(f"cleared {len(stale)} unfinished write(s) of a writer that is gone")
        base = cuberepo.CubeRef(str(cube), repo.lookup_branch(cuberepo.BRANCH))
        info = cubeio.cube_info(base)
        grid = info.grid

    # 1. Check every product (in parallel); nothing is written before all pass.
    existing: dict[str, str] = {}
    if exists:
        existing = dict(zip(info.product_ids, info.content_hashes, strict=True))
    results = _compute(
        [dask.delayed(_catch)(prepare_product, p, grid=grid, present=existing) for p in products],
        scheduler=scheduler, desc="ingest: checking products", unit="product", progress=progress,
    )  # fmt: skip
    errors = [e for _, e in results if e is not None]
    if errors:
        for e in errors[1:]:
            log.error("%s", e)
        raise errors[0]
    prepared: list[PreparedProduct] = [r for r, _ in results]

    # 2. Duplicates: within this call and against the cube.
    new: list[PreparedProduct] = []
    seen: dict[str, PreparedProduct] = {}
    for p in prepared:
        pid = p.product.id
        if pid in seen:
            if seen[pid].content_hash != p.content_hash:
                raise ProductError(
                    p.product.sidecar,
                    "id",
                    f"duplicate id {pid!r} with different content than {seen[pid].product.sidecar}",
                )
            continue
        seen[pid] = p
        if pid in existing:
            if existing[pid] != p.content_hash:
                raise ProductError(
                    p.product.sidecar,
                    "id",
                    f"product {pid!r} is already in {cube} with different content; give the new product another id",
                )
            report.skipped.append(pid)
            continue
        new.append(p)
    if not new:
        return report

    # 3. Footprints vs the cube window.
    if exists:
        window = info.window
    elif region is not None:
        window = grid.snap(region, to="block")
    else:
        window = new[0].footprint
        for p in new[1:]:
            window = window.union(p.footprint)
        window = grid.snap(window, to="block")
    for p in new:
        inside = p.footprint.intersection(window)
        if inside is None:
            raise ProductError(
                p.product.sidecar,
                "dem",
                f"footprint {grid.bounds(p.footprint)} lies outside the cube extent {grid.bounds(window)}",
            )
        if inside != p.footprint:
            msg = f"{p.product.id}: footprint extends beyond the cube extent; clipped"
            warnings.warn(msg, stacklevel=2)
            report.notes.append(msg)

    # 4. One transaction: metadata, block writes (forked sessions on the workers), footprint index, commit.
    n_before = info.n_obs if exists else 0
    coords = _obs_coords(new)
    message = f"ingest {len(new)} product(s): " + ", ".join(p.product.id for p in new[:20]) + \
        (", …" if len(new) > 20 else "")
    try:
        with cuberepo.transaction(cube, command="ingest", message=message, create=not exists) as tx:
            # A cube from an older rtsflow without index is not extended half-way (rtsflow cube footprints builds it).
            indexed = not exists or _index_complete(tx.store, n_before)
            if not indexed:
                report.notes.append(f"the cube has no complete footprint index; build it with "
                                    f"`{footprints.REBUILD_HINT.format(cube=cube)}`")  # fmt: skip
            if exists:
                obs_slice = cubeio.append_obs_template(tx.store, grid=grid, window=window, obs=coords)
            else:
                cubeio.create_cube(tx.store, grid=grid, window=window, obs=coords)
                obs_slice = slice(0, len(new))
            calls = [(_write_product_block, (p,), dict(grid=grid, cube_window=window, obs_index=i,
                                                       block=grid.snap(part, to="block")))
                     for i, p in zip(range(obs_slice.start, obs_slice.stop), new, strict=True)
                     for _, part in grid.blocks(p.footprint.intersection(window))]  # fmt: skip
            results = _write_forked(tx, calls, scheduler=scheduler, desc="ingest: writing", progress=progress)
            written = [r for r in results if r is not None]
            report.blocks_written = len(written)
            if indexed:
                entries = np.concatenate(written) if written else np.zeros((0, 4), dtype=np.int64)
                footprints.append_footprints(tx.store, entries, n_obs=n_before + len(new))
            tx.metadata = {"products": [{"id": p.product.id, "sidecar": str(p.product.sidecar),
                                         "content_sha256": p.content_hash, "obs": i}
                                        for i, p in zip(range(obs_slice.start, obs_slice.stop), new, strict=True)]}
    except BaseException as e:
        if _no_space(e):
            free, need = shutil.disk_usage(cube.parent).free, _pixel_bytes(new, window, grid)
            raise ProductError(cube, None, f"no space left on its device while writing ({_gib(free)} free now; "
                               f"these products hold up to {_gib(need)} of pixels before compression). "
                               f"The cube is as it was; free space and ingest again.") from e  # fmt: skip
        raise
    report.added = [p.product.id for p in new]
    report.input_bytes = sum(lay.path.stat().st_size for p in new for lay in p.layers.values())
    return report


@contextmanager
def cube_lock(cube: str | Path, *, wait: float = LOCK_WAIT_S):
    """Hold the write lock of a cube (``.<name>.lock`` beside it) for the block; see :func:`ingest`."""
    cube = Path(cube)
    lock = DirectoryLock(cube.parent / f".{cube.name}.lock", what=f"cube {cube}")
    lock.acquire(wait=wait, say=lambda msg: print(msg, file=sys.stderr, flush=True))
    try:
        yield lock
    finally:
        lock.release()


def _no_space(e: BaseException | None) -> bool:
    """Whether an error (or one it was raised from) is "no space left on device"."""
    while e is not None:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        if "os error 28" in str(e) or "No space left on device" in str(e):  # Icechunk's (Rust) I/O errors
            return True
        e = e.__cause__ or e.__context__
    return False


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _pixel_bytes(new: list[PreparedProduct], window: Window, grid: Grid) -> int:
    """Uncompressed bytes of the cube layers the products write (an upper bound of what they need)."""
    per_px = sum(np.dtype(spec.dtype).itemsize for spec in cubeio.CUBE_VARIABLES.values())
    total = 0
    for p in new:
        part = p.footprint.intersection(window)
        if part is not None:
            total += grid.snap(part, to="tile").height * grid.snap(part, to="tile").width * per_px
    return total


def ingest_mask(
    raster: str | Path,
    *,
    cube: str | Path,
    name: str = "water",
    long_name: str = "water mask",
    scheduler: str | None = None,
) -> int:
    """Add a static mask GeoTIFF (1 = set, 0 = clear; any CRS) to a cube as a ``y × x`` uint8 variable.

    Resampled with nearest neighbour, written tile by tile; all-or-nothing
    (a failure removes the half-written variable). Returns the number of
    blocks written.

    Raises
    ------
    ProductError
        If the raster is unreadable, has no CRS or values other than 0/1.
    """
    what = long_name.removesuffix(" mask")
    attrs = {"long_name": long_name, "units": "1", "flag_values": [0, 1],
             "description": f"1 = {what}, 0 = clear (nearest neighbour)."}  # fmt: skip
    raster = Path(raster).resolve()
    with cube_lock(cube):
        static = _check_static(raster, cube=cube, name=name, rule="water")
        with cuberepo.transaction(cube, command="mask", message=f"add mask {name!r}") as tx:
            n = _write_static(tx, static, name=name, dtype="uint8", attrs=attrs, scheduler=scheduler)
            tx.metadata = {"files": [_file_record(raster, variable=name)]}
    return n


def ingest_reference_dem(
    raster: str | Path,
    *,
    cube: str | Path,
    name: str = "reference_dem",
    sigma: str | Path | None = None,
    scheduler: str | None = None,
) -> int:
    """Add a reference DEM (e.g. an ArcticDEM or Copernicus mosaic; any CRS) to a cube as ``y × x`` float32.

    Resampled bilinearly onto the cube's grid, block by block. With a
    reference in the cube, runs co-register every observation to it before
    compositing (``reference:`` in the run config), which fixes both their
    relative misregistration and their absolute geolocation. ``sigma``: an
    optional 1σ error raster of the reference (m), stored as ``<name>_sigma``.
    All-or-nothing: a failure leaves the cube as it was.
    """
    attrs = {"long_name": "reference surface elevation", "units": "m",
             "description": "External reference DEM (bilinear) used to co-register observations."}  # fmt: skip
    raster = Path(raster).resolve()
    sattrs = {"long_name": "reference elevation error (1 sigma)", "units": "m",
              "description": f"1σ error of {name} (bilinear)."}  # fmt: skip
    with cube_lock(cube):
        # Both checked (every pixel) before either is written.
        parts = [(_check_static(raster, cube=cube, name=name, rule="dem"), name, attrs)]
        if sigma is not None:
            sigma = Path(sigma).resolve()
            parts.append((_check_static(sigma, cube=cube, name=f"{name}_sigma", rule="sigma"), f"{name}_sigma", sattrs))
        with cuberepo.transaction(cube, command="reference", message=f"add reference DEM {name!r}") as tx:
            counts = [_write_static(tx, st, name=nm, dtype="float32", attrs=at, scheduler=scheduler)
                      for st, nm, at in parts]  # fmt: skip
            tx.metadata = {"files": [_file_record(st.layer.path, variable=nm) for st, nm, _ in parts]}
    return counts[0]


def _file_record(path: Path, *, variable: str) -> dict:
    """What ``cube log`` shows of a raster a commit added: its path, size and sha256."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"variable": variable, "path": str(path), "bytes": path.stat().st_size, "sha256": h.hexdigest()}


def _write_static_block(store, layer: RasterInfo, *, grid: Grid, footprint: Window, window: Window, name: str,
                        resampling, block: Window) -> bool:  # fmt: skip
    """Warp one block of a static raster onto the grid and write it (a task of :func:`_ingest_static`)."""
    tiles = grid.snap(footprint.intersection(block), to="tile").intersection(block)
    values = warp_to_window(layer, grid=grid, window=tiles, resampling=resampling)
    cubeio.write_static_window(store, name=name, window=tiles, cube_window=window, values=values)
    return True


@dataclass(frozen=True)
class _Static:
    """A static raster that passed every check, and where it goes in the cube."""

    layer: RasterInfo
    grid: Grid
    window: Window  # the cube's
    footprint: Window
    resampling: object


def _check_static(raster: Path, *, cube, name: str, rule: str) -> _Static:
    """Check a static raster completely (reads every pixel) against the cube, writing nothing."""
    info_cube = cubeio.cube_info(cube)
    grid, window = info_cube.grid, info_cube.window
    layer = inspect_raster(raster, sidecar=raster, key=rule)
    if name in cubeio.cube_group(cube):  # before reading pixels: say it at once
        raise ProductError(raster, rule, f"{cube} already has a variable {name!r}; choose another --name")
    if check_layer_values(layer, key=rule) == 0:
        raise ProductError(raster, rule, "has no valid pixels (all nodata or NaN)")
    bounds = layer.checked_grid_bounds(key=rule)
    footprint = grid.window_from_bounds(bounds).intersection(window)
    if footprint is None:
        where = f"footprint {tuple(round(b) for b in bounds)} in {GRID_CRS}"
        raise ProductError(raster, rule, f"{where} lies outside the cube extent {grid.bounds(window)}; "
                           f"is the CRS ({layer.crs.to_string()}) right?")  # fmt: skip
    return _Static(layer, grid, window, footprint, LAYER_RULES[rule].resampling)


def _write_static(tx: cuberepo.Transaction, st: _Static, *, name: str, dtype: str, attrs: dict, scheduler) -> int:
    """Add a checked static raster to the cube in transaction ``tx``; returns the blocks written."""
    cubeio.create_static(tx.store, name=name, dtype=dtype, attributes={**attrs, "source": str(st.layer.path)})
    common = dict(grid=st.grid, footprint=st.footprint, window=st.window, name=name, resampling=st.resampling)
    calls = [(_write_static_block, (st.layer,), {**common, "block": st.grid.snap(part, to="block")})
             for _, part in st.grid.blocks(st.footprint)]  # fmt: skip
    _write_forked(tx, calls, scheduler=scheduler, desc=f"{name}: writing", progress=False)
    return len(calls)
