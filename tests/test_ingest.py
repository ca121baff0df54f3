"""Ingest: reprojection onto the grid, real-data volumes, idempotency, bad input, parallel runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner

from rtsflow.cli import main
from rtsflow.grid import DEFAULT_GRID, Window
from rtsflow.ingest import ingest
from rtsflow.io import cube as cubeio
from rtsflow.io.cube import CUBE_VARIABLES, open_cube
from rtsflow.io.repo import head, open_repo
from rtsflow.products import ProductError, write_sidecar

from .conftest import shared, tree_digest

GRID = DEFAULT_GRID
# Two neighbouring blocks somewhere in the Canadian Arctic.
BLOCK_A = GRID.block_window(110, 72)
BLOCK_B = GRID.block_window(110, 73)


def write_tif(
    path: Path, data: np.ndarray, *, transform: Affine, crs: str | None = "EPSG:3413", nodata: float | None = None
) -> Path:
    profile = {
        "driver": "GTiff",
        "height": data.shape[0],
        "width": data.shape[1],
        "count": 1,
        "dtype": data.dtype.name,
        "transform": transform,
        "nodata": nodata,
    }
    if crs is not None:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    return path


def make_product(
    root: Path,
    pid: str,
    *,
    block: Window = BLOCK_A,
    offset: tuple[int, int] = (100, 100),
    shape: tuple[int, int] = (300, 200),
    seed: int = 0,
    coherence: float | None = 0.8,
    hoa: float | None = 40.0,
    acquired: str = "2011-01-15T10:00:00Z",
) -> Path:
    """A small InSAR product on the grid inside ``block`` (or DEM-only with ``coherence=None``)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    win = Window(block.row + offset[0], block.col + offset[1], *shape)
    t = GRID.transform(win)
    dem = (200 + rng.normal(0, 5, shape)).astype("float32")
    paths = {"dem": write_tif(root / f"{pid}_dem.tif", dem, transform=t)}
    if coherence is not None:
        coh = np.clip(coherence + rng.normal(0, 0.05, shape), 0, 1).astype("float32")
        paths["coherence"] = write_tif(root / f"{pid}_coh.tif", coh, transform=t)
        ls = (rng.random(shape) < 0.01).astype("uint8")
        paths["layover_shadow"] = write_tif(root / f"{pid}_ls.tif", ls, transform=t)
        inc = rng.uniform(0.3, 1.2, shape).astype("float32")
        paths["incidence"] = write_tif(root / f"{pid}_inc.tif", inc, transform=t)
    return write_sidecar(
        root / f"{pid}.json",
        id=pid,
        acquired=acquired,
        hoa_m=hoa if coherence else None,
        orbit="ascending",
        sensor="test",
        **paths,
    )


# -- real data ------------------------------------------------------------------------------


def test_mount_st_helens_dome_volume_matches_native_grid(tmp_path):
    """EPSG:26910 DEM-only products → EPSG:3413 cube; dome volume with true ground area within 1 %."""
    msh = shared("mount_st_helens")
    dates = json.loads((msh / "dem.json").read_text())
    sidecars = []
    runner = CliRunner()
    for n in (2, 12):
        entry = dates[n - 1]
        assert entry["filename"].startswith(f"{n}_")
        acquired = entry["date"].replace("_", "-") + "T00:00:00Z"
        sc = tmp_path / f"msh{n}.json"
        r = runner.invoke(
            main,
            [
                "sidecar",
                str(sc),
                "--id",
                f"msh{n}",
                "--acquired",
                acquired,
                "--dem",
                str(msh / f"{n}.tif"),
                "--sensor",
                "USGS",
            ],
        )
        assert r.exit_code == 0, r.output
        sidecars.append(str(sc))
    cube = tmp_path / "cube.zarr"
    r = runner.invoke(main, ["ingest", *sidecars, "--cube", str(cube), "--workers", "1"])
    assert r.exit_code == 0, r.output

    ds = open_cube(cube)
    assert ds.rio.crs.to_epsg() == 3413
    assert list(ds.product_id.values) == ["msh2", "msh12"]  # time order
    assert list(ds.kind.values) == ["dem", "dem"]
    ddem = (ds.dem.isel(obs=1) - ds.dem.isel(obs=0)).values.astype("float64")

    with rasterio.open(msh / "2.tif") as a, rasterio.open(msh / "12.tif") as b:
        native = b.read(1).astype("float64") - a.read(1).astype("float64")
        native_volume = native.sum() * abs(a.res[0] * a.res[1])
    assert native_volume > 1e7  # the dome grew by tens of millions of m³

    changed = np.isfinite(ddem) & (ddem != 0)
    rows, cols = np.nonzero(changed)
    sub = Window(rows.min(), cols.min(), rows.max() - rows.min() + 1, cols.max() - cols.min() + 1)
    cube_win = GRID.window_from_coords(ds.x.values, ds.y.values)
    area = GRID.pixel_ground_area(Window(cube_win.row + sub.row, cube_win.col + sub.col, sub.height, sub.width))
    d = np.nan_to_num(ddem[sub.row : sub.row_stop, sub.col : sub.col_stop])
    true_volume = (d * area).sum()
    nominal_volume = d.sum() * GRID.pixel_area_nominal
    assert true_volume == pytest.approx(native_volume, rel=0.01)
    # Without the ground-area correction the volume would be ~27 % too large at 46°N.
    assert nominal_volume / native_volume == pytest.approx(1.27, abs=0.02)
    # Outside the dome the two dates are identical, and stay so after resampling.
    far = np.isfinite(ddem) & ~changed
    assert far.sum() > 0.5 * np.isfinite(ddem).sum()


