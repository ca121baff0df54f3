"""Dask clusters for rtsflow: the embedded local default, dask-jobqueue profiles (SLURM, PBS), or a scheduler address.

A jobqueue profile is a YAML file (templates in the repository's
``cluster/profiles/``) with a ``cpu`` and an optional ``gpu`` section of
``SLURMCluster``/``PBSCluster`` arguments plus how to scale (``jobs: N`` or
``adapt: {minimum, maximum}``). CPU jobs serve the DEM and reduction stages
from the first job that starts; GPU jobs form a cluster of their own (stages
exchange data through stores, not through the scheduler), requested when the
inference stage is reached (``when: inference``, the default, or ``when:
start``) and released after it. Only the public dask-jobqueue API is used.
"""

from __future__ import annotations

import glob
import logging
import os
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import yaml
from distributed import Client, LocalCluster

__all__ = ["connect", "gpu_resources", "gpu_workers", "jobqueue_cluster", "load_profile", "local_cluster"]

PROFILE_DIRS = (Path.cwd() / "cluster" / "profiles", Path(__file__).resolve().parents[1] / "cluster" / "profiles")
JOBQUEUE_KINDS = ("slurm", "pbs")

log = logging.getLogger(__name__)


def worker_config(
    *, local_directory: str | Path | None = None, max_spill: str | None = None, profile: bool = False
) -> dict:
    """Dask settings for workers: spill (and scratch) directory, how much they may spill, the profiler.

    ``max_spill`` bounds the spill files of one worker (dask's
    ``distributed.worker.memory.max-spill``): beyond it the worker keeps data in
    memory and pauses rather than filling the disk. ``profile``: dask's
    statistical profiler (the dashboard's Profile page). It is off by default:
    it keeps one profile per second for the last 1 000 s, which on block tasks
    with deep xDEM call stacks grew a worker by ~0.1 GiB (benchmarks/RESULTS.md,
    "Worker memory").
    """
    # One task per worker thread at a time (no task queued behind a running one): block tasks are long
    # and memory-heavy, and a worker killed for memory would take the blocks queued on it down too.
    cfg: dict = {"distributed.worker.profile.enabled": bool(profile), "distributed.scheduler.worker-saturation": 1.0}
    if local_directory is not None:
        Path(local_directory).mkdir(parents=True, exist_ok=True)
        cfg["temporary-directory"] = str(local_directory)
    if max_spill is not None:
        from dask.utils import parse_bytes

        cfg["distributed.worker.memory.max-spill"] = int(parse_bytes(max_spill))
    return cfg


