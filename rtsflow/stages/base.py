"""A stage: one function of one output block, run for many blocks as one submission.

A :class:`Stage` names what it makes (``name``, ``key`` = the epoch or pair),
the store it writes, a template that creates that store (metadata only), a
per-block function and the blocks to run it on. The function reads its block
(plus a halo) from the previous stages' stores, computes with NumPy kernels
and writes its block; it returns a small dict (``n_valid`` and any extras), or
``{"status": "skipped", "reason": ...}`` when there is nothing to do.

:func:`run_stage` handles, once for every stage: creating the store, skipping
blocks already done (resume), blocks whose inputs are not done (``blocked``),
one submission per stage with unique task keys (``<stage>-<key>-<block>-<id>``,
so nothing is shared between submissions and the dashboard groups tasks by
stage), GPU routing by resources, failure isolation (a failing block is
recorded with its error; the others go on), per-block timings, the worker a
block ran on, and progress.

Stage stores are Icechunk repositories. Each block task writes into its own
fork of the store's session; finished blocks are committed in batches (every
:data:`COMMIT_BLOCKS` blocks or :data:`COMMIT_SECONDS` seconds, and at the
end), and a block is recorded ``done`` only once its commit is made. A reader
therefore sees whole blocks only, and a run killed at any point loses at most
the blocks since its last commit: the status table has them as not done, and
the next run computes them again.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BlockJob", "Stage", "StageOutcome", "block_name", "neighbourhood", "run_stage"]

#: A stage commits its finished blocks after this many blocks or seconds (whichever comes first) and at its end.
COMMIT_BLOCKS = 64
COMMIT_SECONDS = 30.0


def block_name(block: tuple[int, int]) -> str:
    """The status-table name of a global grid block: ``"row_col"``."""
    return f"{block[0]}_{block[1]}"


def neighbourhood(block: tuple[int, int], radius: int) -> list[tuple[int, int]]:
    """The blocks within ``radius`` blocks of ``block`` (itself included), row-major."""
    r, c = block
    return [(r + i, c + j) for i in range(-radius, radius + 1) for j in range(-radius, radius + 1)]


@dataclass(frozen=True)
class BlockJob:
    """One output block of a stage and what only this block needs (e.g. its observations)."""

    block: tuple[int, int]
    args: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Upstream:
    """A stage whose blocks within ``radius`` of an output block must be done before the block runs."""

    stage: str
    key: str
    radius: int = 0


@dataclass
class Stage:
    """One stage of a pipeline (see the module docstring).

    Parameters
    ----------
    name, key
        What the stage makes (``"composite"``, ``"features"``, …) and for which
        epoch or pair (``"2010"``, ``"2010_2016"``).
    function
        ``function(block, **params, **job.args) -> dict``: a module-level function
        (it travels to workers by reference).
    params
        Arguments shared by every block (paths, configurations: keep them small).
    jobs
        The blocks to compute.
    output
        The store the stage writes (``None`` for stages that only return results).
    create
        Creates the output store's metadata if it does not exist yet.
    resources
        Dask worker resources every task needs, e.g. ``{"GPU": 1}``.
    upstream
        Stages this one reads: a block runs only when their blocks around it are done.
    skip
        Blocks known to need no work, with the reason (recorded as ``skipped``, never submitted).
    resume
        Skip blocks the status table has as done (stages whose results live in a
        store); ``False`` for stages whose results are only returned.
    """

    name: str
    key: str
    function: Callable[..., dict]
    params: dict[str, Any]
    jobs: list[BlockJob]
    output: Path | None = None
    create: Callable[[], None] | None = None
    resources: dict[str, float] | None = None
    upstream: list[Upstream] = field(default_factory=list)
    skip: dict[tuple[int, int], str] = field(default_factory=dict)
    resume: bool = True

    @property
    def title(self) -> str:
        return f"{self.name} {self.key}"


@dataclass
class StageOutcome:
    """What one :func:`run_stage` call did."""

    stage: str
    key: str
    computed: int = 0
    already_done: int = 0
    skipped: int = 0
    blocked: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    results: dict[str, dict] = field(default_factory=dict)  # block name -> the function's result
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return not self.failed and not self.blocked


def _run_block(job: BlockJob, fork=None, *, function: Callable[..., dict], params: dict,
               output: str | None = None) -> dict:  # fmt: skip
    """The task: run a stage's function on one block, with its wall time and the worker it ran on.

    With a ``fork`` (a session of the versioned ``output`` store), the block's writes go into it and it
    is returned under ``"_fork"`` for the runner to commit.
    """
    from contextlib import nullcontext

    from rtsflow.io.blocks import writing_into

    t0 = time.perf_counter()
    with writing_into(output, fork) if fork is not None else nullcontext():
        out = dict(function(job.block, **params, **job.args) or {})
    if fork is not None:
        out["_fork"] = fork
    out["seconds"] = time.perf_counter() - t0
    try:
        from distributed import get_worker

        out["worker"] = get_worker().name
    except ValueError:  # run outside a worker (tests, sync scheduler)
        out["worker"] = ""
    return out


def _failure(client, err: BaseException) -> str:
    """The status table's text for a failed block; a worker that died on it says so, and why if it was memory."""
    from distributed import KilledWorker

    if not isinstance(err, KilledWorker):
        return f"{type(err).__name__}: {err}"
    worker = getattr(err.last_worker, "address", str(err.last_worker))
    limit = getattr(err.last_worker, "memory_limit", 0) or 0
    try:
        events = [e for _, e in client.get_events("worker-restart-memory") if e.get("worker") == worker]
    except Exception:  # the scheduler may be gone at shutdown; the plain message still holds
        events = []
    if events:
        rss = events[-1].get("rss", 0)
        return (f"killed: worker {worker} ran out of memory on this block (RSS {rss / 2**30:.2f} GiB of "
                f"{limit / 2**30:.2f} GiB allowed; raise workers.memory_limit or run fewer workers)")  # fmt: skip
    return (f"killed: worker {worker} died while running this block ({err.allowed_failures + 1} tries); "
            f"see the worker's log")  # fmt: skip


