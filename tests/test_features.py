"""The lazy feature graph: laziness, equality with plain NumPy, chunk independence, real data."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import rasterio
import xarray as xr

from rtsflow.graph.dem import CompositeConfig, seasonal_composites
from rtsflow.graph.features import MODEL_BANDS, pair_features
from rtsflow.grid import DEFAULT_GRID, Window
from rtsflow.ingest import ingest, ingest_mask
from rtsflow.io.cube import open_cube
from rtsflow.io.features import open_features, write_features
from rtsflow.kernels.composite import weighted_composite
from rtsflow.kernels.ddem import ddem_norm
from rtsflow.kernels.error import sigma_h
from rtsflow.kernels.quality import sar_quality_mask
from rtsflow.kernels.terrain import slope_horn
from rtsflow.products import write_sidecar
from rtsflow.selection import SelectionRules, winter_of
from rtsflow.synth.observations import render_observation, schedule
from rtsflow.synth.scene import Scene

from .conftest import shared

GRID = DEFAULT_GRID


@pytest.fixture(scope="module")
def region_cube(small_region, tmp_path_factory):
    cube = tmp_path_factory.mktemp("features") / "cube.zarr"
    ingest(small_region.products, cube=cube, scheduler="sync")
    ingest_mask(small_region.truth_rasters["water"], cube=cube, name="water", scheduler="sync")
    return cube


def test_winter_labels():
    t = np.array(["2010-10-01", "2011-01-15", "2011-04-30", "2011-08-01", "2011-12-24"], dtype="datetime64[ns]")
    assert winter_of(t).tolist() == [2010, 2010, 2010, 2011, 2011]


def test_selection_reports_exclusions(region_cube, small_region):
    _, sel = seasonal_composites(open_cube(region_cube))
    assert len(sel) == len(small_region.products)
    summer = sel[sel.time.dt.month.between(5, 9)]
    assert len(summer) > 0 and not summer.selected.any() and summer.reason.str.contains("month").all()
    bad_hoa = sel[(sel.hoa < 15) | (sel.hoa > 80)]
    assert bad_hoa.reason.str.contains("HoA").all() and not bad_hoa.selected.any()
    assert sel[sel.selected].winter.isin([2010, 2016]).all()
    only_asc = SelectionRules(orbits=("ascending",))
    _, sel2 = seasonal_composites(open_cube(region_cube), config=CompositeConfig(rules=only_asc))
    assert not sel2[sel2.orbit == "descending"].selected.any()


def test_building_the_graph_reads_no_pixels(region_cube, tmp_path):
    cube = tmp_path / "cube.zarr"
    shutil.copytree(region_cube, cube)
    ds = open_cube(cube)
    # Take every stored chunk away (the cube's chunk objects): building the graph must still work.
    shutil.move(cube / "chunks", tmp_path / "chunks")
    features, _ = pair_features(ds, grid=GRID, earlier=2010, later=2016, water=ds["water"])
    assert all(isinstance(features[v].data, type(features.ddem.data)) for v in MODEL_BANDS)
    assert features.ddem.chunks is not None
    shutil.move(tmp_path / "chunks", cube / "chunks")
    assert np.isfinite(features.ddem.values).sum() > 1000


def _numpy_reference(ds: xr.Dataset, earlier: int, later: int) -> dict[str, np.ndarray]:
    """The same maths as the graph, in plain NumPy on whole arrays."""
    _, sel = seasonal_composites(ds)
    out = {}
    comps = {}
    for w in (earlier, later):
        idx = sel[sel.selected & (sel.epoch == w)].obs.to_numpy()
        sub = ds.isel(obs=idx)
        coh, dem = sub.coherence.values, sub.dem.values
        bad = sar_quality_mask(coh, layover_shadow=sub.layover_shadow.values, incidence=sub.incidence.values)
        sig = sigma_h(coh, sub.hoa.values.astype("float32")[:, None, None])
        comps[w] = weighted_composite(np.where(bad, np.nan, dem), sig, weights=coh)
    out["ddem"] = comps[later][0] - comps[earlier][0]
    out["ddem_sigma"] = np.hypot(comps[later][1], comps[earlier][1])
    out["ddem_norm"] = ddem_norm(out["ddem"], out["ddem_sigma"])
    out["slope"] = slope_horn(comps[earlier][0], resolution=GRID.resolution)
    out["quality"] = ((comps[earlier][2] == 0) | (comps[later][2] == 0)).astype("uint8")
    return out


def test_graph_equals_whole_array_numpy(region_cube):
    ds = open_cube(region_cube)
    features, _ = pair_features(ds, grid=GRID, earlier=2010, later=2016, coreg=None)
    ref = _numpy_reference(ds, 2010, 2016)
    for name, expected in ref.items():
        got = features[name].values
        np.testing.assert_allclose(got, expected, rtol=2e-6, atol=2e-5, equal_nan=True, err_msg=name)
    assert np.isfinite(ref["ddem"]).sum() > 10_000


def test_features_do_not_depend_on_chunking(region_cube):
    out = {}
    for chunk in (1024, 4096):
        ds = open_cube(region_cube, chunk=chunk)
        f, _ = pair_features(ds, grid=GRID, earlier=2010, later=2016, water=ds["water"])
        assert f.ddem.data.chunksize == (chunk, chunk)
        out[chunk] = f.compute()
    a, b = out[1024], out[4096]
    for name in (*MODEL_BANDS, "quality", "water", "n_obs", "coreg_shift_x", "coreg_shift_y", "coreg_status"):
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    assert int(a.coreg_status.values.ravel()[0]) == 0  # the block was fitted


def test_water_mask_and_attributes(region_cube, small_region):
    ds = open_cube(region_cube)
    f, _ = pair_features(ds, grid=GRID, earlier=2010, later=2016, water=ds["water"], coreg=None)
    with rasterio.open(small_region.truth_rasters["water"]) as src:
        truth = src.read(1)
    win = GRID.window_from_coords(ds.x.values, ds.y.values)
    ys, xs = small_region.window.relative_to(win)
    np.testing.assert_array_equal(f.water.values[ys, xs], truth)
    for name in (*MODEL_BANDS, "quality", "water", "n_obs"):
        for key in ("long_name", "units", "description"):
            assert key in f[name].attrs, (name, key)
    assert f.attrs["years"] == 6.0


def _write_product(root, pid, layers, window, acquired, hoa):
    paths = {}
    for key in ("dem", "coherence", "layover_shadow", "incidence"):
        data = layers[key].astype("uint8" if key == "layover_shadow" else "float32")
        p = root / f"{pid}_{key}.tif"
        with rasterio.open(
            p,
            "w",
            driver="GTiff",
            height=window.height,
            width=window.width,
            count=1,
            dtype=data.dtype.name,
            crs="EPSG:3413",
            transform=GRID.transform(window),
        ) as dst:
            dst.write(data, 1)
        paths[key] = p
    return write_sidecar(root / f"{pid}.json", id=pid, acquired=acquired, hoa_m=hoa, orbit="ascending", **paths)


def test_coregistration_in_the_graph_recovers_a_known_shift(tmp_path):
    """Later winter shifted by (3, -1) px and tilted: the block fit finds it; residual = noise."""
    scene = Scene(seed=2, slump_density=0.0, epochs=(2010, 2016))
    obs = dataclasses.replace(schedule(scene)[0], hoa=30.0, coherence_base=0.9)
    window = Window(562_000, 380_000, 600, 600)
    x, y = GRID.coords(window)
    rng = np.random.default_rng(5)
    centre = (x.mean(), y.mean())
    early = dataclasses.replace(obs, shift=(0.0, 0.0), tilt=(0.0, 0.0, 0.0), epoch=0)
    late = dataclasses.replace(obs, shift=(30.0, -10.0), tilt=(2e-5, -1e-5, 0.7), epoch=1, index=obs.index + 1)
    la = render_observation(scene, early, x, y, noise=rng.standard_normal((3, 600, 600)).astype("f4"), centre=centre)
    lb = render_observation(scene, late, x, y, noise=rng.standard_normal((3, 600, 600)).astype("f4"), centre=centre)
    products = [
        _write_product(tmp_path, "early", la, window, "2010-12-01T00:00:00Z", 30.0),
        _write_product(tmp_path, "late", lb, window, "2016-12-01T00:00:00Z", 30.0),
    ]
    cube = tmp_path / "cube.zarr"
    ingest(products, cube=cube, scheduler="sync")
    f, _ = pair_features(open_cube(cube), grid=GRID, earlier=2010, later=2016)
    f = f.compute()
    assert f.coreg_shift_x.values.item() / 10 == pytest.approx(3.0, abs=0.1)
    assert f.coreg_shift_y.values.item() / 10 == pytest.approx(-1.0, abs=0.1)
    stable = f.quality.values == 0
    noise = np.nanmedian(f.ddem_sigma.values[stable])
    assert f.coreg_nmad_after.values.item() == pytest.approx(noise, rel=0.15)
    d = f.ddem.values[stable]
    assert abs(np.nanmedian(d)) < 0.1  # offset and tilt removed


def test_mount_st_helens_features(tmp_path):
    """Real repeat DEMs (DEM-only, EPSG:26910): dDEM is 0 off the dome, dome volume within 1 %."""
    msh = shared("mount_st_helens")
    dates = json.loads((msh / "dem.json").read_text())
    products = [
        write_sidecar(
            tmp_path / f"msh{n}.json",
            id=f"msh{n}",
            dem=msh / f"{n}.tif",
            acquired=dates[n - 1]["date"].replace("_", "-") + "T00:00:00Z",
        )
        for n in (2, 12)
    ]
    cube = tmp_path / "cube.zarr"
    ingest(products, cube=cube, scheduler="sync")
    rules = SelectionRules(months=None, epoch="date")
    f, sel = pair_features(
        open_cube(cube), grid=GRID, earlier=20041004, later=20050419, coreg=None, composite=CompositeConfig(rules=rules)
    )
    assert sel.selected.all()
    assert f.attrs["years"] == pytest.approx(197 / 365.25)
    d = f.ddem.values.astype("float64")
    with rasterio.open(msh / "2.tif") as a, rasterio.open(msh / "12.tif") as b:
        native = b.read(1).astype("float64") - a.read(1).astype("float64")
    native_volume = native.sum() * 100.0
    finite = np.isfinite(d)
    changed = finite & (d != 0)
    assert (d[finite & ~changed] == 0).all() and (finite & ~changed).sum() > 50_000
    win = GRID.window_from_coords(f.x.values, f.y.values)
    area = GRID.pixel_ground_area(win, step=16)
    volume = np.nansum(np.where(changed, d, 0.0) * area)
    assert volume == pytest.approx(native_volume, rel=0.01)


def test_write_and_reopen_feature_store(region_cube, tmp_path):
    ds = open_cube(region_cube)
    f, sel = pair_features(ds, grid=GRID, earlier=2010, later=2016, water=ds["water"])
    path = write_features(f, tmp_path / "features.zarr", grid=GRID, selection=sel)
    assert [p.name for p in tmp_path.iterdir()] == ["features.zarr"]  # no temporary left behind
    back = open_features(path)
    assert back.ddem.data.chunksize == (GRID.block_size, GRID.block_size)
    assert back.rio.crs.to_epsg() == 3413
    np.testing.assert_array_equal(back.ddem.values, f.ddem.values)
    assert "coreg_shift_x" in back and back.coreg_shift_x.dims == ("block_y", "block_x")
    table = json.loads(back.attrs["observation_selection"])
    assert len(table) == len(sel) and {"reason", "selected"} <= set(table[0])
    with pytest.raises(FileExistsError):
        write_features(f, path, grid=GRID)
