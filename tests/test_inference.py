"""Tile inference: invalid input, batching, per-process model loading and routing to GPU-tagged workers."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import torch
import xarray as xr
from distributed import Client, LocalCluster, get_task_stream

from rtsflow.model.checkpoint import save_checkpoint
from rtsflow.model.factory import build_model
from rtsflow.model.inference import load_count, predict
from rtsflow.model.normalise import DEFAULT_NORMALISATION

BANDS = [s.band for s in DEFAULT_NORMALISATION]


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(architecture="unet", encoder="resnet18", in_channels=4, encoder_depth=3).eval()
    directory = tmp_path_factory.mktemp("model") / "ckpt"
    return save_checkpoint(model, directory, architecture="unet", encoder="resnet18", encoder_depth=3, bands=BANDS,
                           normalisation=list(DEFAULT_NORMALISATION), tile_size=128)  # fmt: skip


def _features(n=384, chunk=192, seed=0):
    rng = np.random.default_rng(seed)
    arrs = {b: rng.normal(0, 3, (n, n)).astype("float32") for b in BANDS}
    arrs["ddem_sigma"] = np.abs(arrs["ddem_sigma"])
    arrs["ddem"][:100, :100] = np.nan  # a no-data corner larger than a tile
    coords = {"x": np.arange(n) * 10.0, "y": -np.arange(n) * 10.0}
    return xr.Dataset({k: (("y", "x"), da.from_array(v, chunks=chunk)) for k, v in arrs.items()}, coords=coords)


def test_prediction_is_lazy_nan_where_invalid_and_in_range(spec):
    feats = _features()
    prob = predict(feats, spec=spec, bands=BANDS, halo=32, tile=128)
    assert isinstance(prob.data, da.Array) and prob.attrs["model_sha256"] == spec.sha256
    p = prob.compute(scheduler="sync").values
    assert np.isnan(p[:100, :100]).all()
    inside = p[~np.isnan(p)]
    assert inside.size == 384 * 384 - 100 * 100
    assert ((inside >= 0) & (inside <= 1)).all()
    # Batch size does not change results.
    p2 = predict(feats, spec=spec, bands=BANDS, halo=32, tile=128, batch_size=1).compute(scheduler="sync").values
    np.testing.assert_array_equal(p, p2)


def test_predictions_do_not_depend_on_chunking(spec):
    """Tiles sit on a lattice anchored to the grid: 96², 192² and one 384² chunk give the same map."""
    maps = [
        predict(_features(chunk=c), spec=spec, bands=BANDS, halo=32, tile=128).compute(scheduler="sync").values
        for c in (96, 192, 384)
    ]
    np.testing.assert_array_equal(maps[0], maps[2])
    np.testing.assert_array_equal(maps[1], maps[2])
    # No seam: across the 192-px chunk edge the map is as smooth as anywhere else.
    strip = maps[1][150:250, 180:204]
    assert np.isfinite(strip).all()
    jump = np.abs(np.diff(strip, axis=1))
    assert jump[:, 11].mean() < 3 * jump.mean()


def test_inference_runs_only_on_gpu_tagged_worker_and_loads_once_per_process(spec, tmp_path):
    dask_worker = shutil.which("dask", path=str(Path(sys.executable).parent))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:  # fmt: skip
        gpu = subprocess.Popen([dask_worker, "worker", cluster.scheduler_address, "--resources", "GPU=1",
                                "--nthreads", "1", "--no-dashboard", "--name", "gpu-worker",
                                "--local-directory", str(tmp_path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            client.wait_for_workers(2, timeout=120)
            info = client.scheduler_info()["workers"]
            gpu_addr = next(a for a, w in info.items() if w.get("resources", {}).get("GPU"))
            feats = client.persist(_features())  # the CPU stage runs anywhere
            prob = predict(feats, spec=spec, bands=BANDS, halo=32, tile=128, device="cpu")
            with get_task_stream(client) as ts:
                result = client.compute(prob.data, resources={"GPU": 1}).result()
            ran = {t["worker"] for t in ts.data if "predict_block" in str(t["key"])}
            assert ran == {gpu_addr}
            loads = client.run(load_count)
            assert loads[gpu_addr] == 1  # four blocks, one model load
            assert all(n == 0 for a, n in loads.items() if a != gpu_addr)
            assert result.shape == (384, 384)
        finally:
            gpu.terminate()
            gpu.wait(timeout=60)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_on_gpu_matches_fp32(spec):
    feats = _features()
    p32 = predict(feats, spec=spec, bands=BANDS, halo=32, tile=128, device="cuda",
                  precision="fp32").compute(scheduler="sync").values  # fmt: skip
    p16 = predict(feats, spec=spec, bands=BANDS, halo=32, tile=128, device="cuda",
                  precision="auto").compute(scheduler="sync").values  # fmt: skip (auto = bf16 on a GPU)
    assert np.nanmax(np.abs(p32 - p16)) <= 0.02


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_one_worker_per_gpu_each_loads_the_model_once(spec):
    from rtsflow.cluster import local_cluster

    with local_cluster(n_workers=1, gpus=2, dashboard_address=None) as lc, Client(lc) as client:
        info = client.scheduler_info()["workers"]
        gpu = {a for a, w in info.items() if w.get("resources", {}).get("GPU")}
        assert len(gpu) == 2
        feats = client.persist(_features(chunk=96))  # 16 blocks: both GPU workers get some
        prob = predict(feats, spec=spec, bands=BANDS, halo=32, tile=128)
        client.compute(prob.data, resources={"GPU": 1}).result()
        loads = client.run(load_count)
        assert all(loads[a] == 1 for a in gpu)
        devices = client.run(lambda: __import__("os").environ.get("CUDA_VISIBLE_DEVICES"), workers=list(gpu))
        assert sorted(devices.values()) == ["0", "1"]


def _plain_loop(bands, *, spec, tile, halo, origin, rows, cols):
    """The lattice windows one at a time, written out plainly: the reference for the engine."""
    from rtsflow.model.inference import _model
    from rtsflow.model.normalise import BandScaling, normalise

    model, record = _model(spec, "cpu")
    scalings = [BandScaling(**s) for s in record["normalisation"]]
    m = halo // 2
    out = np.full((rows[1] - rows[0], cols[1] - cols[0]), np.nan, np.float32)
    padded = np.pad(bands, ((0, 0), (tile, tile), (tile, tile)), constant_values=np.nan)
    for ky in range(rows[0] // tile, (rows[1] - 1) // tile + 1):
        for kx in range(cols[0] // tile, (cols[1] - 1) // tile + 1):
            r, c = ky * tile - m - origin[0] + tile, kx * tile - m - origin[1] + tile
            x, valid = normalise(padded[:, r : r + tile + halo, c : c + tile + halo], scalings)
            if not valid.any():
                continue
            with torch.inference_mode():
                p = torch.sigmoid(model(torch.from_numpy(x[None])).float())[0, 0].numpy()
            p = np.where(valid, p, np.nan)[m : m + tile, m : m + tile]  # the window's own cell
            y0, x0 = ky * tile, kx * tile
            ys = slice(max(y0, rows[0]), min(y0 + tile, rows[1]))
            xs = slice(max(x0, cols[0]), min(x0 + tile, cols[1]))
            out[ys.start - rows[0] : ys.stop - rows[0], xs.start - cols[0] : xs.stop - cols[0]] = p[
                ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0
            ]
    return out


@pytest.mark.parametrize("batch_size", [1, 3])
def test_engine_equals_a_plain_loop_over_windows(spec, batch_size):
    """Reader, prep, device and writer threads give exactly the windows' centre cells (unaligned region, NaN
    corner, all-NaN windows skipped, any batch size)."""
    from rtsflow.model.engine import InferenceEngine
    from rtsflow.model.inference import _array_fetch, _model
    from rtsflow.model.normalise import BandScaling

    feats = _features(n=420)
    bands = np.stack([feats[b].values for b in BANDS])
    bands[:, 250:, :] = np.nan  # whole windows without data (the last row of cells)
    origin = (1000, 2000)  # global index of the array's first pixel
    rows, cols = (1000 + 37, 1000 + 37 + 301), (2000 + 5, 2000 + 5 + 390)
    model, record = _model(spec, "cpu")
    engine = InferenceEngine(model, scalings=[BandScaling(**s) for s in record["normalisation"]], tile=128, halo=32,
                             device="cpu", batch_size=batch_size, prefetch=1)  # fmt: skip
    got = engine.run(_array_fetch(bands, row=origin[0], col=origin[1]), rows=rows, cols=cols)
    want = _plain_loop(bands, spec=spec, tile=128, halo=32, origin=origin, rows=rows, cols=cols)
    assert np.isfinite(want).sum() > 50_000 and np.isnan(want).sum() > 10_000
    np.testing.assert_array_equal(got, want)
    assert engine.stats["skipped"] >= 3


def test_engine_raises_a_failed_read_and_runs_again(spec):
    from rtsflow.model.engine import InferenceEngine
    from rtsflow.model.inference import _array_fetch, _model
    from rtsflow.model.normalise import BandScaling

    bands = np.stack([_features(n=384)[b].values for b in BANDS])
    model, record = _model(spec, "cpu")
    engine = InferenceEngine(model, scalings=[BandScaling(**s) for s in record["normalisation"]], tile=128, halo=32,
                             device="cpu", batch_size=2)  # fmt: skip
    fetch = _array_fetch(bands, row=0, col=0)
    calls = []

    def broken(*window):
        calls.append(window)
        if len(calls) == 3:
            raise OSError("store unreadable at strip 3")
        return fetch(*window)

    with pytest.raises(OSError, match="strip 3"):
        engine.run(broken, rows=(0, 384), cols=(0, 384))
    again = engine.run(fetch, rows=(0, 384), cols=(0, 384))
    whole = predict(_features(n=384), spec=spec, bands=BANDS, halo=32, tile=128, tta=False)  # as the engine: one view
    whole = whole.compute(scheduler="sync").values
    np.testing.assert_array_equal(again, whole)


def test_block_window_prediction_equals_whole_map(spec):
    """predict_window (one run block) gives exactly the same pixels as the whole-array map."""
    from rtsflow.model.inference import predict_window

    feats = _features(chunk=384)
    whole = predict(feats, spec=spec, bands=BANDS, halo=32, tile=128).compute(scheduler="sync").values
    for rows, cols in [(slice(0, 128), slice(128, 256)), (slice(128, 384), slice(256, 384))]:
        part = predict_window(feats, rows=rows, cols=cols, spec=spec, bands=BANDS, halo=32, tile=128)
        np.testing.assert_array_equal(part.compute(scheduler="sync").values, whole[rows, cols])


def test_test_time_augmentation_sees_the_ground_the_same_whichever_way_it_is_turned(spec, tmp_path):
    """``tta``: the mean over the eight flips and quarter turns of a window is equivariant (turn the input, the
    probability turns with it), which the plain model is not; the map keeps its NaN, its range and its
    independence from chunking, and the lazy map, one window and the block-wise stage path agree."""
    from rtsflow.model.engine import dihedral_mean
    from rtsflow.model.inference import _model, predict_window

    model, _ = _model(spec, "cpu")
    x = torch.from_numpy(np.stack([_features(n=160)[b].values for b in BANDS])[None]).nan_to_num()
    with torch.inference_mode():

        def forward(t):
            return torch.sigmoid(model(t))

        for turn in (lambda t: torch.rot90(t, 1, dims=(2, 3)), lambda t: torch.flip(t, dims=(3,))):
            tta = dihedral_mean(forward, x)
            np.testing.assert_allclose(dihedral_mean(forward, turn(x)), turn(tta), atol=1e-6)
            assert (forward(turn(x)) - turn(forward(x))).abs().max() > 1e-3  # the plain model is not
    maps = [predict(_features(n=256, chunk=c), spec=spec, bands=BANDS, halo=32, tile=128, tta=True)
            .compute(scheduler="sync").values for c in (96, 256)]  # fmt: skip
    np.testing.assert_array_equal(maps[0], maps[1])
    plain = predict(_features(n=256, chunk=256), spec=spec, bands=BANDS, halo=32, tile=128, tta=False)
    assert "8 flips" not in plain.attrs["description"]
    plain = plain.compute(scheduler="sync").values
    np.testing.assert_array_equal(np.isnan(maps[0]), np.isnan(plain))
    inside = maps[0][np.isfinite(maps[0])]
    assert ((inside >= 0) & (inside <= 1)).all() and np.abs(inside - plain[np.isfinite(plain)]).max() > 1e-3
    # On by default, in the lazy API as in a run.
    part = predict_window(_features(n=256, chunk=256), rows=slice(128, 256), cols=slice(0, 128), spec=spec,
                          bands=BANDS, halo=32, tile=128)  # fmt: skip
    np.testing.assert_array_equal(part.compute(scheduler="sync").values, maps[1][128:256, 0:128])
    assert "8 flips and quarter turns" in part.attrs["description"]
    # On by default in a run too; a run's config can switch it off (the stage passes it to the same engine as
    # the lazy map).
    from rtsflow.config import ConfigError, parse_config

    (tmp_path / "cube.zarr").mkdir()
    doc = {"name": "t", "cube": "cube.zarr", "pairs": [[2010, 2016]]}
    assert parse_config({**doc, "inference": {"tta": False}}, base=tmp_path).inference.tta is False
    assert parse_config(doc, base=tmp_path).inference.tta is True
    with pytest.raises(ConfigError, match=r"inference\.tta: expected bool, got 'yes'"):
        parse_config({**doc, "inference": {"tta": "yes"}}, base=tmp_path)


def test_halo_and_tile_are_checked():
    from rtsflow.model.inference import lattice

    assert lattice(tile=512, halo=64) == (512, 32)
    with pytest.raises(ValueError, match="even"):
        lattice(tile=512, halo=63)
    with pytest.raises(ValueError, match="multiple of 32"):
        lattice(tile=512, halo=16)


@pytest.mark.slow
def test_blocks_of_1024_and_4096_give_the_same_map(spec):
    """The issue's sizes: one 4096² block vs sixteen 1024² blocks agree everywhere (here: exactly)."""

    def feats(chunk):
        f = _features(n=4096, chunk=chunk)
        # Data only in two bands, each across the whole map and across a 1024-px block edge, so they meet
        # every block edge; two lattice cells wide (all-NaN windows are skipped: a fast test).
        yy, xx = np.mgrid[:4096, :4096]
        keep = ((yy >= 1000) & (yy < 1050)) | ((xx >= 2030) & (xx < 2070))
        return f.where(xr.DataArray(keep, dims=("y", "x")))

    maps = [
        predict(feats(c), spec=spec, bands=BANDS, halo=32, tile=128, batch_size=16).compute(scheduler="threads").values
        for c in (1024, 4096)
    ]
    assert np.isfinite(maps[0][1000:1050, :]).all() and np.isfinite(maps[0][:, 2030:2070]).all()
    np.testing.assert_array_equal(maps[0], maps[1])