def test_on_grid_fast_path_equals_gdal_warp(tmp_path):
    """Products already on the grid are copied; the result equals a GDAL bilinear/nearest warp."""
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    from rtsflow.io.rasters import inspect_raster, warp_to_window

    rng = np.random.default_rng(1)
    src_win = Window(BLOCK_A.row + 7, BLOCK_A.col + 3, 60, 80)
    data = rng.normal(100, 10, src_win.shape).astype("float32")
    path = write_tif(tmp_path / "on.tif", data, transform=GRID.transform(src_win))
    info = inspect_raster(path, sidecar=path, key="dem")
    target = Window(src_win.row - 5, src_win.col + 10, 64, 64)  # overlaps the raster partly
    for resampling in (Resampling.bilinear, Resampling.nearest):
        fast = warp_to_window(info, grid=GRID, window=target, resampling=resampling)
        gdal = np.full(target.shape, np.nan, "float32")
        reproject(
            data,
            gdal,
            src_transform=GRID.transform(src_win),
            src_crs="EPSG:3413",
            src_nodata=np.nan,
            dst_transform=GRID.transform(target),
            dst_crs="EPSG:3413",
            dst_nodata=np.nan,
            resampling=resampling,
        )
        np.testing.assert_array_equal(fast, gdal)
    # Half a pixel off the grid: the real warp path is taken, and values are interpolated.
    off = write_tif(tmp_path / "off.tif", data, transform=GRID.transform(src_win) @ Affine.translation(0.5, 0))
    warped = warp_to_window(
        inspect_raster(off, sidecar=off, key="dem"), grid=GRID, window=target, resampling=Resampling.bilinear
    )
    inner = warped[10:40, 2:30]
    assert np.isfinite(inner).all() and not np.isin(inner, data).all()


# -- cube layout ----------------------------------------------------------------------------


def test_cube_layout_chunks_attrs_and_crs(tmp_path):
    p = make_product(tmp_path / "p", "a")
    cube = tmp_path / "cube.zarr"
    ingest([p], cube=cube, scheduler="sync")
    ds = open_cube(cube)
    assert ds.dem.dims == ("obs", "y", "x")
    assert ds.dem.data.chunksize == (1, GRID.block_size, GRID.block_size)
    for name in CUBE_VARIABLES:
        for key in ("long_name", "units", "description"):
            assert key in ds[name].attrs, (name, key)
    assert ds.rio.crs.to_epsg() == 3413
    assert ds.sizes["y"] % GRID.block_size == 0 and ds.sizes["x"] % GRID.block_size == 0
    # Zarr layout: inner chunk = tile, shard = block.
    import zarr

    arr = zarr.open_group(cubeio.cube_store(cube), mode="r")["dem"]
    assert arr.shards == (1, GRID.block_size, GRID.block_size)
    assert arr.chunks == (1, GRID.tile_size, GRID.tile_size)
    # Values landed where the product is (it sits exactly on the grid: no resampling change).
    with rasterio.open(tmp_path / "p" / "a_dem.tif") as src:
        original = src.read(1)
    cube_win = GRID.window_from_coords(ds.x.values, ds.y.values)
    prod_win = Window(BLOCK_A.row + 100, BLOCK_A.col + 100, 300, 200)
    ys, xs = prod_win.relative_to(cube_win)
    np.testing.assert_array_equal(ds.dem.isel(obs=0).values[ys, xs], original)
    assert np.isnan(ds.dem.isel(obs=0).values[: ys.start, :]).all()
    ls = ds.layover_shadow.isel(obs=0).values
    assert set(np.unique(ls[ys, xs])) <= {0.0, 1.0} and np.isnan(ls[: ys.start]).all()
    assert np.isnan(ds.sigma.isel(obs=0).values).all()  # InSAR products carry no sigma layer


# -- idempotency and footprints -------------------------------------------------------------


def test_ingest_twice_leaves_store_unchanged(tmp_path, small_region):
    cube = tmp_path / "cube.zarr"
    first = ingest(small_region.products, cube=cube, scheduler="threads")
    assert len(first.added) == len(small_region.products)
    before = tree_digest(cube)
    again = ingest(small_region.products, cube=cube, scheduler="threads")
    assert again.added == [] and len(again.skipped) == len(small_region.products)
    assert tree_digest(cube) == before


