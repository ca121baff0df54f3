"""Dask clusters for rtsflow: the embedded local default, dask-jobqueue profiles (SLURM, PBS), or a scheduler address.

A jobqueue profile is a YAML file (templates in the repository's
``cluster/profiles/``) with a ``cpu`` and an optional ``gpu`` section of
``SLURMCluster``/``PBSCluster`` arguments. CPU jobs and GPU jobs share one
scheduler; GPU workers are started with ``--resources GPU=1`` so the
inference stage can be routed to them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import yaml
from distributed import Client, LocalCluster

__all__ = ["connect", "gpu_resources", "jobqueue_cluster", "load_profile", "local_cluster"]

PROFILE_DIRS = (Path.cwd() / "cluster" / "profiles", Path(__file__).resolve().parents[1] / "cluster" / "profiles")
JOBQUEUE_KINDS = ("slurm", "pbs")

log = logging.getLogger(__name__)


def worker_config(*, local_directory: str | Path | None = None, max_spill: str | None = None) -> dict:
    """Dask settings for workers: spill (and scratch) directory, and how much they may spill to disk.

    ``max_spill`` bounds the spill files of one worker (dask's
    ``distributed.worker.memory.max-spill``): beyond it the worker keeps data in
    memory and pauses rather than filling the disk.
    """
    cfg: dict = {}
    if local_directory is not None:
        Path(local_directory).mkdir(parents=True, exist_ok=True)
        cfg["temporary-directory"] = str(local_directory)
    if max_spill is not None:
        from dask.utils import parse_bytes

        cfg["distributed.worker.memory.max-spill"] = int(parse_bytes(max_spill))
    return cfg


def local_cluster(
    *,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    memory_fraction: float = 0.8,
    memory_limit: str | int | None = None,
    dashboard_address: str | None = ":0",
    local_directory: str | Path | None = None,
    max_spill: str | None = "4GiB",
) -> LocalCluster:
    """The embedded default: one worker process per core, memory split evenly.

    GDAL, NumPy and PyTorch hold the GIL only briefly, but processes keep
    rasterio handles, model caches and memory accounting per worker. Spill
    files go to ``local_directory`` (default: dask's ``temporary-directory``
    setting, else ``./dask-scratch``), at most ``max_spill`` per worker.
    """
    import dask

    n = n_workers or max(1, os.cpu_count() or 1)
    if memory_limit is None:
        memory_limit = int(psutil.virtual_memory().total * memory_fraction / n)
    if local_directory is None:
        local_directory = dask.config.get("temporary-directory", None) or Path.cwd() / "dask-scratch"
    with dask.config.set(worker_config(local_directory=local_directory, max_spill=max_spill)):
        return LocalCluster(
            n_workers=n,
            threads_per_worker=threads_per_worker,
            processes=True,
            memory_limit=memory_limit,
            dashboard_address=dashboard_address,
            host="127.0.0.1",
            silence_logs=logging.WARNING,
            local_directory=str(local_directory),
        )


@contextmanager
def connect(
    cluster: str = "local",
    *,
    n_workers: int | None = None,
    quiet: bool = False,
    local_directory: str | Path | None = None,
    max_spill: str | None = "4GiB",
    memory_limit: str | None = None,
) -> Iterator[Client]:
    """A client for ``"local"`` (start the embedded cluster), a jobqueue profile, or a scheduler address.

    ``cluster`` may be ``"local"``, a profile name (``"slurm"``, ``"pbs"``: looked up in
    ``cluster/profiles/``), a path to a profile YAML, or ``tcp://host:port``. Prints
    the dashboard link so a run can be watched. ``local_directory`` and
    ``max_spill`` set where and how much the workers of an embedded or jobqueue
    cluster may spill (a profile's own ``local_directory`` wins); an existing
    scheduler keeps its workers' settings.
    """
    if cluster.endswith((".yaml", ".yml")) or cluster in JOBQUEUE_KINDS:
        profile = load_profile(cluster)
        jq_cluster = jobqueue_cluster(profile, local_directory=local_directory, max_spill=max_spill)
        with jq_cluster as jq, Client(jq) as client:
            _wait_for_profile(client, profile)
            if not quiet:
                print(f"dask dashboard: {client.dashboard_link}", flush=True)
            yield client
    elif cluster == "local":
        fresh = local_directory is not None and not Path(local_directory).exists()
        try:
            with local_cluster(n_workers=n_workers, local_directory=local_directory, max_spill=max_spill,
                               memory_limit=memory_limit) as lc, Client(lc) as client:  # fmt: skip
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
        if section in doc and doc[section] is not None:
            jobs = doc[section].get("jobs", 1)
            if not isinstance(jobs, int) or jobs < 0:
                raise ValueError(f"{path}: {section}.jobs must be an integer >= 0, got {jobs!r}")
    doc["source"] = str(path)
    return doc


def jobqueue_cluster(profile: dict, *, local_directory: str | Path | None = None, max_spill: str | None = None):
    """Start a dask-jobqueue cluster from a profile: CPU jobs, plus GPU jobs on the same scheduler.

    Sections without their own ``local_directory`` spill to ``local_directory``;
    ``max_spill`` is exported to every job's workers.
    """
    import dask_jobqueue

    cls = {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster}[profile["kind"]]
    sched = dict(profile.get("scheduler") or {})
    sched.pop("wait_timeout", None)
    dashboard = sched.pop("dashboard_address", ":8787")
    interface = sched.pop("interface", None)
    cpu = _with_spill(profile["cpu"], local_directory, max_spill)
    cpu_jobs = cpu.pop("jobs", 1)
    cluster = cls(**cpu, interface=interface, scheduler_options={"dashboard_address": dashboard, **sched})
    cluster.scale(jobs=cpu_jobs)
    gpu = _with_spill(profile.get("gpu") or {}, local_directory, max_spill) if profile.get("gpu") else {}
    gpu_jobs = gpu.pop("jobs", 0) if gpu else 0
    if gpu_jobs:
        # Heterogeneous jobs on one scheduler: extra worker specs with the GPU job's options.
        options = {**cluster._job_kwargs, **gpu}
        for k in range(gpu_jobs):
            spec = {"cls": cluster.job_cls, "options": options}
            if options.get("processes", 1) > 1:
                spec["group"] = [f"-{i}" for i in range(options["processes"])]
            cluster.worker_spec[f"gpu-{k}"] = spec
        cluster.sync(cluster._correct_state)
    log.info("jobqueue cluster from %s:\n%s", profile.get("source"), cluster.job_script())
    return cluster


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


def _with_spill(section: dict, local_directory, max_spill) -> dict:
    out = {k: v for k, v in section.items() if v is not None}
    if "local_directory" not in out and local_directory is not None:
        Path(local_directory).mkdir(parents=True, exist_ok=True)
        out["local_directory"] = str(local_directory)
    if max_spill is not None:
        from dask.utils import parse_bytes

        env = f"export DASK_DISTRIBUTED__WORKER__MEMORY__MAX_SPILL={int(parse_bytes(max_spill))}"
        out["job_script_prologue"] = [*out.get("job_script_prologue", []), env]
    return out


def _wait_for_profile(client: Client, profile: dict) -> None:
    timeout = (profile.get("scheduler") or {}).get("wait_timeout", 600)
    cpu = profile["cpu"]
    n_cpu = cpu.get("jobs", 1) * cpu.get("processes", 1)
    gpu = profile.get("gpu") or {}
    n_gpu = gpu.get("jobs", 0) * gpu.get("processes", 1)
    client.wait_for_workers(n_cpu + n_gpu, timeout=timeout)


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
