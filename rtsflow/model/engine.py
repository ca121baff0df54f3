"""Per-worker inference engine: reading, normalisation, transfer, model and crops overlap.

One engine per (model, device, precision) and process (:func:`engine_for`),
loaded once. :meth:`InferenceEngine.run` predicts the lattice windows over one
output region (a grid block, or a dask chunk of the lazy API):

- **reader** threads read the inputs as row strips aligned to the tile
  lattice, ``readers`` strips at a time and in order (each stored chunk
  decoded once; a window row is its cell row plus ``margin`` rows of the
  neighbouring strips);
- a **prep** thread normalises each window straight into a slot of a reusable
  batch buffer (pinned host memory on CUDA), no intermediate copy, and skips
  all-NaN windows;
- the calling thread copies full batches to the device (``non_blocking``),
  runs the model (bf16 autocast and channels_last by default on GPU) and
  starts the copy of the probabilities back;
- a **writer** thread waits for those copies and crops each window's centre
  cell into the output.

Queues between the stages are bounded (``prefetch`` batches), so memory stays
a few batches plus one strip of inputs. Batches are formed in row-major window
order exactly as before the engine existed, so fp32 CPU results are
bit-identical to it.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from rtsflow.model.normalise import BandScaling, normalise

__all__ = ["InferenceEngine", "auto_batch_size", "dihedral_mean", "engine_for", "resolve_device", "resolve_precision"]

#: ``fetch(row0, row1, col0, col1)`` → ``(band, row1 - row0, col1 - col0)`` float32 in global
#: pixel indices, NaN where there is no data.
Fetch = Callable[[int, int, int, int], np.ndarray]

_DONE = object()


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``.

    A worker that sees several GPUs (a batch job running one worker per GPU,
    ``dask worker --nworkers N`` names them ``<job>-0`` … ``<job>-<N-1>``) takes
    ``cuda:<its index>``, so each GPU serves one worker.
    """
    if device not in ("auto", "cuda"):
        return device
    import torch

    if not torch.cuda.is_available():
        return "cpu" if device == "auto" else device
    count = torch.cuda.device_count()
    return f"cuda:{_worker_index() % count}" if count > 1 else "cuda"