def test_adding_a_product_only_writes_its_blocks(tmp_path):
    a = make_product(tmp_path / "p", "a", block=BLOCK_A)
    b = make_product(tmp_path / "p", "b", block=BLOCK_B, seed=1, acquired="2014-02-01T00:00:00Z")
    cube = tmp_path / "cube.zarr"
    region = BLOCK_A.union(BLOCK_B)
    ingest([a], cube=cube, region=region, scheduler="sync")
    v1 = head(cube)
    report = ingest([b], cube=cube, scheduler="sync")
    assert report.blocks_written == 1
    diff = open_repo(cube).diff(from_snapshot_id=v1, to_snapshot_id=head(cube))
    pixels = {k.strip("/"): v for k, v in diff.updated_chunks.items() if k.strip("/") in CUBE_VARIABLES}
    # Every pixel shard written belongs to the new observation (obs index 1) and block B; product a's are untouched.
    bcol = (BLOCK_B.col - region.col) // GRID.block_size
    assert pixels and all(tuple(c) == (1, 0, bcol) for chunks in pixels.values() for c in chunks), pixels


def test_product_outside_cube_is_refused_and_partial_is_clipped(tmp_path):
    a = make_product(tmp_path / "p", "a", block=BLOCK_A)
    cube = tmp_path / "cube.zarr"
    ingest([a], cube=cube, scheduler="sync")
    far = make_product(tmp_path / "p", "far", block=GRID.block_window(120, 90))
    before = tree_digest(cube)
    with pytest.raises(ProductError, match="outside the cube extent"):
        ingest([far], cube=cube, scheduler="sync")
    assert tree_digest(cube) == before
    edge = make_product(tmp_path / "p", "edge", block=BLOCK_A, offset=(4000, 4000), shape=(200, 200))
    with pytest.warns(UserWarning, match="clipped"):
        ingest([edge], cube=cube, scheduler="sync")
    assert open_cube(cube).sizes["obs"] == 2


# -- bad input ------------------------------------------------------------------------------