class _CommitBatch:
    """Finished blocks of a stage waiting for their commit (versioned output), then recorded as done."""

    def __init__(self, stage: Stage, run, out: StageOutcome) -> None:
        from rtsflow.io.repo import is_repo, open_repo

        self.stage, self.run, self.out = stage, run, out
        self.versioned = stage.output is not None and is_repo(stage.output)
        self.session = open_repo(stage.output).writable_session("main") if self.versioned else None
        self.pending: list[tuple[str, dict]] = []
        self.since = time.perf_counter()

    def forks(self, n: int) -> list:
        return [self.session.fork() for _ in range(n)] if self.versioned else [None] * n

    def add(self, name: str, res: dict) -> None:
        self.pending.append((name, res))

    def flush(self, *, force: bool) -> None:
        due = len(self.pending) >= COMMIT_BLOCKS or time.perf_counter() - self.since >= COMMIT_SECONDS
        if not self.pending or not (force or due):
            return
        from rtsflow.io.repo import commit_forks

        forks = [res.pop("_fork") for _, res in self.pending if "_fork" in res]
        stage, error = self.stage, ""
        if forks:
            names = [n for n, _ in self.pending]
            try:
                commit_forks(stage.output, forks, message=f"{stage.title}: {len(names)} block(s)",
                             metadata={"blocks": names[:1000]})  # fmt: skip
            except Exception as e:  # a full disk, a store gone: these blocks are not done
                error = f"commit of the block's store failed: {type(e).__name__}: {e}"
        for name, res in self.pending:
            skipped = res.get("status") == "skipped"
            if error:
                self.run.record(stage=stage.name, key=stage.key, block=name, status="failed", seconds=res["seconds"],
                                error=error)  # fmt: skip
                self.out.failed.append(f"{stage.title} block {name}: {error}")
                continue
            self.run.record(stage=stage.name, key=stage.key, block=name, status="skipped" if skipped else "done",
                            seconds=res["seconds"], error=res.get("reason", ""), n_valid=res.get("n_valid"),
                            worker=str(res.get("worker", "")))  # fmt: skip
            self.out.results[name] = res
            if skipped:
                self.out.skipped += 1
            else:
                self.out.computed += 1
        self.pending, self.since = [], time.perf_counter()