class _SlowShutdown(logging.Filter):
    """Drops the nanny's "still alive after 4.0 seconds, killing" at cluster close: the worker is
    stopped either way, and a busy machine makes it common (nothing a user can act on)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Worker process still alive after")


@contextmanager
def _environ_kept():
    """Undo, in this process, what nannies set before spawning workers (``distributed.nanny.pre-spawn-environ``).

    They set ``OMP_NUM_THREADS=1`` & co. in the *parent's* ``os.environ`` (dask/distributed#6749); PyTorch,
    first used later in this process, then runs on one thread: training the default model after building
    its regions took 36 s an epoch instead of 21 s on 2 cores. The workers keep their settings.
    """
    import dask

    keys = list(dask.config.get("distributed.nanny.pre-spawn-environ", None) or {})
    saved = {k: os.environ.get(k) for k in keys}
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def local_cluster(
    *,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    memory_fraction: float = 0.8,
    memory_limit: str | int | None = None,
    dashboard_address: str | None = ":0",
    local_directory: str | Path | None = None,
    max_spill: str | None = "4GiB",
    profile: bool = False,
    gpus: int | None = None,
):
    """The embedded default: one worker process per core, memory split evenly, plus one worker per GPU.

    GDAL, NumPy and PyTorch hold the GIL only briefly, but processes keep
    rasterio handles, model caches and memory accounting per worker. Spill
    files go to ``local_directory`` (default: dask's ``temporary-directory``
    setting, else ``./dask-scratch``), at most ``max_spill`` per worker;
    ``profile`` as in :func:`worker_config`. ``gpus`` (default: the CUDA
    devices this machine has): that many extra workers tagged ``GPU=1``, each
    seeing only its own device (``CUDA_VISIBLE_DEVICES``), so each loads the
    model once on its GPU; the CPU workers then take the remaining cores.
    """
    import dask

    gpus = _cuda_devices() if gpus is None else gpus
    n = n_workers or max(1, (os.cpu_count() or 1) - gpus)
    if memory_limit is None:
        memory_limit = int(psutil.virtual_memory().total * memory_fraction / (n + gpus))
    if local_directory is None:
        local_directory = dask.config.get("temporary-directory", None) or Path.cwd() / "dask-scratch"
    nanny_log = logging.getLogger("distributed.nanny")
    if not any(isinstance(f, _SlowShutdown) for f in nanny_log.filters):
        nanny_log.addFilter(_SlowShutdown())
    with dask.config.set(worker_config(local_directory=local_directory, max_spill=max_spill, profile=profile)), \
            _environ_kept():
        if not gpus:
            return LocalCluster(n_workers=n, threads_per_worker=threads_per_worker, processes=True,
                                memory_limit=memory_limit, dashboard_address=dashboard_address, host="127.0.0.1",
                                silence_logs=logging.WARNING, local_directory=str(local_directory))  # fmt: skip
        from distributed import Nanny, Scheduler, SpecCluster

        opts = {"nthreads": threads_per_worker, "memory_limit": memory_limit, "host": "127.0.0.1",
                "local_directory": str(local_directory), "silence_logs": logging.WARNING}  # fmt: skip
        workers = {str(i): {"cls": Nanny, "options": opts} for i in range(n)}
        for k in range(gpus):
            workers[f"gpu-{k}"] = {"cls": Nanny, "options": {**opts, "resources": {"GPU": 1},
                                                              "env": {"CUDA_VISIBLE_DEVICES": str(k)}}}  # fmt: skip
        scheduler = {"cls": Scheduler, "options": {"dashboard_address": dashboard_address, "host": "127.0.0.1"}}
        return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=logging.WARNING, name="rtsflow-local")


def _cuda_devices() -> int:
    """CUDA devices on this machine (0 without a GPU or without a CUDA build of torch)."""
    if not glob.glob("/dev/nvidia[0-9]*"):  # no driver device nodes: skip importing torch
        return 0
    try:
        import torch

        return int(torch.cuda.device_count())
    except Exception:  # a broken CUDA install means no GPU workers, not a failed run
        return 0


@contextmanager
def connect(
    cluster: str = "local",
    *,
    n_workers: int | None = None,
    quiet: bool = False,
    local_directory: str | Path | None = None,
    max_spill: str | None = "4GiB",
    memory_limit: str | None = None,
    profile: bool = False,
) -> Iterator[Client]:
    """A client for ``"local"`` (start the embedded cluster), a jobqueue profile, or a scheduler address.

    ``cluster`` may be ``"local"``, a profile name (``"slurm"``, ``"pbs"``: looked up in
    ``cluster/profiles/``), a path to a profile YAML, or ``tcp://host:port``. Prints
    the dashboard link so a run can be watched. ``local_directory`` and
    ``max_spill`` set where and how much the workers of an embedded or jobqueue
    cluster may spill (a profile's own ``local_directory`` wins), ``profile``
    turns their statistical profiler on; an existing scheduler keeps its
    workers' settings.
    """
    if cluster.endswith((".yaml", ".yml")) or cluster in JOBQUEUE_KINDS:
        profile = load_profile(cluster)
        spill = {"local_directory": local_directory, "max_spill": max_spill, "profiler": profile}
        cpu = jobqueue_cluster(profile, section="cpu", **spill)
        with cpu, Client(cpu) as client:
            _SESSIONS[client] = _Session(profile=profile, spill=spill)
            if not quiet:
                print(f"dask dashboard: {client.dashboard_link}", flush=True)
            try:
                if (profile.get("gpu") or {}).get("when") == "start":
                    _SESSIONS[client].open_gpu(quiet=quiet)
                yield client  # CPU jobs arrive as the queue starts them; work begins on the first one
            finally:
                _SESSIONS.pop(client).close_gpu()
    elif cluster == "local":
        fresh = local_directory is not None and not Path(local_directory).exists()
        try:
            with local_cluster(n_workers=n_workers, local_directory=local_directory, max_spill=max_spill,
                               memory_limit=memory_limit, profile=profile) as lc, Client(lc) as client:  # fmt: skip
                if not quiet:
                    print(f"dask dashboard: {client.dashboard_link}", flush=True)
                yield client
        finally:
            if fresh:
                _remove_empty(Path(local_directory))
    elif "://" in cluster or ":" in cluster:
        with Client(cluster) as client:
            if not quiet:
                print(f"dask dashboard: {client.dashboard_link}", flush=True)
            yield client
    else:
        raise ValueError(
            f"--cluster: expected 'local', a profile ({', '.join(JOBQUEUE_KINDS)} or a .yaml path) "
            f"or a scheduler address (tcp://host:port), got {cluster!r}"
        )


def load_profile(name_or_path: str | Path) -> dict:
    """Read and check a jobqueue profile (a name in ``cluster/profiles/`` or a YAML path)."""
    path = Path(name_or_path)
    if not path.suffix:
        found = [d / f"{name_or_path}.yaml" for d in PROFILE_DIRS if (d / f"{name_or_path}.yaml").exists()]
        if not found:
            raise ValueError(f"--cluster: no profile {name_or_path!r} in {', '.join(map(str, PROFILE_DIRS))}")
        path = found[0]
    if not path.exists():
        raise ValueError(f"--cluster: {path} does not exist")
    doc = yaml.safe_load(path.read_text()) or {}
    for key in doc:
        if key not in ("kind", "scheduler", "cpu", "gpu"):
            raise ValueError(f"{path}: unknown key {key!r} (expected kind, scheduler, cpu, gpu)")
    if doc.get("kind") not in JOBQUEUE_KINDS:
        raise ValueError(f"{path}: kind must be one of {JOBQUEUE_KINDS}, got {doc.get('kind')!r}")
    if not isinstance(doc.get("cpu"), dict):
        raise ValueError(f"{path}: missing the 'cpu' section (SLURMCluster/PBSCluster arguments)")
    for section in ("cpu", "gpu"):
        part = doc.get(section)
        if part is None:
            continue
        jobs = part.get("jobs", 1)
        if not isinstance(jobs, int) or jobs < 0:
            raise ValueError(f"{path}: {section}.jobs must be an integer >= 0, got {jobs!r}")
        if "adapt" in part:
            adapt = part["adapt"]
            if "jobs" in part:
                raise ValueError(f"{path}: {section}: give either jobs (fixed) or adapt (minimum/maximum), not both")
            if not isinstance(adapt, dict) or set(adapt) - {"minimum", "maximum"} or not all(
                isinstance(v, int) and v >= 0 for v in adapt.values()
            ) or adapt.get("minimum", 0) > adapt.get("maximum", 1):
                raise ValueError(f"{path}: {section}.adapt: expected {{minimum: M, maximum: N}} with 0 <= M <= N, "
                                 f"got {adapt!r}")  # fmt: skip
        if section == "gpu" and part.get("when", "inference") not in ("inference", "start"):
            raise ValueError(f"{path}: gpu.when: expected 'inference' or 'start', got {part['when']!r}")
    doc["source"] = str(path)
    return doc


#: Keys of a profile section that rtsflow reads (everything else goes to the jobqueue cluster class).
SECTION_KEYS = ("jobs", "adapt", "when")


def jobqueue_cluster(profile: dict, *, section: str = "cpu", local_directory: str | Path | None = None,
                     max_spill: str | None = None, profiler: bool = False):  # fmt: skip
    """A dask-jobqueue cluster for one section (``cpu`` or ``gpu``) of a profile, scaled as it says.

    ``jobs: N`` asks for N batch jobs; ``adapt: {minimum: 0, maximum: N}`` lets the
    cluster follow the work (idle jobs are released). Nothing waits for jobs to
    start: tasks queue on the scheduler until workers arrive. GPU workers are
    tagged ``--resources GPU=1`` (added to ``worker_extra_args`` when missing).
    Sections without their own ``local_directory`` spill to ``local_directory``;
    ``max_spill`` and ``profiler`` (:func:`worker_config`) are exported to every job's workers.
    """
    import dask_jobqueue

    cls = {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster}[profile["kind"]]
    sched = dict(profile.get("scheduler") or {})
    sched.pop("wait_timeout", None)  # accepted from older profiles; nothing waits any more
    dashboard = sched.pop("dashboard_address", ":8787")
    if section == "gpu" and dashboard not in (None, ":0"):
        dashboard = ":0"  # the GPU cluster has its own scheduler: any free port
    interface = sched.pop("interface", None)
    options = _with_spill(profile[section], local_directory, max_spill, profiler)
    scaling = {k: options.pop(k) for k in SECTION_KEYS if k in options}
    if section == "gpu":
        extra = list(options.get("worker_extra_args") or [])
        if "--resources" not in extra:
            options["worker_extra_args"] = [*extra, "--resources", "GPU=1"]
    cluster = cls(**options, name=f"rtsflow-{section}", interface=interface,
                  scheduler_options={"dashboard_address": dashboard, **sched})  # fmt: skip
    if "adapt" in scaling:
        adapt = scaling["adapt"] or {}
        cluster.adapt(minimum_jobs=int(adapt.get("minimum", 0)), maximum_jobs=int(adapt.get("maximum", 1)))
    else:
        cluster.scale(jobs=int(scaling.get("jobs", 1)))
    log.info("jobqueue %s cluster from %s:\n%s", section, profile.get("source"), cluster.job_script())
    return cluster


class _Session:
    """The GPU side of a jobqueue session: its own cluster, opened for inference and closed after."""

    def __init__(self, *, profile: dict, spill: dict) -> None:
        self.profile, self.spill = profile, spill
        self.cluster = None
        self.client: Client | None = None

    def open_gpu(self, *, quiet: bool = False) -> Client:
        if self.client is None:
            self.cluster = jobqueue_cluster(self.profile, section="gpu", **self.spill)
            self.client = Client(self.cluster)
            if not quiet:
                print(f"dask dashboard (GPU workers): {self.client.dashboard_link}", flush=True)
        return self.client

    def close_gpu(self) -> None:
        if self.client is not None:
            self.client.close()
            self.cluster.close()  # cancels the GPU jobs
            self.client = self.cluster = None


_SESSIONS: weakref.WeakKeyDictionary[Client, _Session] = weakref.WeakKeyDictionary()


@contextmanager
def gpu_workers(client: Client, *, needed: bool = True, say=print) -> Iterator[tuple[Client, dict | None]]:
    """``(client, resources)`` for the inference stage.

    On a jobqueue session whose profile has a ``gpu`` section, GPU jobs are
    requested here (unless ``when: start`` asked for them with the CPU jobs) and
    released when the block ends; the stage runs on their cluster. Otherwise the
    same client, with ``{"GPU": 1}`` when some of its workers are tagged GPU.
    """
    session = _SESSIONS.get(client)
    if session is None or not session.profile.get("gpu") or not needed:
        yield client, gpu_resources(client)
        return
    opened_here = session.client is None
    gpu = session.open_gpu()
    say("GPU jobs requested for inference (they are released after it)", flush=True)
    try:
        yield gpu, {"GPU": 1}
    finally:
        if opened_here:
            session.close_gpu()
            say("GPU jobs released", flush=True)


def _remove_empty(directory: Path) -> None:
    """Remove a scratch directory the workers left empty (they delete their own files on close)."""
    for d in sorted((p for p in directory.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        try:
            d.rmdir()
        except OSError:
            pass
    try:
        directory.rmdir()
    except OSError:
        pass


def _with_spill(section: dict, local_directory, max_spill, profiler: bool = False) -> dict:
    out = {k: v for k, v in section.items() if v is not None}
    if "local_directory" not in out and local_directory is not None:
        Path(local_directory).mkdir(parents=True, exist_ok=True)
        out["local_directory"] = str(local_directory)
    env = [f"export DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED={profiler}"]
    if max_spill is not None:
        from dask.utils import parse_bytes

        env.append(f"export DASK_DISTRIBUTED__WORKER__MEMORY__MAX_SPILL={int(parse_bytes(max_spill))}")
    out["job_script_prologue"] = [*out.get("job_script_prologue", []), *env]
    return out


def gpu_resources(client: Client | None = None) -> dict | None:
    """``{"GPU": 1}`` when some worker of the client's cluster is tagged ``GPU``, else ``None`` (run anywhere).

    Used to submit the inference stage so it runs only on GPU workers.
    """
    if client is None:
        from distributed import default_client

        try:
            client = default_client()
        except ValueError:
            return None
    workers = client.scheduler_info(n_workers=-1)["workers"]
    return {"GPU": 1} if any(w.get("resources", {}).get("GPU") for w in workers.values()) else None
