"""Inference feed rate: store reads, the engine with a trivial model, raw forward passes, the engine with the model.

One run, one process, the same windows (paper default: UNet++ ResNet18, 4
bands, 512-px cells from 576² windows; untrained weights — speed does not
depend on them) of a features Zarr store on the grid (tile chunks, block
shards, as the features stage writes it):

1. **read**: the lattice-aligned strips the engine reads, straight from the
   store (baseline of 2);
2. **feed**: :class:`rtsflow.model.engine.InferenceEngine` over the same
   region with a trivial model (first band × a weight): reading, normalisation
   into the batch buffers, transfer, crops — everything but the network;
3. **forward**: the model alone on pre-normalised windows in memory, batches
   of the same size (baseline of 4);
4. **pipeline**: the engine with the model.

Targets (CPU): feed ≥ 0.8 × read, pipeline ≥ 0.9 × forward. On a GPU the
device's utilisation is sampled (``nvidia-smi``, every 0.1 s) during 3 and 4.
The last lines turn the measured pipeline rate into time per pan-Arctic epoch
(0.8 M tiles) for 1, 4 and 16 devices like this one (linear: one worker per
device, each with its own reader).

The engine is measured as it runs in an rtsflow worker: the script restarts
itself with the environment Dask's nanny gives every worker process
(``distributed.nanny.pre-spawn-environ``: ``OMP_NUM_THREADS=1`` among others,
so torch runs one thread per worker; ``--no-worker-env`` keeps the shell's).

Usage::

    python benchmarks/bench_inference.py [--feed-tiles 64] [--model-tiles 8] [--batch 4] [--device auto]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from common import print_header

from rtsflow.grid import DEFAULT_GRID as GRID
from rtsflow.grid import Window
from rtsflow.io.blocks import GridStore, write_block
from rtsflow.model.engine import InferenceEngine, resolve_device, resolve_precision
from rtsflow.model.factory import build_model
from rtsflow.model.normalise import DEFAULT_NORMALISATION, normalise
from rtsflow.stages.stores import GridVariable, create_grid_store

BANDS = [s.band for s in DEFAULT_NORMALISATION]
PAN_ARCTIC_TILES = 800_000


def make_store(path: Path, window: Window) -> None:
    """A features store over ``window`` with random but plausible bands."""
    create_grid_store(path, grid=GRID, window=window,
                      variables={b: GridVariable("float32", {"long_name": b}) for b in BANDS},
                      attrs={"title": "bench_inference"})  # fmt: skip
    rng = np.random.default_rng(0)
    for by in range(window.row, window.row_stop, GRID.block_size):
        for bx in range(window.col, window.col_stop, GRID.block_size):
            blk = Window(by, bx, GRID.block_size, GRID.block_size)
            data = {
                "ddem_norm": rng.normal(0, 2, blk.shape),
                "ddem": rng.normal(0, 3, blk.shape),
                "ddem_sigma": np.abs(rng.normal(1, 0.3, blk.shape)),
                "slope": np.abs(rng.normal(5, 3, blk.shape)),
            }
            ys, xs = blk.relative_to(window)
            write_block(path, {k: (("y", "x"), v.astype("float32")) for k, v in data.items()},
                        region={"y": ys, "x": xs})  # fmt: skip


class Trivial(torch.nn.Module):
    """The cheapest "model": the first band times a weight (a 1×1 convolution cost ~20× more on CPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        return x[:, :1] * self.weight


class Utilisation:
    """GPU utilisation (%) sampled with nvidia-smi while the block runs."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and shutil.which("nvidia-smi") is not None
        self.samples: list[float] = []
        self._proc = None
        self._t = None

    def __enter__(self):
        if self.enabled:
            self._proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                           "-lms", "100"], stdout=subprocess.PIPE, text=True)  # fmt: skip
            self._t = threading.Thread(target=self._read, daemon=True)
            self._t.start()
        return self

    def _read(self):
        for line in self._proc.stdout:
            try:
                self.samples.append(float(line.split(",")[0]))
            except ValueError:
                pass

    def __exit__(self, *exc):
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait()

    def text(self) -> str:
        if not self.samples:
            return ""
        return f", GPU utilisation mean {np.mean(self.samples):.0f} % (median {np.median(self.samples):.0f} %)"


def read_strips(store: GridStore, *, rows, cols, step: int, margin: int) -> int:
    """What the engine's reader does: every lattice-aligned strip of the region once; returns windows covered."""
    x0, x1 = cols[0] - margin, cols[1] + margin
    k0, k1 = rows[0] // step, (rows[1] - 1) // step
    spans = [(k0 * step - margin, k0 * step)] if margin else []
    spans += [(k * step, (k + 1) * step) for k in range(k0, k1 + 1)]
    spans += [((k1 + 1) * step, (k1 + 1) * step + margin)] if margin else []
    for r0, r1 in spans:
        store.read_stack(BANDS, Window(r0, x0, r1 - r0, x1 - x0))
    return (k1 - k0 + 1) * ((cols[1] - cols[0]) // step)


def fetcher(store: GridStore):
    def fetch(r0, r1, c0, c1):
        return store.read_stack(BANDS, Window(r0, c0, r1 - r0, c1 - c0))

    return fetch


def _as_a_worker() -> None:
    """Re-run this script with the variables Dask's nanny sets for every worker process (once)."""
    import sys

    import dask
    import distributed  # noqa: F401 - loads distributed's config defaults

    env = {k: str(v) for k, v in dask.config.get("distributed.nanny.pre-spawn-environ").items()}
    if all(os.environ.get(k) == v for k, v in env.items()):
        return
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **env})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--feed-tiles", type=int, default=64, help="Windows for the read and feed rates (a 4096² block).")
    ap.add_argument("--model-tiles", type=int, default=8, help="Windows for the forward and pipeline rates.")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--halo", type=int, default=64)
    ap.add_argument("--batch", type=int, default=None, help="Windows per batch (default: the engine's choice).")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--architecture", default="unetplusplus")
    ap.add_argument("--repeat", type=int, default=2, help="Best of this many runs per rate.")
    ap.add_argument("--no-worker-env", action="store_true",
                    help="Keep this shell's environment instead of a Dask worker's (e.g. OMP_NUM_THREADS).")
    args = ap.parse_args()
    if not args.no_worker_env:
        _as_a_worker()
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    print_header("inference")
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else "none"
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, device {device} (GPU: {gpu}), "
          f"{precision}, {args.architecture} resnet18, {args.tile}-px cells, "
          f"{args.tile + args.halo}² windows")  # fmt: skip
    worker_env = ", ".join(f"{k}={os.environ.get(k)}" for k in ("OMP_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_"))
    print(f"# environment: {'shell (--no-worker-env)' if args.no_worker_env else 'a Dask worker'}: {worker_env}")
    step, margin = args.tile, args.halo // 2
    per_row = GRID.block_size // step
    feed_rows = max(1, args.feed_tiles // per_row)
    model_rows, model_cols = max(1, args.model_tiles // per_row), min(per_row, args.model_tiles)
    origin = (158 * GRID.block_size, 102 * GRID.block_size)  # a block of the grid, like every rtsflow store
    window = Window(*origin, GRID.block_size, GRID.block_size)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "features.zarr"
        make_store(path, window)
        store = GridStore(path, grid=GRID)
        feed = ((origin[0], origin[0] + feed_rows * step), (origin[1], origin[1] + GRID.block_size))
        part = ((origin[0], origin[0] + model_rows * step), (origin[1], origin[1] + model_cols * step))
        kw = dict(scalings=DEFAULT_NORMALISATION, tile=args.tile, halo=args.halo, device=device, precision=precision,
                  batch_size=args.batch)  # fmt: skip

        def best(fn):
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                n = fn()
                times.append(time.perf_counter() - t0)
            return n / min(times)

        # 1. raw reads
        read = best(lambda: read_strips(store, rows=feed[0], cols=feed[1], step=step, margin=margin))
        # 2. the engine with a trivial model
        trivial = InferenceEngine(Trivial(), **kw)
        trivial.run(fetcher(store), rows=(feed[0][0], feed[0][0] + step), cols=(feed[1][0], feed[1][0] + step))

        def run_feed():
            trivial.run(fetcher(store), rows=feed[0], cols=feed[1])
            return feed_rows * per_row

        feed_rate = best(run_feed)
        # 3. raw forward passes on windows in memory
        net = build_model(architecture=args.architecture, encoder="resnet18", in_channels=4)
        engine = InferenceEngine(net, **kw)
        batch = engine.batch_size
        fetch = fetcher(store)
        wins = []
        for k in range(model_rows):
            for j in range(model_cols):
                r, c = part[0][0] + k * step - margin, part[1][0] + j * step - margin
                x, _ = normalise(fetch(r, r + step + 2 * margin, c, c + step + 2 * margin), DEFAULT_NORMALISATION)
                wins.append(x)
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
        cuda = device.startswith("cuda")
        autocast = {"device_type": "cuda" if cuda else "cpu", "dtype": dtype, "enabled": precision != "fp32"}

        def forward():
            with torch.inference_mode():
                for k in range(0, len(wins), batch):
                    xb = torch.from_numpy(np.stack(wins[k : k + batch])).to(device)
                    if cuda:
                        xb = xb.contiguous(memory_format=torch.channels_last)
                    with torch.autocast(**autocast):
                        torch.sigmoid(engine.model(xb).float()).cpu()
            return len(wins)

        forward()  # warm up (allocator, kernels)
        with Utilisation(cuda) as u_fwd:
            raw = best(forward)
        # 4. the engine with the model
        with Utilisation(cuda) as u_pipe:
            pipe = best(lambda: (engine.run(fetch, rows=part[0], cols=part[1]), len(wins))[1])
    mb = 4 * len(BANDS) * (args.tile + args.halo) ** 2 / 1e6
    print(f"# features store: one 4096² block, tile chunks, block shards; {mb:.1f} MB of input per window; "
          f"batch {batch}")  # fmt: skip
    print(f"{'rate':<44} {'tiles/s':>9} {'ratio':>7}  target")
    print(f"{'1 read: store strips (baseline of 2)':<44} {read:>9.1f} {1.0:>7.2f}")
    print(f"{'2 feed: engine, trivial model':<44} {feed_rate:>9.1f} {feed_rate / read:>7.2f}  ≥ 0.80 × read")
    print(f"{'3 forward: model on windows in memory':<44} {raw:>9.2f} {1.0:>7.2f}{u_fwd.text()}")
    print(f"{'4 pipeline: engine, model':<44} {pipe:>9.2f} {pipe / raw:>7.2f}  ≥ 0.90 × forward{u_pipe.text()}")
    for n in (1, 4, 16):
        hours = PAN_ARCTIC_TILES / (pipe * n) / 3600
        print(f"pan-Arctic epoch ({PAN_ARCTIC_TILES:,} tiles) on {n:>2} × this {device}: {hours:,.1f} h")


if __name__ == "__main__":
    main()
