"""Inference-pipeline throughput against raw model forward passes, and the halo overhead.

The same model (paper default: UNet++ ResNet18, 4 bands, 512² tiles, untrained
weights — speed does not depend on them), the same tiles and the same batch
size in the same process:

- baseline: the (tile + halo)² windows that the pipeline runs (valid ones
  only), pre-normalised and stacked in memory, pushed through ``model(x)`` in
  batches;
- rtsflow: ``predict`` over a feature dataset (dask array, grid blocks of
  ``--block`` px), computed with the single-process scheduler so both use the
  same torch threads; it reads, normalises, batches, runs, crops and assembles.

Ratio = pipeline tiles/s ÷ raw tiles/s (target ≥ 0.85 on CPU). The halo
overhead is inferred pixels ÷ output pixels (tiles actually run × tile² over
valid output pixels).

Usage::

    python benchmarks/bench_inference.py [--size 2048] [--block 1024] [--tile 512] [--halo 64]
        [--batch 4] [--device cpu] [--precision fp32] [--architecture unetplusplus]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import dask.array as da
import numpy as np
import torch
import xarray as xr
from common import print_header

from rtsflow.grid import DEFAULT_GRID as GRID
from rtsflow.grid import GRID_ORIGIN
from rtsflow.model import inference
from rtsflow.model.checkpoint import save_checkpoint
from rtsflow.model.factory import build_model
from rtsflow.model.inference import lattice, predict, tile_stats
from rtsflow.model.normalise import DEFAULT_NORMALISATION, normalise

BANDS = [s.band for s in DEFAULT_NORMALISATION]


def features(size: int, block: int, origin: tuple[int, int]) -> xr.Dataset:
    rng = np.random.default_rng(0)
    arrs = {
        "ddem_norm": rng.normal(0, 2, (size, size)),
        "ddem": rng.normal(0, 3, (size, size)),
        "ddem_sigma": np.abs(rng.normal(1, 0.3, (size, size))),
        "slope": np.abs(rng.normal(5, 3, (size, size))),
    }
    x = GRID_ORIGIN[0] + (origin[1] + np.arange(size) + 0.5) * GRID.resolution
    y = GRID_ORIGIN[1] - (origin[0] + np.arange(size) + 0.5) * GRID.resolution
    return xr.Dataset(
        {k: (("y", "x"), da.from_array(v.astype("float32"), chunks=block)) for k, v in arrs.items()},
        coords={"x": x, "y": y},
    )


def raw_tiles(stack: np.ndarray, origin, tile: int, halo: int) -> list[np.ndarray]:
    """The pipeline's lattice windows over the array (normalised, valid ones only)."""
    step, margin = lattice(tile=tile, halo=halo)
    n, size = stack.shape[1], tile + halo
    pad = np.pad(stack, ((0, 0), (size, size), (size, size)), constant_values=np.nan)
    out = []
    starts = [range((o // step) * step - o, n, step) for o in origin]  # cell starts relative to the array
    for r in starts[0]:
        for c in starts[1]:
            win = pad[:, size + r - margin : size + r - margin + size, size + c - margin : size + c - margin + size]
            x, valid = normalise(win, DEFAULT_NORMALISATION)
            if valid.any():
                out.append(x)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--halo", type=int, default=64)
    ap.add_argument("--batch", type=int, nargs="+", default=[4])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--architecture", default="unetplusplus")
    args = ap.parse_args()
    print_header("inference")
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"{args.precision}, {args.architecture} resnet18, tile {args.tile}, halo {args.halo}")  # fmt: skip
    torch.manual_seed(0)
    model = build_model(architecture=args.architecture, encoder="resnet18", in_channels=4)
    with tempfile.TemporaryDirectory() as tmp:
        spec = save_checkpoint(model, f"{tmp}/ckpt", architecture=args.architecture, encoder="resnet18", bands=BANDS,
                               normalisation=list(DEFAULT_NORMALISATION), tile_size=args.tile)  # fmt: skip
        origin = (158 * GRID.block_size, 102 * GRID.block_size)  # block-aligned, like every rtsflow store
        feats = features(args.size, args.block, origin)
        stack = np.stack([feats[b].values for b in BANDS])
        tiles = raw_tiles(stack, origin, args.tile, args.halo)
        dev = args.device
        net, _ = inference._model(spec, dev)  # the same cached instance the pipeline uses
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.precision]
        km2 = args.size**2 * GRID.resolution**2 / 1e6
        print(f"# region {args.size}² px = {km2:.0f} km², blocks of {args.block}², {len(tiles)} lattice tiles")
        print(f"{'batch':>5} {'raw tiles/s':>12} {'pipeline tiles/s':>17} {'pipeline km²/s':>15} {'ratio':>6} "
              f"{'halo overhead':>14}")  # fmt: skip
        for batch in args.batch:
            # Warm up both paths once (allocator, kernels).
            with torch.inference_mode():
                net(torch.from_numpy(np.stack(tiles[:batch])).to(dev))
            t0 = time.perf_counter()
            with torch.inference_mode():
                for k in range(0, len(tiles), batch):
                    xb = torch.from_numpy(np.stack(tiles[k : k + batch])).to(dev)
                    if dev == "cuda":
                        xb = xb.to(memory_format=torch.channels_last)
                    with torch.autocast(device_type="cuda" if dev == "cuda" else "cpu", dtype=dtype,
                                        enabled=args.precision != "fp32"):  # fmt: skip
                        torch.sigmoid(net(xb).float()).cpu().numpy()
            raw = time.perf_counter() - t0
            before = tile_stats()["tiles"]
            prob = predict(feats, spec=spec, bands=BANDS, halo=args.halo, tile=args.tile, batch_size=batch,
                           device=dev, precision=args.precision, grid=GRID)  # fmt: skip
            t0 = time.perf_counter()
            p = prob.compute(scheduler="sync").values
            pipe = time.perf_counter() - t0
            ran = tile_stats()["tiles"] - before
            assert ran == len(tiles), (ran, len(tiles))
            overhead = ran * (args.tile + args.halo) ** 2 / np.isfinite(p).sum()
            print(f"{batch:>5} {len(tiles) / raw:>12.2f} {ran / pipe:>17.2f} {km2 / pipe:>15.2f} "
                  f"{(ran / pipe) / (len(tiles) / raw):>6.2f} {overhead:>14.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
