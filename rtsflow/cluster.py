"""Dask clusters for rtsflow: the embedded local default, or an existing scheduler."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import psutil
from distributed import Client, LocalCluster

__all__ = ["connect", "gpu_resources", "local_cluster"]

log = logging.getLogger(__name__)


def local_cluster(
    *,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    memory_fraction: float = 0.8,
    dashboard_address: str | None = ":0",
) -> LocalCluster:
    """The embedded default: one worker process per core, memory split evenly.

    GDAL, NumPy and PyTorch hold the GIL only briefly, but processes keep
    rasterio handles, model caches and memory accounting per worker.
    """
    n = n_workers or max(1, os.cpu_count() or 1)
    total = psutil.virtual_memory().total
    return LocalCluster(
        n_workers=n,
        threads_per_worker=threads_per_worker,
        processes=True,
        memory_limit=int(total * memory_fraction / n),
        dashboard_address=dashboard_address,
        host="127.0.0.1",
        silence_logs=logging.WARNING,
    )


@contextmanager
def connect(cluster: str = "local", *, n_workers: int | None = None, quiet: bool = False) -> Iterator[Client]:
    """A client for ``"local"`` (start the embedded cluster) or a scheduler address.

    Prints the dashboard link so a run can be watched.
    """
    if cluster == "local":
        with local_cluster(n_workers=n_workers) as lc, Client(lc) as client:
            if not quiet:
                print(f"dask dashboard: {client.dashboard_link}", flush=True)
            yield client
    elif "://" in cluster or ":" in cluster:
        with Client(cluster) as client:
            if not quiet:
                print(f"dask dashboard: {client.dashboard_link}", flush=True)
            yield client
    else:
        raise ValueError(f"--cluster: expected 'local' or a scheduler address (tcp://host:port), got {cluster!r}")


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