def _bad_products(root: Path) -> dict[str, tuple[Path, str]]:
    """Bad products and a regex their error must match (naming the file and the field)."""
    root.mkdir(parents=True, exist_ok=True)
    t = GRID.transform(Window(BLOCK_A.row + 10, BLOCK_A.col + 10, 50, 50))
    dem = np.full((50, 50), 100.0, "float32")
    cases = {}

    write_tif(root / "nocrs_dem.tif", dem, transform=t, crs=None)
    cases["missing CRS"] = (
        write_sidecar_unchecked(root / "nocrs.json", id="nocrs", dem="nocrs_dem.tif"),
        r"nocrs_dem\.tif: field 'dem': has no CRS",
    )

    write_tif(root / "coh_dem.tif", dem, transform=t)
    write_tif(root / "coh_coh.tif", np.full((50, 50), 1.5, "float32"), transform=t)
    cases["coherence > 1"] = (
        write_sidecar_unchecked(root / "coh.json", id="coh", dem="coh_dem.tif", coherence="coh_coh.tif", hoa_m=40.0),
        r"coh_coh\.tif: field 'coherence': values span \[1\.5, 1\.5\]",
    )

    write_tif(root / "ok_dem.tif", dem, transform=t)
    write_tif(root / "ok_coh.tif", np.full((50, 50), 0.7, "float32"), transform=t)
    cases["missing HoA"] = (
        write_sidecar_unchecked(root / "nohoa.json", id="nohoa", dem="ok_dem.tif", coherence="ok_coh.tif"),
        r"nohoa\.json: field 'hoa_m': missing",
    )
    cases["negative HoA"] = (
        write_sidecar_unchecked(
            root / "neghoa.json", id="neghoa", dem="ok_dem.tif", coherence="ok_coh.tif", hoa_m=-3.0
        ),
        r"neghoa\.json: field 'hoa_m': expected a positive number",
    )

    write_tif(root / "shape_coh.tif", np.full((40, 50), 0.7, "float32"), transform=t)
    cases["coherence of other shape"] = (
        write_sidecar_unchecked(
            root / "shape.json", id="shape", dem="ok_dem.tif", coherence="shape_coh.tif", hoa_m=40.0
        ),
        r"shape_coh\.tif: field 'coherence': shape 40x50 differs",
    )
    shifted = t @ Affine.translation(3, 0)
    write_tif(root / "grid_coh.tif", np.full((50, 50), 0.7, "float32"), transform=shifted)
    cases["coherence on other grid"] = (
        write_sidecar_unchecked(root / "grid.json", id="grid", dem="ok_dem.tif", coherence="grid_coh.tif", hoa_m=40.0),
        r"grid_coh\.tif: field 'coherence': geotransform differs",
    )

    (root / "garbage_dem.tif").write_bytes(b"this is not a tiff" * 10)
    cases["unreadable file"] = (
        write_sidecar_unchecked(root / "garbage.json", id="garbage", dem="garbage_dem.tif"),
        r"garbage_dem\.tif: field 'dem': cannot be read",
    )
    cases["missing file"] = (
        write_sidecar_unchecked(root / "missing.json", id="missing", dem="nothere.tif"),
        r"missing\.json: field 'dem': file not found",
    )
    (root / "broken.json").write_text('{"id": "broken", ')
    cases["invalid JSON"] = (root / "broken.json", r"broken\.json: not valid JSON")

    write_tif(root / "nan_dem.tif", np.full((50, 50), np.nan, "float32"), transform=t)
    cases["NaN-only DEM"] = (write_sidecar_unchecked(root / "nan.json", id="nan", dem="nan_dem.tif"),
                             r"nan_dem\.tif: field 'dem': has no valid pixels")  # fmt: skip
    write_tif(root / "inf_dem.tif", np.full((50, 50), np.inf, "float32"), transform=t)
    cases["infinite DEM"] = (write_sidecar_unchecked(root / "inf.json", id="inf", dem="inf_dem.tif"),
                             r"inf_dem\.tif: field 'dem': contains infinite values")  # fmt: skip
    whole = write_tif(root / "whole_dem.tif", np.random.default_rng(0).normal(100, 5, (400, 400)).astype("float32"),
                      transform=t)  # fmt: skip
    (root / "truncated_dem.tif").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    cases["truncated GeoTIFF"] = (write_sidecar_unchecked(root / "trunc.json", id="trunc", dem="truncated_dem.tif"),
                                  r"truncated_dem\.tif: field 'dem': pixels from row 0 cannot be read")  # fmt: skip
    write_tif(root / "geo_dem.tif", dem, transform=t, crs="EPSG:4326")  # metre coordinates labelled as degrees
    cases["wrong CRS"] = (write_sidecar_unchecked(root / "geo.json", id="geo", dem="geo_dem.tif"),
                          r"geo_dem\.tif: field 'dem': .* cannot be placed in EPSG:3413 with its CRS EPSG:4326")
    (root / "noacq.json").write_text(json.dumps({"id": "noacq", "dem": "ok_dem.tif"}))
    cases["missing sidecar key 'acquired'"] = (root / "noacq.json", r"noacq\.json: field 'acquired': expected")
    (root / "noid.json").write_text(json.dumps({"acquired": "2011-02-01T00:00:00Z", "dem": "ok_dem.tif"}))
    cases["missing sidecar key 'id'"] = (root / "noid.json", r"noid\.json: field 'id': expected a non-empty string")

    write_tif(root / "dup_dem.tif", dem + 1, transform=t)
    cases["duplicate id, other content"] = (
        write_sidecar_unchecked(root / "dup.json", id="a", dem="dup_dem.tif", acquired="2012-01-01T00:00:00Z"),
        r"dup\.json: field 'id': product 'a' is already in .* with different content",
    )
    return cases


def write_sidecar_unchecked(path: Path, **doc) -> Path:
    """Write a sidecar as a user might, without rtsflow's own checks."""
    doc.setdefault("acquired", "2011-02-01T00:00:00Z")
    path.write_text(json.dumps(doc))
    return path


BAD_CASES = [
    "missing CRS",
    "coherence > 1",
    "missing HoA",
    "negative HoA",
    "coherence of other shape",
    "coherence on other grid",
    "unreadable file",
    "missing file",
    "invalid JSON",
    "duplicate id, other content",
    "NaN-only DEM",
    "infinite DEM",
    "truncated GeoTIFF",
    "wrong CRS",
    "missing sidecar key 'acquired'",
    "missing sidecar key 'id'",
]


@pytest.fixture(scope="module")
def cube_with_one_product(tmp_path_factory):
    root = tmp_path_factory.mktemp("badinput")
    a = make_product(root / "good", "a")
    cube = root / "cube.zarr"
    ingest([a], cube=cube, scheduler="sync")
    good = make_product(root / "good", "b", seed=5, acquired="2015-01-01T00:00:00Z")
    return cube, good, _bad_products(root / "bad")


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_names_file_and_field_and_leaves_cube_byte_identical(cube_with_one_product, case, tmp_path):
    cube, good, cases = cube_with_one_product
    bad, pattern = cases[case]
    before = tree_digest(cube)
    # A good product in the same call must not be half-added either.
    with pytest.raises(ProductError, match=pattern):
        ingest([good, bad], cube=cube, scheduler="sync")
    assert tree_digest(cube) == before
    # On a new cube path nothing is created at all.
    fresh = tmp_path / "fresh.zarr"
    if case != "duplicate id, other content":
        with pytest.raises(ProductError, match=pattern):
            ingest([good, bad], cube=fresh, scheduler="sync")
        assert not fresh.exists()