def test_read_stack_equals_stacked_reads_inside_across_and_outside_the_domain(tmp_path):
    """The engine's strips (`GridStore.read_stack`) equal the per-band reads stacked, to the bit."""
    from rtsflow.grid import Grid, Window
    from rtsflow.io.blocks import GridStore, write_block
    from rtsflow.stages.stores import GridVariable, create_grid_store

    grid = Grid(resolution=10.0, tile_size=32, block_tiles=2)
    window = Window(640, 1280, 128, 192)  # 2 × 3 blocks of 64 px
    path = tmp_path / "f.zarr"
    create_grid_store(path, grid=grid, window=window, attrs={"title": "t"},
                      variables={b: GridVariable("float32", {"long_name": b}) for b in BANDS})  # fmt: skip
    rng = np.random.default_rng(1)
    data = {b: rng.normal(0, 3, window.shape).astype("float32") for b in BANDS}
    data["ddem"][5:40, 7:70] = np.nan
    from rtsflow.io.blocks import writing_into
    from rtsflow.io.repo import commit_forks, open_repo

    fork = open_repo(path).writable_session("main").fork()  # as the stage runner gives a block task
    with writing_into(path, fork):
        write_block(path, {b: (("y", "x"), v) for b, v in data.items()},
                    region={"y": slice(0, 128), "x": slice(0, 192)})  # fmt: skip
    commit_forks(path, [fork], message="test block")
    domain = Window(640, 1280, 128, 128)  # the run's blocks: the last block column is outside
    store = GridStore(path, grid=grid, domain=domain)
    for part in (Window(650, 1290, 50, 60), Window(600, 1250, 200, 250), Window(700, 1420, 20, 30),
                 Window(0, 0, 10, 10)):  # fmt: skip
        got = store.read_stack(BANDS, part)
        expected = np.stack([store.read(b, part) for b in BANDS])
        assert got.dtype == np.float32 and got.shape == (len(BANDS), *part.shape)
        np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))
    inside = store.read_stack(BANDS, Window(650, 1290, 50, 60))
    np.testing.assert_array_equal(inside[1], data["ddem"][10:60, 10:70])