def _worker_index() -> int:
    """The trailing number of this dask worker's name (0 outside a worker)."""
    try:
        from distributed import get_worker

        name = str(get_worker().name)
    except (ImportError, ValueError):
        return 0
    tail = name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` → ``bf16`` on a GPU, ``fp32`` on the CPU (bf16 autocast is slow on most CPUs)."""
    if precision == "auto":
        return "bf16" if device.startswith("cuda") else "fp32"
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")
    return precision


def auto_batch_size(model, *, bands: int, size: int, device: str, precision: str, fraction: float = 0.5) -> int:
    """Windows per batch: 4 on the CPU; on a GPU as many as ``fraction`` of its free memory holds.

    The memory of one window is measured with a two-window forward pass.
    """
    if not device.startswith("cuda"):
        return 4
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    x = torch.zeros((2, bands, size, size), device=device).to(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast(device_type="cuda", dtype=dtype, enabled=precision != "fp32"):
        model(x)
    torch.cuda.synchronize(device)
    per_window = max(1, (torch.cuda.max_memory_allocated(device) - base) // 2)
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(1, min(256, fraction * free // per_window)))


@dataclass(frozen=True)
class _Window:
    """Where one window's centre cell goes: output ``[cy, cy + ly) × [cx, cx + lx)`` of the region,
    taken from window pixels starting at ``(oy, ox)``; ``wx`` is its first column in a strip."""

    cy: int
    ly: int
    oy: int
    cx: int
    lx: int
    ox: int
    wx: int


class InferenceEngine:
    """A model on a device with its batch buffers; see the module docstring.

    Parameters
    ----------
    model
        A torch module mapping ``(batch, band, size, size)`` to logits ``(batch, 1, size, size)``.
    scalings
        Per-band normalisation (the checkpoint record's).
    device, precision
        Where and how to run (``auto`` resolved by :func:`resolve_device` / :func:`resolve_precision`).
    batch_size
        Windows per batch; ``None``: :func:`auto_batch_size`.
    channels_last
        Memory format of the batches; ``None``: on GPUs only.
    compile
        Wrap the model in ``torch.compile``.
    tta
        Test-time augmentation: each window's probability is the mean over its eight flips
        and quarter turns (:func:`dihedral_mean`; eight times the model's work).
    prefetch
        Batches prepared ahead of the device.
    readers
        Strips read at the same time (store decoding releases the GIL).
    """

    def __init__(
        self,
        model,
        *,
        scalings: Sequence[BandScaling],
        tile: int,
        halo: int,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int | None = None,
        channels_last: bool | None = None,
        compile: bool = False,
        tta: bool = False,
        prefetch: int = 3,
        readers: int = 2,
    ) -> None:
        import torch

        from rtsflow.model.inference import lattice

        self.step, self.margin = lattice(tile=tile, halo=halo)
        self.size = self.step + 2 * self.margin
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.cuda = self.device.startswith("cuda")
        if self.cuda:
            torch.cuda.set_device(self.device)  # events and pinned copies on this worker's GPU
        self.channels_last = self.cuda if channels_last is None else channels_last
        self.scalings = list(scalings)
        self.model = model.to(self.device).eval()
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if compile:
            self.model = torch.compile(self.model)
        self.batch_size = batch_size or auto_batch_size(self.model, bands=len(self.scalings), size=self.size,
                                                        device=self.device, precision=self.precision)  # fmt: skip
        self.tta = tta
        self.prefetch = max(1, prefetch)
        self.readers = max(1, readers)
        self._reset_buffers()
        self._lock = threading.Lock()  # one region at a time per engine
        self.stats = {"tiles": 0, "skipped": 0, "batches": 0}

    # -- the lattice -------------------------------------------------------------------------
    def _cells(self, g0: int, n: int) -> list[tuple[int, int, int]]:
        """``(cell index, crop start relative to g0, crop length)`` of the lattice cells meeting ``[g0, g0 + n)``."""
        out = []
        for k in range(g0 // self.step, (g0 + n - 1) // self.step + 1):
            lo, hi = max(k * self.step, g0), min((k + 1) * self.step, g0 + n)
            out.append((k, lo - g0, hi - lo))
        return out

    # -- the pipeline ------------------------------------------------------------------------
    def run(self, fetch: Fetch, *, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        """Probability over global rows ``[r0, r1)`` × cols ``[c0, c1)`` (float32, NaN where no valid input)."""
        with self._lock:
            return self._run(fetch, rows=rows, cols=cols)

    def _run(self, fetch: Fetch, *, rows, cols) -> np.ndarray:
        r0, r1 = rows
        c0, c1 = cols
        out = np.full((r1 - r0, c1 - c0), np.nan, dtype=np.float32)
        if r1 <= r0 or c1 <= c0:
            return out
        ycells, xcells = self._cells(r0, r1 - r0), self._cells(c0, c1 - c0)
        m, s = self.margin, self.step
        x0 = xcells[0][0] * s - m  # first column of every strip
        x1 = (xcells[-1][0] + 1) * s + m
        # Window column k starts at k·s − m; the crop of its cell sits m + (crop − cell start) into it.
        columns = [(cx, lx, m + cx - (k * s - c0), k * s - m - x0) for k, cx, lx in xcells]
        strips: queue.Queue = queue.Queue(maxsize=2)
        batches: queue.Queue = queue.Queue(maxsize=self.prefetch)
        results: queue.Queue = queue.Queue(maxsize=self.prefetch)
        errors: list[BaseException] = []
        stop = threading.Event()

        def put(q: queue.Queue, item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def get(q: queue.Queue):
            while not stop.is_set():
                try:
                    return q.get(timeout=0.1)
                except queue.Empty:
                    continue
            return _DONE

        def take():
            while not stop.is_set():
                try:
                    return self._free.get(timeout=0.1)
                except queue.Empty:
                    continue
            return None

        def guarded(target):
            def body():
                try:
                    target()
                except BaseException as e:  # handed to the calling thread
                    errors.append(e)
                    stop.set()

            return threading.Thread(target=body, daemon=True)

        def reader():
            # Lattice-aligned strips, each read once (``readers`` of them at a time, in order); a window
            # row is the last m rows of the strip above, its cell row's strip and the first m rows of
            # the strip below.
            k0, k1 = ycells[0][0], ycells[-1][0]
            spans = [(k * s, (k + 1) * s) for k in range(k0, k1 + 1)]
            if m:
                spans = [(k0 * s - m, k0 * s), *spans, ((k1 + 1) * s, (k1 + 1) * s + m)]
            with ThreadPoolExecutor(self.readers, thread_name_prefix="rtsflow-read") as pool:
                pending = deque(pool.submit(fetch, a, b, x0, x1) for a, b in spans[: self.readers + 1])
                todo = iter(spans[self.readers + 1 :])

                def next_strip():
                    arr = pending.popleft().result()
                    span = next(todo, None)
                    if span is not None:
                        pending.append(pool.submit(fetch, *span, x0, x1))
                    return arr

                tail = next_strip() if m else None
                here = next_strip()
                for k, cy, ly in ycells:
                    nxt = next_strip() if (k < k1 or m) else None
                    pieces = (tail, here, nxt[:, :m]) if m else (here,)
                    if m:
                        tail = here[:, -m:]
                    if stop.is_set() or not put(strips, (cy, ly, m + cy - (k * s - r0), pieces)):
                        for f in pending:
                            f.cancel()
                        return
                    here = nxt
            put(strips, _DONE)

        def prep():
            buf, metas = take(), []
            if buf is None:
                return
            host = buf.numpy()
            while (item := get(strips)) is not _DONE:
                cy, ly, oy, pieces = item
                for cx, lx, ox, wx in columns:
                    # Each window normalised straight into its batch slot, piece by piece (normalisation
                    # is per pixel, so this equals normalising the whole window): no intermediate copy.
                    cols_, slot, row = slice(wx, wx + self.size), host[len(metas)], 0
                    valid = self._valid[len(metas)]
                    for piece in pieces:
                        h = piece.shape[1]
                        _, valid[row : row + h] = normalise(piece[:, :, cols_], self.scalings,
                                                            out=slot[:, row : row + h])  # fmt: skip
                        row += h
                    if not valid.any():
                        self.stats["skipped"] += 1  # all-NaN windows never reach the model
                        continue
                    metas.append((_Window(cy, ly, oy, cx, lx, ox, wx), valid.copy()))
                    if len(metas) == self.batch_size:
                        if not put(batches, (buf, metas)) or (buf := take()) is None:
                            return
                        metas, host = [], buf.numpy()
            if metas:
                put(batches, (buf, metas))
            else:
                self._free.put(buf)
            put(batches, _DONE)

        def writer():
            while (item := get(results)) is not _DONE:
                event, prob, buf, metas = item
                if event is not None:
                    event.synchronize()  # the copy back (and so the copy in) is done
                self._free.put(buf)
                for (w, valid), p in zip(metas, prob.numpy(), strict=True):
                    crop = (slice(w.oy, w.oy + w.ly), slice(w.ox, w.ox + w.lx))
                    np.copyto(out[w.cy : w.cy + w.ly, w.cx : w.cx + w.lx], p[crop], where=valid[crop])

        threads = [guarded(reader), guarded(prep), guarded(writer)]
        for t in threads:
            t.start()
        try:
            self._device_loop(batches, results, stop, put, get)
            put(results, _DONE)
        except BaseException as e:
            errors.append(e)
            stop.set()
        for t in threads:
            t.join()
        if errors:
            self._reset_buffers()
            raise errors[0]
        return out

    def _reset_buffers(self) -> None:
        """A fresh set of batch buffers (at start, and after a failure left some in a queue)."""
        import torch

        self._free = queue.Queue()
        shape = (self.batch_size, len(self.scalings), self.size, self.size)
        for _ in range(self.prefetch + 2):  # in preparation, queued, on the device
            self._free.put(torch.empty(shape, dtype=torch.float32, pin_memory=self.cuda))
        self._valid = np.empty((self.batch_size, self.size, self.size), dtype=bool)  # the prep thread's

    def _device_loop(self, batches: queue.Queue, results: queue.Queue, stop: threading.Event, put, get) -> None:
        import torch

        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[self.precision]
        autocast = "cuda" if self.cuda else "cpu"

        def forward(x):
            with torch.autocast(device_type=autocast, dtype=dtype, enabled=self.precision != "fp32"):
                logits = self.model(x)
            return torch.sigmoid(logits.float())

        with torch.inference_mode():
            while (item := get(batches)) is not _DONE:
                buf, metas = item
                n = len(metas)
                xb = buf[:n].to(self.device, non_blocking=True)
                if self.channels_last:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                prob = (dihedral_mean(forward, xb) if self.tta else forward(xb))[:, 0]
                event = None
                if self.cuda:
                    host = torch.empty(prob.shape, dtype=torch.float32, pin_memory=True)
                    host.copy_(prob, non_blocking=True)
                    event = torch.cuda.Event()
                    event.record()
                    prob = host
                self.stats["tiles"] += n
                self.stats["batches"] += 1
                if not put(results, (event, prob, buf, metas)):
                    return


def dihedral_mean(forward, x):
    """Test-time augmentation: the mean of ``forward`` over the eight flips and quarter turns of ``x``.

    ``x`` is a batch ``(n, band, h, w)`` of square windows; each output is turned back before
    averaging, so the result is the same whichever way the ground is turned or mirrored (training
    draws the same eight at random, ``rtsflow.model.samples.augment``).
    """
    import torch

    total = None
    for k in range(4):
        for flip in (False, True):
            t = torch.rot90(x, k, dims=(2, 3))
            y = forward(torch.flip(t, dims=(3,)) if flip else t)
            y = torch.rot90(torch.flip(y, dims=(3,)) if flip else y, -k, dims=(2, 3))
            total = y if total is None else total + y
    return total / 8.0


_ENGINES: dict[tuple, InferenceEngine] = {}
_ENGINES_LOCK = threading.Lock()


def engine_for(
    spec,
    *,
    tile: int,
    halo: int,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int | None = None,
    compile: bool = False,
    tta: bool = False,
) -> InferenceEngine:
    """The process's engine for a checkpoint (model loaded once per process and device, sha256 checked)."""
    from rtsflow.model.inference import _model

    device = resolve_device(device)
    key = (spec.path, spec.sha256, device, resolve_precision(precision, device), batch_size, compile, tile, halo, tta)
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            model, record = _model(spec, device)
            scalings = [BandScaling(**s) for s in record["normalisation"]]
            _ENGINES[key] = InferenceEngine(model, scalings=scalings, tile=tile, halo=halo, device=device,
                                            precision=precision, batch_size=batch_size, compile=compile,
                                            tta=tta)  # fmt: skip
            _ENGINES[key].pid = os.getpid()
        return _ENGINES[key]