def test_cli_reports_bad_input_with_exit_code_2(cube_with_one_product):
    cube, good, cases = cube_with_one_product
    bad, _ = cases["negative HoA"]
    before = tree_digest(cube)
    r = CliRunner().invoke(main, ["ingest", str(good), str(bad), "--cube", str(cube), "--workers", "1"])
    assert r.exit_code == 2
    assert "neghoa.json: field 'hoa_m'" in r.output
    assert tree_digest(cube) == before


def test_duplicate_ids_within_one_call(tmp_path):
    a = make_product(tmp_path / "p1", "same")
    a2 = make_product(tmp_path / "p2", "same")  # same content, other files: fine, ingested once
    cube = tmp_path / "cube.zarr"
    report = ingest([a, a2], cube=cube, scheduler="sync")
    assert report.added == ["same"]
    other = make_product(tmp_path / "p3", "same", seed=9)
    with pytest.raises(ProductError, match="duplicate id 'same' with different content"):
        ingest([a, other], cube=tmp_path / "c2.zarr", scheduler="sync")
    assert not (tmp_path / "c2.zarr").exists()


# -- failures during writes -----------------------------------------------------------------


def test_failed_write_rolls_back_new_observations(tmp_path, monkeypatch):
    a = make_product(tmp_path / "p", "a")
    cube = tmp_path / "cube.zarr"
    ingest([a], cube=cube, scheduler="sync")
    before = tree_digest(cube)
    b = make_product(tmp_path / "p", "b", seed=1, acquired="2014-01-01T00:00:00Z")
    c = make_product(tmp_path / "p", "c", seed=2, acquired="2015-01-01T00:00:00Z")

    import rtsflow.ingest as ing

    real = ing.warp_to_window

    def disk_full_on_c(info, **kw):  # fault injection: the write of product c fails
        if info.path.name.startswith("c_"):
            raise OSError(28, "No space left on device")
        return real(info, **kw)

    monkeypatch.setattr(ing, "warp_to_window", disk_full_on_c)
    with pytest.raises(ProductError, match="no space left on its device") as e:
        ingest([b, c], cube=cube, scheduler="sync")
    assert isinstance(e.value.__cause__, OSError) and e.value.__cause__.errno == 28
    assert open_cube(cube).sizes["obs"] == 1
    after = tree_digest(cube)
    # Shards of b were written then removed; metadata returns to one observation.
    assert after == before
    monkeypatch.undo()
    assert ingest([b, c], cube=cube, scheduler="sync").added == ["b", "c"]


# -- parallel -------------------------------------------------------------------------------


def test_parallel_ingest_on_local_cluster_equals_serial(tmp_path, small_region):
    from distributed import Client

    from rtsflow.cluster import local_cluster

    serial = tmp_path / "serial.zarr"
    ingest(small_region.products, cube=serial, scheduler="sync")
    parallel = tmp_path / "parallel.zarr"
    threads = os.environ.get("OMP_NUM_THREADS")
    with local_cluster(n_workers=2, dashboard_address=None) as lc, Client(lc) as client:
        ingest(small_region.products, cube=parallel)
        ran_on = {ts.split("://")[-1] for ts in client.run(lambda: 1)}
        workers_threads = set(client.run(lambda: os.environ.get("OMP_NUM_THREADS")).values())
        # Workers run single-threaded BLAS/OpenMP; this process (which may train with torch) keeps its setting.
        assert workers_threads == {threads or "1"} and os.environ.get("OMP_NUM_THREADS") == threads
    assert len(ran_on) == 2
    a, b = open_cube(serial), open_cube(parallel)
    for name in CUBE_VARIABLES:
        np.testing.assert_array_equal(a[name].values, b[name].values)
    assert list(a.product_id.values) == list(b.product_id.values)


def test_cube_path_that_is_not_a_cube_is_refused(tmp_path):
    a = make_product(tmp_path / "p", "a")
    target = tmp_path / "notes"
    target.mkdir()
    (target / "important.txt").write_text("keep me")
    with pytest.raises(ProductError, match="not an rtsflow cube"):
        ingest([a], cube=target, scheduler="sync")
    assert (target / "important.txt").read_text() == "keep me"


def test_dem_only_product_with_error_raster(tmp_path):
    """ArcticDEM-style products: DEM plus a per-pixel σ raster, no coherence or HoA."""
    root = tmp_path / "p"
    root.mkdir()
    win = Window(BLOCK_A.row + 50, BLOCK_A.col + 50, 40, 30)
    t = GRID.transform(win)
    dem = write_tif(root / "strip_dem.tif", np.full(win.shape, 55.0, "float32"), transform=t, nodata=-9999.0)
    err = write_tif(root / "strip_err.tif", np.full(win.shape, 0.4, "float32"), transform=t)
    sc = write_sidecar(
        root / "strip.json", id="strip", acquired="2015-03-01T00:00:00Z", dem=dem, sigma=err, sensor="WorldView"
    )
    cube = tmp_path / "cube.zarr"
    ingest([sc], cube=cube, scheduler="sync")
    ds = open_cube(cube)
    assert ds.kind.values[0] == "dem" and np.isnan(ds.hoa.values[0])
    cube_win = GRID.window_from_coords(ds.x.values, ds.y.values)
    ys, xs = win.relative_to(cube_win)
    assert (ds.sigma.isel(obs=0).values[ys, xs] == np.float32(0.4)).all()
    assert (ds.dem.isel(obs=0).values[ys, xs] == 55.0).all()
    assert np.isnan(ds.coherence.isel(obs=0).values).all()
    # Negative errors are refused.
    bad = write_tif(root / "bad_err.tif", np.full(win.shape, -1.0, "float32"), transform=t)
    bsc = write_sidecar(root / "bad.json", id="bad", acquired="2016-03-01T00:00:00Z", dem=dem, sigma=bad)
    with pytest.raises(ProductError, match=r"bad_err\.tif: field 'sigma': values span"):
        ingest([bsc], cube=cube, scheduler="sync")