def _blocked_by(stage: Stage, job: BlockJob, done: dict[tuple[str, str], set[str]],
                known: dict[tuple[str, str], set[str]]) -> str | None:  # fmt: skip
    """The first upstream block this job waits for (not done), or ``None`` if it can run."""
    for up in stage.upstream:
        ok, exists = done[(up.stage, up.key)], known[(up.stage, up.key)]
        for nb in neighbourhood(job.block, up.radius):
            name = block_name(nb)
            if name in exists and name not in ok:
                return f"waits for {up.stage} {up.key} block {name}"
    return None


def run_stage(client, run, stage: Stage, *, progress: bool = False, block_set: Iterable[str] | None = None,
              upstream_blocks: Mapping[tuple[str, str], Iterable[str]] | None = None) -> StageOutcome:  # fmt: skip
    """Run (or resume) a stage on a distributed client, recording every block in the run's status table.

    Parameters
    ----------
    client
        A ``distributed.Client``.
    run
        The :class:`rtsflow.runs.RunDirectory`.
    stage
        What to run.
    progress
        Show a progress bar (plain lines when not on a terminal).
    upstream_blocks
        ``{(stage, key): block names}`` each upstream stage was asked to compute
        (blocks outside it do not exist and are not waited for); default: the
        blocks of its rows in the status table.
    """
    from distributed import as_completed

    from rtsflow.progress import progress_bar

    t0 = time.perf_counter()
    out = StageOutcome(stage=stage.name, key=stage.key)
    if stage.create is not None:
        stage.create()
    status = run.status()
    done_here = run.done(stage.name, stage.key) if stage.resume else {}
    for block, reason in sorted(stage.skip.items()):
        if block_name(block) not in done_here:
            run.record(stage=stage.name, key=stage.key, block=block_name(block), status="skipped", seconds=0.0,
                       error=reason)  # fmt: skip
            out.skipped += 1
    done: dict[tuple[str, str], set[str]] = {}
    known: dict[tuple[str, str], set[str]] = {}
    for up in stage.upstream:
        rows = status[(status.stage == up.stage) & (status.key == up.key)]
        done[(up.stage, up.key)] = set(rows.block[rows.status.isin(["done", "skipped"])])
        given = (upstream_blocks or {}).get((up.stage, up.key))
        known[(up.stage, up.key)] = set(given) if given is not None else set(rows.block)
    todo = []
    for job in stage.jobs:
        name = block_name(job.block)
        if name in done_here:
            out.already_done += 1
            continue
        why = _blocked_by(stage, job, done, known)
        if why is not None:
            run.record(stage=stage.name, key=stage.key, block=name, status="blocked", seconds=0.0, error=why)
            out.blocked.append(f"{stage.title} block {name}: {why}")
            continue
        todo.append(job)
    if todo:
        token = uuid.uuid4().hex[:8]
        keys = [f"{stage.name}-{stage.key}-{block_name(j.block)}-{token}" for j in todo]
        batch = _CommitBatch(stage, run, out)
        forks = batch.forks(len(todo))
        futures = client.map(_run_block, todo, forks, key=keys, function=stage.function, params=stage.params,
                             output=str(stage.output) if stage.output else None, resources=stage.resources,
                             pure=False)  # fmt: skip
        by_future = dict(zip(futures, todo, strict=True))
        submitted = time.perf_counter()
        with progress_bar(total=len(futures), desc=stage.title, unit="block", enabled=progress) as bar:
            for fut in as_completed(futures):
                bar.update()
                job = by_future[fut]
                name = block_name(job.block)
                if fut.status == "error":
                    msg = _failure(client, fut.exception())
                    run.record(stage=stage.name, key=stage.key, block=name, status="failed",
                               seconds=time.perf_counter() - submitted, error=msg)  # fmt: skip
                    out.failed.append(f"{stage.title} block {name}: {msg}")
                else:
                    batch.add(name, fut.result())
                fut.release()
                batch.flush(force=False)
        batch.flush(force=True)
    run.compact()
    out.seconds = time.perf_counter() - t0
    run.timing(stage.title, out.seconds)
    return out
