"""Where a stage's work runs, and the one loop that runs it: :class:`Executor`.

A stage splits its work into tasks (one per store shard, pool partition or
group of clusters) and hands them to :meth:`Executor.map`. The executor runs
them in this process or as Dask tasks, and in both cases

- reports progress: a row count per task feeds a :class:`~thresher.jobs.progress.RowProgress`
  (a tqdm bar when asked, and ``progress`` events in the current event log);
- accounts for retries: each task is recorded in the stage's
  :class:`~thresher.jobs.cluster.TaskRetries` (``job`` in its manifest), which
  counts the tasks re-run after a worker died;
- releases each task's result as soon as it is read, so a worker lost later
  does not make Dask run a finished task again;
- sends shared inputs (a selector, centroids, a pool) to the workers once;
- runs each Dask task with FAISS and BLAS on its worker's share of cores
  (:mod:`thresher.threads`), never on a thread count the worker inherited.

Where the work runs is chosen once, from the same settings as the spec's
``cluster`` section and the CLI's options (:meth:`Executor.from_settings`):
in this process (``local``), on a given :class:`distributed.Client`, on an
existing scheduler, on SLURM through dask-jobqueue, or (the default) on an
in-process :class:`distributed.LocalCluster` started for the work and closed
after it. Stages take ``executor=`` instead of those settings (the split of
steps and executors follows datatrove's pipeline executors).
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from thresher.exceptions import ParameterError
from thresher.jobs.cluster import TaskRetries, dask_client, threads_per_task
from thresher.jobs.progress import RowProgress, report_futures
from thresher.jobs.worker_loss import is_killed_worker, memory_limits, worker_lost_error
from thresher.threads import run_with_threads

#: The stage keywords an executor replaces (deprecated on stage functions).
CLUSTER_KEYWORDS = ("scheduler", "workers", "slurm", "client", "local", "progress")


class Executor:
    """Runs a stage's tasks: in this process, or on Dask (a client, a scheduler, SLURM, or a local cluster).

    Build one with :meth:`in_process`, :meth:`on_client` or :meth:`from_settings`;
    an executor that must start a cluster does so when entered (``with executor:``,
    or :meth:`started`) and closes it on exit. Entering a started executor
    (one on a given client, or one already entered) neither starts nor closes anything,
    so a runner can start one cluster and pass the executor to every stage.

    Parameters
    ----------
    client : distributed.Client, optional
        Run the tasks on this client (not closed by the executor).
    local : bool
        Run the tasks one after another in this process, without Dask.
    scheduler : str, optional
        Address of an existing scheduler (``THRESHER_SCHEDULER`` when unset).
    workers : int, optional
        Local worker processes (default: one per 4 cores) or, with ``slurm``, SLURM jobs.
    slurm : path or dict, optional
        :class:`dask_jobqueue.SLURMCluster` arguments.
    progress : bool
        Show progress bars and the Dask dashboard's address.
    """

    def __init__(self, *, client: Any = None, local: bool = False, scheduler: str | None = None, workers: int | None = None,
                 slurm: str | Path | dict[str, Any] | None = None, progress: bool = True):
        if local and (client is not None or scheduler or slurm):
            raise ParameterError("An executor runs either in this process ('local') or on Dask ('client', 'scheduler', 'slurm'), not both.")
        self.local = bool(local)
        self.client = client
        self.scheduler, self.workers, self.slurm = scheduler, workers, slurm
        self.progress = progress
        self._owns_client = False
        self._context: Any = None

    # ---------------------------------------------------------------------------------------- construction

    @classmethod
    def in_process(cls, *, progress: bool = True) -> Executor:
        """Tasks run one after another in this process (notebooks, debugging, small inputs)."""
        return cls(local=True, progress=progress)

    @classmethod
    def on_client(cls, client: Any, *, progress: bool = True) -> Executor:
        """Tasks run on an existing :class:`distributed.Client` (left open)."""
        return cls(client=client, progress=progress)

    @classmethod
    def from_settings(cls, *, scheduler: str | None = None, workers: int | None = None, slurm: Any = None, client: Any = None,
                      local: bool = False, progress: bool = True) -> Executor:
        """The executor the cluster settings name (spec ``cluster`` section, CLI options, the old stage keywords)."""
        return cls(client=client, local=local, scheduler=scheduler, workers=workers, slurm=slurm, progress=progress)

    @property
    def runs_here(self) -> bool:
        """True when the model and the tasks run in this process (``local``, or a local cluster not yet started)."""
        return self.local or ((self.client is None or self._owns_client) and not self.scheduler and not self.slurm)

    @property
    def dask(self) -> Any | None:
        """The Dask client the tasks run on (None: in this process). Only meaningful once started."""
        return None if self.local else self.client

    @contextmanager
    def started(self) -> Iterator[Executor]:
        """This executor with its cluster connected: started (and closed after) if it was not already."""
        if self.local or self.client is not None:
            yield self
            return
        with dask_client(self.scheduler, workers=self.workers, slurm=self.slurm, quiet=not self.progress) as client:
            self.client, self._owns_client = client, True
            try:
                yield self
            finally:
                self.client, self._owns_client = None, False

    def __enter__(self) -> Executor:
        self._context = self.started()
        return self._context.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        context, self._context = self._context, None
        return context.__exit__(*exc)

    def __repr__(self) -> str:
        where = "in process" if self.local else ("client" if self.client is not None else
                                                 f"scheduler {self.scheduler}" if self.scheduler else "slurm" if self.slurm else "local cluster")
        return f"Executor({where})"

    # ---------------------------------------------------------------------------------------- running tasks

    def new_job(self) -> TaskRetries:
        """A fresh record of a stage's tasks and their re-runs (the ``job`` entry of its manifest)."""
        return TaskRetries(self.dask)

    def map(self, fn: Callable[..., Any], items: Sequence[tuple[Any, ...]], *, shared: Mapping[str, Any] | None = None,
            rows: Sequence[int] | None = None, description: str | None = None, bar: RowProgress | None = None,
            job: TaskRetries | None = None, retries: int = 2, resources: Mapping[str, float] | None = None,
            keys: Sequence[str] | None = None) -> list[Any]:
        """``[fn(*item, **shared) for item in items]``, each call a task; results in ``items`` order.

        Parameters
        ----------
        shared : mapping, optional
            Keyword arguments every task takes, sent to the workers once.
        rows : sequence of int, optional
            Rows each task covers, for progress: advanced on ``bar``, or on a
            bar-less :class:`RowProgress` named ``description`` (events only).
        job : TaskRetries, optional
            Where the tasks are recorded (their re-runs after lost workers are counted).
        retries : int
            Times Dask re-runs a task that raised.
        resources : mapping, optional
            Dask worker resources each task needs (``{"GPU": 1}``).
        keys : sequence of str, optional
            Dask keys of the tasks (default: fresh unique keys).
        """
        items = [tuple(item) for item in items]
        shared = dict(shared or {})
        progress = bar if bar is not None else _silent_progress(rows, description)
        sizes = list(rows) if rows is not None else [0] * len(items)
        if self.dask is None:
            out = []
            for item, size in zip(items, sizes):
                out.append(fn(*item, **shared))
                if progress is not None:
                    progress.advance(size)
            return out
        futures = self._submit(fn, items, shared, retries=retries, resources=resources, keys=keys, job=job)
        return self._collect(futures, sizes, progress, task=description or _name(fn))

    def map_reduce(self, fn: Callable[..., Any], items: Sequence[tuple[Any, ...]], merge: Callable[[Any, Any], Any], *,
                   shared: Mapping[str, Any] | None = None, rows: Sequence[int] | None = None, description: str | None = None,
                   job: TaskRetries | None = None, retries: int = 2) -> Any:
        """:meth:`map` then a pairwise tree of ``merge(a, b)`` tasks, so the driver only ever receives the final result.

        ``merge`` must be associative (partial top-k heaps and counts are); the
        result is the same in this process and on any number of workers.
        """
        items = [tuple(item) for item in items]
        if self.dask is None:
            parts = self.map(fn, items, shared=shared, rows=rows, description=description)
            result = parts[0]
            for part in parts[1:]:
                result = merge(result, part)
            return result
        client = self.dask
        futures = self._submit(fn, items, dict(shared or {}), retries=retries, job=job)
        if rows is not None and description is not None:  # from Dask's callbacks: the merges below are submitted without waiting
            report_futures(futures, rows, description=description)
        while len(futures) > 1:
            paired = [client.submit(merge, a, b, retries=retries, pure=False) for a, b in zip(futures[0::2], futures[1::2])]
            if job is not None:
                job.track(paired)
            if len(futures) % 2:
                paired.append(futures[-1])
            futures = paired
        return self._collect(futures, [0], None, task=description or _name(fn))[0]

    def map_fn(self, job: TaskRetries | None = None) -> Callable[[Callable[[Any], Any], Any], Any]:
        """A ``map``-like function (``map_fn(fn, items)``) for stores that parallelise per-partition work without knowing Dask."""
        if self.dask is None:
            return map

        def run(fn: Callable[[Any], Any], items: Any) -> list[Any]:
            return self.map(fn, [(item,) for item in items], job=job)

        return run

    def _submit(self, fn: Callable[..., Any], items: list[tuple[Any, ...]], shared: dict[str, Any], *, retries: int,
                resources: Mapping[str, float] | None = None, keys: Sequence[str] | None = None, job: TaskRetries | None) -> list[Any]:
        client = self.dask
        # a fresh key for each scatter (hash=False): releasing an earlier scatter of equal content would take this one's data with it
        shared_f = {k: v if _is_scalar(v) else client.scatter(v, broadcast=True, hash=False) for k, v in shared.items()}
        items = [self._scatter_arrays(item) for item in items]
        keys = list(keys) if keys is not None else [f"{getattr(fn, '__name__', 'task')}-{uuid.uuid4().hex}" for _ in items]
        threads = threads_per_task(client)
        futures = [client.submit(run_with_threads, fn, *item, key=key, retries=retries, pure=False, resources=dict(resources) if resources else None,
                                 _thresher_threads=threads, **shared_f)
                   for item, key in zip(items, keys)]
        if job is not None:
            job.track(futures)
        return futures

    def _scatter_arrays(self, item: tuple[Any, ...]) -> tuple[Any, ...]:
        """Arrays travel as data the task fetches, not inside the task graph."""
        return tuple(self.dask.scatter(a, hash=False) if _array_bytes(a) > 1 << 16 else a for a in item)

    def _collect(self, futures: list[Any], sizes: list[int], progress: RowProgress | None, *, task: str) -> list[Any]:
        from distributed import as_completed

        position = {future: i for i, future in enumerate(futures)}
        out: list[Any] = [None] * len(futures)
        limits = memory_limits(self.dask)  # now: a worker killed later may not be back when the error is written
        try:
            for future in as_completed(list(futures)):
                i = position.pop(future)
                out[i] = future.result()
                future.release()  # released once read, so a worker lost later does not run this task again
                if progress is not None:
                    progress.advance(sizes[i])
        except BaseException as exc:
            self.dask.cancel(list(position))
            if is_killed_worker(exc):
                from thresher.jobs.events import running_step

                raise worker_lost_error(exc, limits, step=running_step(), task=task) from exc
            raise
        return out


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__name__", "task").lstrip("_")


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _array_bytes(value: Any) -> int:
    """Bytes of the numpy arrays in ``value`` (an array, or a tuple or list holding some)."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, (tuple, list)):
        return sum(_array_bytes(v) for v in value)
    return 0


def _silent_progress(rows: Sequence[int] | None, description: str | None) -> RowProgress | None:
    if rows is None or description is None:
        return None
    return RowProgress(int(sum(rows)), description=description, enabled=False)


def stage_executor(executor: Executor | None, caller: str, **legacy: Any) -> Executor:
    """The executor a stage runs on: ``executor``, or one built from the deprecated cluster keywords, or a local cluster.

    ``legacy`` holds the old keywords (``scheduler, workers, slurm, client, local, progress``)
    as the caller received them, None when not given; any given one warns, naming ``executor=``.
    """
    given = {k: v for k, v in legacy.items() if v is not None}
    if given:
        if executor is not None:
            raise ParameterError(f"{caller} takes 'executor' or the cluster keywords ({', '.join(given)}), not both.")
        names = ", ".join(f"{k}=" for k in given)
        warnings.warn(f"{caller}({names}) is deprecated; pass executor=thresher.jobs.executor.Executor.from_settings({names}) "
                      "(or Executor.in_process() / Executor.on_client(client)).", DeprecationWarning, stacklevel=3)
        given["local"] = bool(given.get("local", False))
        return Executor.from_settings(**given)
    return executor if executor is not None else Executor()


def job_executor(executor: Executor | None, job: TaskRetries | None, *, client: Any = None, retried: TaskRetries | None = None,
                 caller: str) -> tuple[Executor, TaskRetries | None]:
    """The executor and task record of a job function; ``client=`` and ``retried=`` are their deprecated spellings."""
    if client is None and retried is None:
        return (executor if executor is not None else Executor.in_process(progress=False)), job
    if executor is not None or job is not None:
        raise ParameterError(f"{caller} takes 'executor' and 'job', or the deprecated 'client' and 'retried', not both.")
    warnings.warn(f"{caller}(client=, retried=) is deprecated; pass executor=Executor.on_client(client) and job=executor.new_job().",
                  DeprecationWarning, stacklevel=3)
    return (Executor.on_client(client) if client is not None else Executor.in_process(progress=False)), retried
