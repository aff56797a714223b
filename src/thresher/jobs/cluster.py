"""Connecting to Dask: an in-process local cluster, an existing scheduler, or SLURM.

The same job code runs on all three; only the :class:`distributed.Client`
differs. The local cluster's shape is chosen from the cores available: torch
already spreads one model over several threads, and two worker processes
each running a 2-thread model were measured on a 2-core machine at 0.8–0.9×
the throughput of one process, so a local cluster gets one worker process
per 4 cores (at least one), each task running torch on its share of cores.

Native thread counts follow :mod:`thresher.threads`: a local cluster never
writes ``OMP_NUM_THREADS=1`` into the driver's environment (Dask's nanny does
by default), and each task runs FAISS and BLAS on its worker's share of cores
(:func:`threads_per_task`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thresher.exceptions import EnvironmentProblemError, ParameterError
from thresher.threads import available_cores  # noqa: F401 (also this module's public name)

log = logging.getLogger(__name__)

CORES_PER_LOCAL_WORKER = 4


@dataclass(frozen=True)
class LocalShape:
    """How a local cluster is laid out: worker processes × cores each."""

    n_workers: int
    cores_per_worker: int


def local_shape(n_workers: int | None = None, cores: int | None = None) -> LocalShape:
    cores = cores or available_cores()
    if n_workers is None:
        n_workers = max(1, cores // CORES_PER_LOCAL_WORKER)
    if n_workers < 1:
        raise ParameterError(f"The 'workers' parameter must be an int >= 1; got {n_workers}.")
    return LocalShape(n_workers=n_workers, cores_per_worker=max(1, cores // n_workers))


@contextmanager
def dask_client(
    scheduler: str | None = None,
    *,
    workers: int | None = None,
    slurm: str | Path | dict[str, Any] | None = None,
    quiet: bool = False,
) -> Iterator[Any]:
    """A connected :class:`distributed.Client`, closed (with any cluster it started) on exit.

    Parameters
    ----------
    scheduler : str, optional
        Address of an existing scheduler (``tcp://host:8786``); the
        ``THRESHER_SCHEDULER`` environment variable is used when unset.
    workers : int, optional
        Local worker processes (default: one per 4 cores) or, with ``slurm``,
        SLURM jobs to start.
    slurm : path to a YAML file or dict, optional
        Keyword arguments of :class:`dask_jobqueue.SLURMCluster` (queue,
        account, cores, memory, walltime, job_extra_directives, …). The jobs
        are kept, replaced when lost, and cancelled on exit by
        :func:`thresher.jobs.slurm.slurm_client`.
    """
    import dask
    from distributed import Client, LocalCluster

    from thresher.config import runtime_config
    from thresher.threads import local_cluster_options

    config = runtime_config()
    source = "" if scheduler else " (from THRESHER_SCHEDULER)"
    scheduler = scheduler or config.scheduler
    if scheduler and slurm:
        raise ParameterError("Give either 'scheduler' or 'slurm', not both.")
    cluster = None
    if scheduler:
        client = connect_scheduler(scheduler, timeout=config.scheduler_timeout, source=source)
    elif slurm is not None:
        from thresher.jobs.slurm import slurm_client

        with slurm_client(slurm, jobs=workers) as client:  # submits the jobs, keeps them, cancels them on exit
            if not quiet:
                link = client.dashboard_link
                print(f"Dask dashboard: {link}" if link else "Dask dashboard: not available", flush=True)
            yield client
        return
    else:
        shape = local_shape(workers)
        spawn_config, worker_env = local_cluster_options(shape.cores_per_worker)
        with dask.config.set(spawn_config):  # the nannies read it when made, here: the driver's os.environ stays as it is
            cluster = LocalCluster(
                n_workers=shape.n_workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                silence_logs=logging.ERROR,
                env=worker_env,
            )
        client = Client(cluster)
    if not quiet:
        link = client.dashboard_link
        print(f"Dask dashboard: {link}" if link else "Dask dashboard: not available", flush=True)
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def connect_scheduler(address: str, *, timeout: float = 10.0, source: str = "") -> Any:
    """A :class:`distributed.Client` connected to the scheduler at ``address``, or one line saying why not.

    Raises :class:`~thresher.exceptions.EnvironmentProblemError` (exit 1) for a malformed address or
    one where no scheduler answers within ``timeout`` seconds (``THRESHER_SCHEDULER_TIMEOUT``).
    """
    from distributed import Client

    try:
        return Client(address, timeout=f"{timeout}s")
    except Exception as exc:  # malformed (ValueError), refused or timed out (OSError), unknown protocol (KeyError, ValueError)
        cause = " ".join(str(exc).split()) or type(exc).__name__
        waited = f" (waited {timeout:g} s; THRESHER_SCHEDULER_TIMEOUT sets it)" if isinstance(exc, OSError) else ""
        raise EnvironmentProblemError(f"cannot reach the Dask scheduler at {address}{source}: {cause}{waited}") from None


def read_slurm_config(config: str | Path | dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :class:`dask_jobqueue.SLURMCluster` in a dict or YAML file, checked.

    Refused in one line naming the file (and line, for a syntax error): unreadable, not YAML, a
    key repeated, not a mapping, an argument SLURMCluster does not take, or dask-jobqueue missing.
    """
    from thresher.yaml_files import load_yaml

    where = "The SLURM config" if isinstance(config, dict) else f"The SLURM config {config}"
    if not isinstance(config, dict):
        path = Path(config)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ParameterError(f"Cannot read the SLURM config {path}: {exc}") from None
        config, _ = load_yaml(text, path, what="the SLURM config is ")
        config = {} if config is None else config
        if not isinstance(config, dict):
            raise ParameterError(f"{where} must be a mapping of SLURMCluster arguments (queue: ..., cores: ...); got a {type(config).__name__}.")
    try:
        allowed = slurm_arguments()
    except ImportError:
        raise ParameterError(f"{where} needs dask-jobqueue, which is not installed: pip install dask-jobqueue") from None
    unknown = [str(k) for k in config if k not in allowed]
    if unknown:
        raise ParameterError(f"{where} names {', '.join(repr(k) for k in unknown)}, not an argument of dask_jobqueue.SLURMCluster "
                             f"(it takes: {', '.join(sorted(allowed))}).")
    return dict(config)


def slurm_arguments() -> set[str]:
    """The keyword arguments :class:`dask_jobqueue.SLURMCluster` accepts (its cluster's and its jobs')."""
    import inspect

    from dask_jobqueue.core import Job, JobQueueCluster
    from dask_jobqueue.slurm import SLURMJob

    names: set[str] = set()
    for fn in (JobQueueCluster.__init__, Job.__init__, SLURMJob.__init__):
        names.update(p.name for p in inspect.signature(fn).parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
    return names - {"self", "scheduler", "job_cls", "loop", "job_kwargs", "base_class_kwargs"}


def make_slurm_cluster(config: str | Path | dict[str, Any]) -> Any:
    """Build a :class:`dask_jobqueue.SLURMCluster` from a dict or a YAML file of its keyword arguments; submits nothing.

    Its dashboard takes a free port unless ``scheduler_options: {dashboard_address: ...}`` says
    (several users' schedulers share a login node; the address is printed). Its jobs start their workers
    with glibc's own allocator settings (:func:`thresher.threads.slurm_worker_prologue`). Its jobs record
    sbatch's refusals for :class:`thresher.jobs.slurm.SlurmJobKeeper`, which ``dask_client``
    uses to submit and keep them.
    """
    config = read_slurm_config(config)
    from dask_jobqueue import SLURMCluster

    from thresher.jobs.slurm import watched_job_class

    options = config.get("scheduler_options")
    if options is None or isinstance(options, Mapping):
        config["scheduler_options"] = {"dashboard_address": ":0", **(options or {})}
    from thresher.threads import slurm_worker_prologue

    prologue = config.get("job_script_prologue")
    if prologue is None or isinstance(prologue, (list, tuple)):
        config["job_script_prologue"] = [*slurm_worker_prologue(), *(prologue or [])]  # the user's lines last: they may override
    try:
        return SLURMCluster(job_cls=watched_job_class(), **config)
    except (TypeError, ValueError) as exc:
        raise ParameterError(f"Bad SLURM config: {' '.join(str(exc).split())}") from exc


def cores_per_worker(client: Any, *, per_task: bool = False) -> dict[str, int]:
    """For each worker address, the cores its tasks may use: the host's cores shared among its workers
    (``per_task``: then among the worker's task threads too)."""
    info = client.scheduler_info(n_workers=-1)["workers"]
    per_host: dict[str, list[str]] = {}
    for address, worker in info.items():
        per_host.setdefault(worker.get("host", address), []).append(address)
    host_cores = client.run(available_cores)
    out = {}
    for addresses in per_host.values():
        for a in addresses:
            out[a] = max(1, host_cores.get(a, 1) // len(addresses))
            if per_task:
                out[a] = max(1, out[a] // max(1, int(info[a].get("nthreads", 1))))
    return out


def threads_per_task(client: Any) -> dict[str, int]:
    """For each worker address, the native threads one of its tasks may use (:mod:`thresher.threads`'s policy)."""
    return cores_per_worker(client, per_task=True)


def dask_map(client: Any, *, retries: int = 2, retried: TaskRetries | None = None) -> Any:
    """A ``map``-like function that runs each call as a Dask task and returns results in input order.

    Stores take such a function to parallelise per-partition work without
    knowing about Dask. ``retried`` records the tasks, to count those re-run
    after a worker died. Kept for callers holding a client; stages use
    :meth:`thresher.jobs.executor.Executor.map_fn`.
    """
    from thresher.jobs.executor import Executor

    executor = Executor.on_client(client)
    return lambda fn, items: executor.map(fn, [(item,) for item in items], job=retried, retries=retries)


def run_on_cluster(
    job: Any,
    *,
    client: Any = None,
    local: bool = False,
    scheduler: str | None = None,
    workers: int | None = None,
    slurm: Any = None,
    quiet: bool = False,
) -> Any:
    """Call ``job(client)`` where the caller asked: on the given client, in this process
    (``local``: ``job(None)``), or on a cluster connected (and closed) for the call.

    Kept for callers of the client-based form; stages take a :class:`thresher.jobs.executor.Executor`.
    """
    from thresher.jobs.executor import Executor

    executor = Executor.from_settings(client=client, local=local, scheduler=scheduler, workers=workers, slurm=slurm, progress=not quiet)
    with executor.started():
        return job(executor.dask)


RETRY_FIELDS = ("tasks", "retried_tasks", "retries")


class TaskRetries(Mapping[str, int]):
    """How many of a job's Dask tasks had to run again because a worker died.

    A live mapping ``{"tasks": n, "retried_tasks": r, "retries": total}``:
    ``tasks`` counts the tasks passed to :meth:`track`, ``retried_tasks`` those
    the scheduler sent back to run again at least once, ``retries`` the number
    of such re-runs. Jobs store it in their manifests, so that an artefact
    made through worker failures says so.

    When a worker is lost, the scheduler re-runs elsewhere the tasks it had
    assigned to that worker and the finished results it held that are still
    wanted (the tasks Dask marks *suspicious*, giving up on one after
    ``distributed.scheduler.allowed-failures`` losses), and announces both
    lists of keys in one ``remove-worker`` event. A small scheduler plugin
    (:class:`thresher.jobs.task_losses.TaskLossLedger`), registered once per
    cluster, counts the keys of those events as they are logged; this object
    asks it for the counts and keeps those of its tracked keys when read.
    The scheduler's own event log is not read back instead: it keeps only the
    last 1,000 events of a topic (one is logged per result fetched) and drops
    a lost worker's topic an hour later, so a long job would forget its early
    losses; and a client subscribed to those events loses its connection in
    this Dask version as soon as data is broadcast (the ``replicate`` event
    holds objects that cannot be sent). Tasks that fail with an exception and
    are retried (``retries=``) are not counted: they failed by themselves.

    The plugin must be importable on the scheduler (it is for local and SLURM
    clusters, whose scheduler runs in this process). Where it is not, the
    counts read ``-1`` (unknown) rather than a reassuring 0. With
    ``client=None`` (a job run in this process) every count stays 0. Keys must
    be unique to a run (Dask's ``pure=False`` keys are).
    """

    def __init__(self, client: Any | None):
        self._client = client
        self._keys: set[Any] = set()
        self._lock = threading.Lock()
        self._ledger = _register_ledger(client) if client is not None else False

    def track(self, futures: Any) -> Any:
        """Record the keys of ``futures`` (one future or an iterable of them) as this job's tasks; returns ``futures``."""
        items = futures if isinstance(futures, Iterable) else [futures]
        with self._lock:
            self._keys.update(f.key for f in items)
        return futures

    def counts(self) -> dict[str, int]:
        with self._lock:
            keys = set(self._keys)
        if self._client is None:
            return {"tasks": len(keys), "retried_tasks": 0, "retries": 0}
        if not self._ledger:
            return {"tasks": len(keys), "retried_tasks": -1, "retries": -1}
        lost = self._client.sync(self._client.scheduler.thresher_task_losses)
        per_task = {k: n for k, n in ((tuple(k) if isinstance(k, list) else k, n) for k, n in lost) if k in keys}  # tuple keys arrive as lists
        return {"tasks": len(keys), "retried_tasks": len(per_task), "retries": sum(per_task.values())}

    def __getitem__(self, name: str) -> int:
        return self.counts()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(RETRY_FIELDS)

    def __len__(self) -> int:
        return len(RETRY_FIELDS)

    def __repr__(self) -> str:
        return f"TaskRetries({self.counts()})"


def _register_ledger(client: Any) -> bool:
    """Install the task-loss ledger on the client's scheduler (once); False where the scheduler cannot load it."""
    from thresher.jobs.task_losses import TaskLossLedger

    try:
        client.register_plugin(TaskLossLedger())
    except Exception as exc:  # any failure of the remote import or registration: counts become unknown, the job goes on
        log.warning("Cannot count task re-runs after lost workers on this scheduler (%s); manifests record -1.", exc)
        return False
    return True