def test_dem_outliers_are_dropped_but_undeclared_nodata_is_refused(tmp_path):
    root = tmp_path / "p"
    root.mkdir()
    win = Window(BLOCK_A.row + 50, BLOCK_A.col + 50, 100, 100)
    t = GRID.transform(win)
    dem = np.full(win.shape, 120.0, "float32")
    dem[0, :3] = (-1500.0, 9500.0, -1200.0)  # 0.03 %: wild InSAR heights over water
    sc = write_sidecar(
        root / "few.json", id="few", acquired="2015-03-01T00:00:00Z", dem=write_tif(root / "few.tif", dem, transform=t)
    )
    cube = tmp_path / "cube.zarr"
    ingest([sc], cube=cube, scheduler="sync")
    ds = open_cube(cube)
    cube_win = GRID.window_from_coords(ds.x.values, ds.y.values)
    ys, xs = win.relative_to(cube_win)
    got = ds.dem.isel(obs=0).values[ys, xs]
    assert np.isnan(got[0, :3]).all() and (got[0, 3:] == 120.0).all() and (got[1:] == 120.0).all()
    # A tenth of the pixels at -9999 without a declared nodata: refused, naming the share.
    dem[:10] = -9999.0
    bad = write_sidecar(
        root / "nodata.json",
        id="nodata",
        acquired="2016-03-01T00:00:00Z",
        dem=write_tif(root / "nodata.tif", dem, transform=t),
    )
    with pytest.raises(ProductError, match=r"nodata\.tif: field 'dem': values span \[-9999, 120\] \(10\.00% of"):
        ingest([bad], cube=cube, scheduler="sync")


# -- reference DEMs (rtsflow ingest-reference) ---------------------------------------------------


@pytest.fixture(scope="module")
def msh_cube(tmp_path_factory):
    """A cube holding one real product (Mount St Helens 2004-10-04, EPSG:26910) and the source files."""
    root = tmp_path_factory.mktemp("msh_reference")
    msh = shared("mount_st_helens")
    sc = write_sidecar(root / "msh2.json", id="msh2", acquired="2004-10-04T00:00:00Z", dem=msh / "2.tif",
                       sensor="USGS")  # fmt: skip
    cube = root / "cube.zarr"
    ingest([sc], cube=cube, scheduler="threads")
    return cube, msh


