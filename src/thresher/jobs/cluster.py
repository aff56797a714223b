"""Connecting to Dask: an in-process local cluster, an existing scheduler, or SLURM.

The same job code runs on all three; only the :class:`distributed.Client`
differs. The local cluster's shape is chosen from the cores available: torch
already spreads one model over several threads, and two worker processes
each running a 2-thread model were measured on a 2-core machine at 0.8–0.9×
the throughput of one process, so a local cluster gets one worker process
per 4 cores (at least one), each task running torch on its share of cores.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thresher.exceptions import ParameterError

log = logging.getLogger(__name__)

CORES_PER_LOCAL_WORKER = 4


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


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
        account, cores, memory, walltime, job_extra_directives, …).
    """
    from distributed import Client, LocalCluster

    from thresher.config import runtime_config

    scheduler = scheduler or runtime_config().scheduler
    if scheduler and slurm:
        raise ParameterError("Give either 'scheduler' or 'slurm', not both.")
    cluster = None
    if scheduler:
        client = Client(scheduler, timeout="30s")
    elif slurm is not None:
        cluster = make_slurm_cluster(slurm)
        cluster.scale(jobs=workers or 1)
        client = Client(cluster)
    else:
        shape = local_shape(workers)
        cluster = LocalCluster(
            n_workers=shape.n_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
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


def make_slurm_cluster(config: str | Path | dict[str, Any]) -> Any:
    """Build a :class:`dask_jobqueue.SLURMCluster` from a dict or a YAML file of its keyword arguments."""
    from dask_jobqueue import SLURMCluster

    if not isinstance(config, dict):
        import yaml

        path = Path(config)
        try:
            config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ParameterError(f"Cannot read the SLURM config {path}: {exc}") from exc
        if not isinstance(config, dict):
            raise ParameterError(f"The SLURM config {path} must be a mapping of SLURMCluster arguments.")
    try:
        return SLURMCluster(**config)
    except (TypeError, ValueError) as exc:
        raise ParameterError(f"Bad SLURM config: {exc}") from exc


def cores_per_worker(client: Any) -> dict[str, int]:
    """For each worker address, the cores its tasks may use: the host's cores shared among its workers."""
    info = client.scheduler_info(n_workers=-1)["workers"]
    per_host: dict[str, list[str]] = {}
    for address, worker in info.items():
        per_host.setdefault(worker.get("host", address), []).append(address)
    host_cores = client.run(available_cores)
    out = {}
    for addresses in per_host.values():
        for a in addresses:
            out[a] = max(1, host_cores.get(a, 1) // len(addresses))
    return out


def dask_map(client: Any, *, retries: int = 2) -> Any:
    """A ``map``-like function that runs each call as a Dask task and returns results in input order.

    Stores take such a function to parallelise per-partition work without
    knowing about Dask.
    """

    def run(fn: Any, items: Any) -> list[Any]:
        futures = client.map(fn, list(items), retries=retries, pure=False)
        return client.gather(futures)

    return run


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
    (``local``: ``job(None)``), or on a cluster connected (and closed) for the call."""
    if local or client is not None:
        return job(client)
    with dask_client(scheduler, workers=workers, slurm=slurm, quiet=quiet) as dask:
        return job(dask)