def _reference_variant(src: Path, dst: Path, *, scale: float = 1.0, crs: str | None = None, units: str = "",
                       hole: float | None = None) -> Path:  # fmt: skip
    """Copy of a GeoTIFF with its values scaled, its CRS replaced, a band unit set or a corner filled with ``hole``."""
    with rasterio.open(src) as s:
        a = s.read(1) * np.float32(scale)
        profile = s.profile | ({"crs": crs} if crs else {})
    if hole is not None:
        a[: a.shape[0] // 4, : a.shape[1] // 4] = hole
    with rasterio.open(dst, "w", **profile) as d:
        d.write(a, 1)
        if units:
            d.set_band_unit(1, units)
    return dst


def test_ingest_reference_round_trips_a_dem_in_another_crs(msh_cube, tmp_path):
    """CLI ingest-reference of a UTM DEM equals a direct rasterio reprojection onto the cube's grid within 1e-3 m."""
    base, msh = msh_cube
    cube = tmp_path / "cube.zarr"
    import shutil

    shutil.copytree(base, cube)
    sigma = _reference_variant(msh / "26.tif", tmp_path / "sigma.tif", scale=1e-4)  # σ = 1e-4 × height (m)
    r = CliRunner().invoke(main, ["ingest-reference", str(msh / "26.tif"), "--cube", str(cube), "--sigma", str(sigma),
                                  "--cluster", "local"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "wrote reference DEM 'reference_dem'" in r.output and "reference_dem_sigma" in r.output

    ds = open_cube(cube)
    info = cubeio.cube_info(cube)
    expected = {}
    for name, path in (("reference_dem", msh / "26.tif"), ("reference_dem_sigma", sigma)):
        with rasterio.open(path) as s:
            direct = np.full(info.window.shape, np.nan, dtype="float32")
            rasterio.warp.reproject(
                source=s.read(1), destination=direct, src_transform=s.transform, src_crs=s.crs, src_nodata=np.nan,
                dst_transform=info.grid.transform(info.window), dst_crs="EPSG:3413", dst_nodata=np.nan,
                resampling=rasterio.enums.Resampling.bilinear,
            )  # fmt: skip
        expected[name] = direct
        got = ds[name].values
        assert ds[name].attrs["units"] == "m"
        both = np.isfinite(got) & np.isfinite(direct)
        assert both.sum() > 100_000  # the 303 × 442 px file covers ~170 000 grid pixels
        np.testing.assert_array_equal(np.isfinite(got), np.isfinite(direct))
        assert np.nanmax(np.abs(got[both] - direct[both])) <= 1e-3
    assert float(np.nanmin(expected["reference_dem"])) > 1300  # real heights, not zeros or scaled values


REFERENCE_BAD_CASES = {
    # A DEM declared in feet.
    "feet": (dict(scale=3.28084, units="ft"), "band unit is 'ft'"),
    # Centimetres with no unit declared: caught by the value range.
    "centimetres": (dict(scale=100.0), "expected elevations in metres"),
    # The right coordinates under the wrong UTM zone: the footprint misses the cube.
    "wrong_crs": (dict(crs="EPSG:26911"), "outside the cube extent"),
    # Metres read as degrees: cannot be placed on the grid at all.
    "degrees": (dict(crs="EPSG:4326"), "is the CRS"),
    # An undeclared −9999 nodata over a quarter of the file.
    "nodata": (dict(hole=-9999.0), "values span [-9999"),
}


@pytest.mark.parametrize("case", sorted(REFERENCE_BAD_CASES))
def test_ingest_reference_bad_input_gives_clear_error_and_leaves_cube_untouched(msh_cube, tmp_path, case):
    cube, msh = msh_cube
    kwargs, message = REFERENCE_BAD_CASES[case]
    bad = _reference_variant(msh / "26.tif", tmp_path / f"{case}.tif", **kwargs)
    before = tree_digest(cube)
    r = CliRunner().invoke(main, ["ingest-reference", str(bad), "--cube", str(cube), "--cluster", "local"])
    assert r.exit_code == 2, r.output
    assert f"{case}.tif" in r.output and message in r.output, r.output
    assert tree_digest(cube) == before


def test_ingest_reference_refuses_to_overwrite(msh_cube, tmp_path):
    base, msh = msh_cube
    cube = tmp_path / "cube.zarr"
    import shutil

    shutil.copytree(base, cube)
    from rtsflow.ingest import ingest_reference_dem

    ingest_reference_dem(msh / "26.tif", cube=cube, scheduler="threads")
    before = tree_digest(cube)
    with pytest.raises(ProductError, match="already has a variable 'reference_dem'"):
        ingest_reference_dem(msh / "27.tif", cube=cube, scheduler="threads")
    assert tree_digest(cube) == before


# -- cubes of older rtsflow --------------------------------------------------------------------------


def _as_old_cube(cube: Path) -> list[str]:
    """Rewrite a cube's text coordinates as fixed-length UTF-32, as rtsflow <= 0.2 stored them."""
    import warnings

    import zarr

    group = zarr.open_group(str(cube), mode="r+", zarr_format=3)
    names = []
    for name, arr in list(group.arrays()):
        if arr.dtype.kind in "OT":
            values = np.array([str(v) for v in arr[...]], dtype="U")
            attrs, dims, chunks = dict(arr.attrs), arr.metadata.dimension_names, arr.chunks
            del group[name]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                group.create_array(name, shape=values.shape, dtype=values.dtype, chunks=chunks, attributes=attrs,
                                   dimension_names=dims)[...] = values  # fmt: skip
            names.append(name)
    return sorted(names)


def _plain_copy(cube: Path, dest: Path) -> None:
    """The cube's current version as a plain Zarr store: the layout of rtsflow <= 0.2."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync
    from zarr.storage import LocalStore

    source, target, proto = cubeio.cube_store(cube), LocalStore(str(dest)), default_buffer_prototype()

    async def copy():
        async for key in source.list():
            await target.set(key, await source.get(key, prototype=proto))

    sync(copy())


def test_old_plain_zarr_cube_is_migrated_losslessly(tmp_path):
    import zarr

    from rtsflow.io.footprints import read_footprints
    from rtsflow.io.migrate import fixed_length_strings
    from rtsflow.io.repo import CubeRef, history

    cube = tmp_path / "cube.zarr"
    a, b = make_product(tmp_path / "p", "a"), make_product(tmp_path / "p", "b", seed=1, acquired="2012-01-15T10:00:00Z")
    ingest([a], cube=cube, scheduler="threads")
    v1 = head(cube)
    ingest([b], cube=cube, scheduler="threads")
    # An old cube: text as fixed-length UTF-32, and b's ingest was interrupted (written, never committed).
    old = tmp_path / "old.zarr"
    _plain_copy(cube, old)
    strings = _as_old_cube(old)
    assert {"product_id", "kind", "sensor"} <= set(strings) and fixed_length_strings(old) == strings
    zarr.open_group(str(old), mode="r+").attrs[cubeio.COMMITTED_ATTR] = 1
    (old / ".rtsflow-pending").mkdir()
    (old / ".rtsflow-pending" / "manifest.json").write_text('{"n_obs": 1}')
    original = tree_digest(old)
    # Writers and readers refuse the old layout and say what to run; nothing is touched.
    with pytest.raises(ProductError, match=r"older rtsflow .*`rtsflow cube migrate"):
        ingest([b], cube=old, scheduler="sync")
    r = CliRunner().invoke(main, ["info", str(old)])
    assert r.exit_code == 2 and "rtsflow cube migrate" in r.output, r.output
    assert tree_digest(old) == original

    r = CliRunner().invoke(main, ["cube", "migrate", str(old)])
    assert r.exit_code == 0, r.output
    assert "left out 1 observation" in r.output and "product_id" in r.output, r.output
    new, ref = open_cube(old), open_cube(CubeRef(str(cube), v1))
    assert new.sizes["obs"] == 1
    for name in CUBE_VARIABLES:
        np.testing.assert_array_equal(new[name].values, ref[name].values)
    for name in cubeio.OBS_COORDS:
        assert list(new[name].values) == list(ref[name].values), name
    np.testing.assert_array_equal(read_footprints(old, grid=GRID, n_obs=1).entries,
                                  read_footprints(CubeRef(str(cube), v1), grid=GRID, n_obs=1).entries)  # fmt: skip
    assert history(old)[0].command == "migrate"
    # Nothing the user had is lost: the old store is kept, byte for byte.
    (backup,) = tmp_path.glob("old.zarr.plain-zarr-*")
    assert tree_digest(backup) == original
    # The converted cube takes ingests (b again, now committed), and is not converted twice.
    assert ingest([b], cube=old, scheduler="sync").added == ["b"]
    assert list(open_cube(old).product_id.values) == ["a", "b"]
    r = CliRunner().invoke(main, ["cube", "migrate", str(old)])
    assert r.exit_code == 2 and "already an Icechunk cube" in r.output, r.output


@pytest.fixture
def small_disk(tmp_path):
    """A 12 MiB tmpfs (needs root and a kernel that lets us mount; skipped where it cannot)."""
    import shutil
    import subprocess

    mnt = tmp_path / "small_disk"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_gives_a_clear_error_and_leaves_the_cube_as_it_was(small_disk, tmp_path):
    import shutil

    cube = small_disk / "cube.zarr"
    ingest([make_product(tmp_path / "p", "a")], cube=cube, scheduler="threads")
    before = tree_digest(cube)
    free = shutil.disk_usage(small_disk).free
    big = make_product(tmp_path / "p", "big", shape=(2500, 2500), offset=(0, 0), acquired="2011-02-01T10:00:00Z",
                       seed=3)  # fmt: skip
    with pytest.raises(ProductError, match="no space left on its device") as e:
        ingest([big], cube=cube, scheduler="threads")
    assert str(cube) in str(e.value) and "The cube is as it was" in str(e.value)
    assert tree_digest(cube) == before
    assert shutil.disk_usage(small_disk).free >= free - 64 * 1024  # the partial shards were removed
    assert list(open_cube(cube).product_id.values) == ["a"]


def test_concurrent_ingests_into_one_cube_all_land(tmp_path):
    """Two `rtsflow ingest` processes on one cube at the same time, three times over: every product lands,
    both exit 0 and the cube stays readable (they take turns on the cube's lock)."""
    import subprocess
    import sys

    rtsflow = str(Path(sys.executable).parent / "rtsflow")
    cube = tmp_path / "cube.zarr"
    ingest([make_product(tmp_path / "p", "first")], cube=cube, scheduler="threads")
    expected = ["first"]
    for round_ in range(3):
        pids = [f"r{round_}a", f"r{round_}b"]
        sidecars = [make_product(tmp_path / "p", pid, acquired=f"2012-0{round_ + 1}-{10 + k}T10:00:00Z", seed=10 + k)
                    for k, pid in enumerate(pids)]  # fmt: skip
        cmd = [rtsflow, "ingest", "--cube", str(cube), "--workers", "1"]
        procs = [subprocess.Popen([*cmd, str(sc)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for sc in sidecars]  # fmt: skip
        outs = [p.communicate(timeout=600) for p in procs]
        for p, (_, err) in zip(procs, outs, strict=True):
            assert p.returncode == 0, err[-2000:]
        expected += pids
        assert sorted(open_cube(cube).product_id.values) == sorted(expected)
    assert not (tmp_path / ".cube.zarr.lock").exists()
    assert not (cube / ".rtsflow-pending").exists()
