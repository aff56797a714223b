"""SLURM worker jobs through dask-jobqueue: submitted, watched, replaced when lost, refused when they cannot start.

:class:`dask_jobqueue.SLURMCluster` submits one ``sbatch`` job per worker
(``processes`` workers each) and cancels them when it closes, but it does not
look at them in between. Left alone, a job that ``sbatch`` refuses (a
partition that does not exist, more memory than any node has) only leaves a
traceback in a log callback, jobs that never leave the queue (more cores than a
node has: SLURM's reason ``PartitionConfig``) leave the tasks waiting for
ever, and a job that ends during a stage (``scancel``, its walltime,
preemption, a failed node) is not resubmitted. :func:`slurm_client` closes
those gaps with a :class:`SlurmJobKeeper`:

At the start
    thresher submits ``workers`` jobs and waits until the first worker
    connects (the others join as SLURM starts them). ``sbatch`` refusing a job
    is an error at once, with sbatch's message; jobs that all end before a
    worker connected are an error naming each job's state, exit code and log
    file; jobs still queued after the startup timeout
    (``THRESHER_SLURM_STARTUP_TIMEOUT``, default 600 s) are an error naming
    SLURM's reason for each (``squeue``'s ``%r``). Every job submitted is
    cancelled before the :class:`~thresher.exceptions.SlurmJobError` is raised.

During the work
    while fewer workers are connected than asked, the keeper asks ``squeue``
    for the jobs' states every ``THRESHER_SLURM_POLL_INTERVAL`` seconds
    (default 10; none while all are connected). A job that has ended is
    replaced by a new job under a new worker name. Meanwhile Dask runs the
    tasks the lost worker held again on the remaining workers, or on the
    replacement when none remain, so no row is lost or written twice, and the
    stage's manifest counts the re-runs (``job.retried_tasks``, see
    :class:`~thresher.jobs.cluster.TaskRetries`). Each job submitted, ended and
    replaced is an event of the current event log (``slurm_job_submitted``,
    ``slurm_job_ended``, ``slurm_job_replaced``), so a run's ``events.jsonl``
    lists its SLURM job ids. The work stops, its tasks cancelled and the
    stage failing with the reason, instead of waiting for ever, when
    :data:`MAX_FAILED_STARTS` jobs in a row end before their worker connects,
    when ``sbatch`` refuses a replacement, or when no worker has been connected
    for the startup timeout.

A replacement rather than only the remaining workers: with ``--workers 1``, or
once every job is lost, no worker remains and a stage would wait for ever; a
replacement also restores the throughput asked for. A replacement gets a new
name because SpecCluster closes, some seconds after a worker is lost
(``distributed.deploy.lost-worker-timeout``), whatever job still holds the lost
worker's name, which would be the replacement's if the name were reused.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thresher.exceptions import ParameterError, SlurmJobError

log = logging.getLogger(__name__)

#: SLURM job states in which a job may still start or run its worker; any other state, or a job squeue no longer knows, has ended.
LIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING"})

#: Jobs in a row that may end before their worker connects before the keeper stops the work (a job script that cannot start a worker).
MAX_FAILED_STARTS = 3

#: What SLURM's most common pending reasons mean, appended to a startup-timeout error.
PENDING_REASONS = {
    "PartitionConfig": "the job asks for more than the partition allows (cores, memory, walltime or nodes)",
    "BadConstraints": "no node can satisfy the job's request",
    "Resources": "waiting for free resources",
    "Priority": "other jobs are ahead in the queue",
    "ReqNodeNotAvail": "the nodes it needs are down, drained or reserved",
    "PartitionDown": "the partition is down",
    "PartitionInactive": "the partition is inactive",
    "PartitionTimeLimit": "the walltime exceeds the partition's limit",
    "PartitionNodeLimit": "the node count exceeds the partition's limit",
    "JobHeldUser": "held by its user (scontrol release)",
    "JobHeldAdmin": "held by an administrator",
    "BeginTime": "its start time is in the future",
    "Dependency": "waiting for another job",
    "AssocGrpCpuLimit": "the account's CPU limit is reached",
    "QOSMaxJobsPerUserLimit": "the QOS's jobs-per-user limit is reached",
}

SQUEUE_TIMEOUT_S = 30


def slurm_source(config: Any) -> str:
    """How errors name a SLURM config: its file, or "the SLURM config" for a dict."""
    return "the SLURM config" if isinstance(config, dict) else f"the SLURM config {config}"


@contextmanager
def slurm_client(config: str | Path | dict[str, Any], *, jobs: int | None = None) -> Iterator[Any]:
    """A :class:`distributed.Client` on ``jobs`` SLURM worker jobs kept by a :class:`SlurmJobKeeper`; everything closed on exit.

    Raises :class:`~thresher.exceptions.SlurmJobError` when the jobs cannot start
    (after cancelling them), and, when the keeper stopped the work, instead of the
    error the cancelled tasks raised.
    """
    from distributed import Client

    from thresher.jobs.cluster import make_slurm_cluster

    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise ParameterError(f"The 'workers' parameter (SLURM jobs) must be an int >= 1; got {jobs!r}.")
    cluster = make_slurm_cluster(config)
    client = keeper = None
    try:
        client = Client(cluster)
        keeper = SlurmJobKeeper(cluster, jobs or 1, source=slurm_source(config))
        keeper.start(client)
        try:
            yield client
        except BaseException as exc:
            if keeper.failure is not None:
                raise keeper.failure from exc
            raise
    finally:
        if keeper is not None:
            keeper.stop()
        if client is not None:
            client.close()
        cluster.close()  # scancel every job still known to the cluster


@dataclass
class WorkerJob:
    """One submitted worker job, as the keeper knows it."""

    name: str
    job_id: str | None
    worker_names: frozenset[str]
    log_file: str
    error: str | None = None  # sbatch's refusal: nothing was submitted
    connected: bool = False  # a worker of this job reached the scheduler at least once
    alive: bool = False  # a worker of this job is connected now
    state: str = "PENDING"
    reason: str = ""
    ended: bool = False
    handled: bool = False  # its end was reported (and the job replaced)

    def describe(self) -> str:
        if self.job_id is None:
            return f"worker {self.name}: not submitted ({self.error})"
        reason = f" ({self.reason}{': ' + PENDING_REASONS[self.reason] if self.reason in PENDING_REASONS else ''})" \
            if self.reason and self.reason != "None" else ""
        where = f"; log {self.log_file}" if self.ended else ""
        return f"job {self.job_id} {self.state}{reason}{where}"


class SlurmJobKeeper:
    """Keeps a :class:`dask_jobqueue.SLURMCluster` at ``jobs`` worker jobs, and says why when SLURM cannot (see the module docstring).

    Parameters
    ----------
    cluster : dask_jobqueue.SLURMCluster
        Built by :func:`thresher.jobs.cluster.make_slurm_cluster` (its jobs record sbatch's refusals).
    jobs : int
        Jobs to keep.
    source : str
        How errors name the config ("the SLURM config slurm.yaml").
    startup_timeout, poll_interval : float, optional
        Seconds; default ``THRESHER_SLURM_STARTUP_TIMEOUT`` (600) and ``THRESHER_SLURM_POLL_INTERVAL`` (10).
    """

    def __init__(self, cluster: Any, jobs: int, *, source: str = "the SLURM config", startup_timeout: float | None = None,
                 poll_interval: float | None = None):
        from thresher.config import runtime_config
        from thresher.jobs.events import bound_emitter

        config = runtime_config()
        self.cluster = cluster
        self.n_jobs = int(jobs)
        self.source = source
        self.startup_timeout = float(startup_timeout if startup_timeout is not None else config.slurm_startup_timeout)
        self.poll_interval = float(poll_interval if poll_interval is not None else config.slurm_poll_interval)
        self.jobs: dict[str, WorkerJob] = {}
        self.failure: SlurmJobError | None = None
        self._emit = bound_emitter()  # the event log current where the cluster is started; the watcher runs on its own thread
        self._client: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed_starts = 0
        self._last_worker = time.monotonic()

    # ------------------------------------------------------------------------------------------- lifecycle

    def start(self, client: Any) -> None:
        """Submit the jobs and return once a worker is connected; raise :class:`SlurmJobError` if none can be."""
        self._client = client
        self.cluster.scale(jobs=self.n_jobs)
        self._wait_for_first_worker()
        self._last_worker = time.monotonic()
        self._thread = threading.Thread(target=self._watch, name="thresher-slurm-jobs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (the jobs are left to the cluster's close, which cancels them)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=SQUEUE_TIMEOUT_S + 10)
            self._thread = None
        try:  # a job submitted since the last poll (a replacement) still gets its slurm_job_submitted event
            self._refresh(ask_squeue=False)
        except Exception:  # noqa: BLE001 (the cluster may already be gone: nothing more to record)
            pass

    # ------------------------------------------------------------------------------------------- startup

    def _wait_for_first_worker(self) -> None:
        started = time.monotonic()
        next_squeue = started + min(self.poll_interval, 2.0)  # SLURM needs a moment to schedule what was just submitted
        while True:
            now = time.monotonic()
            ask = now >= next_squeue
            self._refresh(ask_squeue=ask)
            if ask:
                next_squeue = now + self.poll_interval
            if any(j.alive for j in self.jobs.values()):
                return
            refused = [j for j in self.jobs.values() if j.error]
            if refused:
                raise SlurmJobError(f"sbatch refused the worker jobs of {self.source}: {refused[0].error}")
            if len(self.jobs) >= self.n_jobs and all(j.ended for j in self.jobs.values()):
                raise SlurmJobError(f"Every SLURM worker job of {self.source} ended before its Dask worker connected: "
                                    f"{self._describe()}. Its log says why; thresher.jobs.cluster.make_slurm_cluster(config)"
                                    ".job_script() shows the script the jobs ran.")
            if now - started > self.startup_timeout:
                self._refresh(ask_squeue=True)
                raise SlurmJobError(f"No SLURM worker job of {self.source} started within {self.startup_timeout:g} s "
                                    f"(THRESHER_SLURM_STARTUP_TIMEOUT sets it): {self._describe()}; the jobs were cancelled.")
            time.sleep(0.2)

    # ------------------------------------------------------------------------------------------- during the work

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                if self.failure is None:
                    self._check()
                else:
                    self._cancel_tasks()  # tasks submitted after the failure cannot run either
            except Exception as exc:  # a failed look (the controller busy, the loop closing) must not end the watch
                if self._stop.is_set():
                    return
                log.warning("Could not check the SLURM worker jobs (%s); trying again in %g s.", exc, self.poll_interval)

    def _check(self) -> None:
        self._refresh(ask_squeue=None)
        if self._stop.is_set():
            return
        now = time.monotonic()
        ended = [j for j in self.jobs.values() if j.ended and not j.handled]
        for job in ended:
            job.handled = True
            self._emit("slurm_job_ended", job_id=job.job_id, worker=job.name, state=job.state, connected=job.connected, log=job.log_file)
            log.warning("SLURM worker %s ended (%s); asking for a replacement.", job.name, job.describe())
            self._failed_starts = 0 if job.connected else self._failed_starts + 1
        refused = [j for j in self.jobs.values() if j.error]
        if refused:
            return self._fail(f"sbatch refused a replacement worker job of {self.source}: {refused[0].error}")
        if self._failed_starts >= MAX_FAILED_STARTS:
            failed = [j for j in self.jobs.values() if j.ended and not j.connected][-MAX_FAILED_STARTS:]
            return self._fail(f"{MAX_FAILED_STARTS} SLURM worker jobs of {self.source} in a row ended before their Dask worker "
                              f"connected: {'; '.join(j.describe() for j in failed)}. The logs say why.")
        if ended:
            self._replace([j.name for j in ended])
        if any(j.alive for j in self.jobs.values()):
            self._last_worker = now
        elif now - self._last_worker > self.startup_timeout:
            return self._fail(f"No Dask worker of {self.source} has been connected for {self.startup_timeout:g} s "
                              f"(THRESHER_SLURM_STARTUP_TIMEOUT sets it): {self._describe()}.")

    def _replace(self, names: list[str]) -> None:
        from distributed.utils import sync

        fresh = sync(self.cluster.loop, self._replace_on_loop, names)
        for old, new in zip(names, fresh):
            self._emit("slurm_job_replaced", worker=old, job_id=self.jobs[old].job_id, by=new)

    async def _replace_on_loop(self, names: list[str]) -> list[str]:
        fresh = []
        for name in names:
            spec = self.cluster.worker_spec.pop(name, None) or self.cluster.new_spec
            self.cluster.workers.pop(name, None)  # it has ended: nothing to cancel
            new = self._fresh_name(name)
            self.cluster.worker_spec[new] = spec
            fresh.append(new)
        self.cluster.scale(jobs=self.n_jobs)  # submits the jobs of the new names
        return fresh

    def _fresh_name(self, lost: str) -> str:
        prefix = lost.rsplit("-", 1)[0] if re.search(r"-\d+$", lost) else lost
        taken = set(self.jobs) | set(self.cluster.worker_spec)
        k = len(taken)
        while f"{prefix}-{k}" in taken:
            k += 1
        return f"{prefix}-{k}"

    def _fail(self, message: str) -> None:
        """Stop the work: every task of the client is cancelled with ``message``, which the stage then raises."""
        self.failure = SlurmJobError(message)
        self._emit("slurm_error", error=message)
        log.error("%s", message)
        self._cancel_tasks()

    def _cancel_tasks(self) -> None:
        from distributed import Future

        client = self._client
        if client is not None and self.failure is not None:
            futures = [Future(key, client) for key in list(client.futures)]
            if futures:
                client.cancel(futures, force=True, reason="SLURM worker jobs lost", msg=str(self.failure))

    # ------------------------------------------------------------------------------------------- state

    def _refresh(self, *, ask_squeue: bool | None) -> None:
        """Bring :attr:`jobs` up to date: new jobs, connected workers, and (``ask_squeue``; None: when a worker is missing) SLURM states."""
        from distributed.utils import sync

        submitted, connected = sync(self.cluster.loop, self._snapshot)
        for name, job_id, error, worker_names, log_file in submitted:
            if name not in self.jobs:
                self.jobs[name] = WorkerJob(name, job_id, worker_names, log_file, error=error)
                if job_id is not None:
                    self._emit("slurm_job_submitted", job_id=job_id, worker=name)
        for job in self.jobs.values():
            job.alive = bool(job.worker_names & connected)
            job.connected = job.connected or job.alive
        watched = [j for j in self.jobs.values() if j.job_id is not None and not j.ended]
        if ask_squeue is None:
            ask_squeue = len([j for j in watched if j.alive]) < self.n_jobs
        if not ask_squeue or not watched:
            return
        states = squeue_states([j.job_id for j in watched])
        if states is None:
            return
        for job in watched:
            state, reason = states.get(job.job_id, ("ENDED", ""))
            job.state, job.reason = state, reason
            if state not in LIVE_STATES and not job.alive:
                job.ended = True
                job.log_file = job_log_file(job.job_id) or job.log_file  # SLURM's word, where the config redirected -e

    async def _snapshot(self) -> tuple[list[tuple[str, str | None, str | None, frozenset[str], str]], frozenset[str]]:
        """The cluster's jobs and the names of the connected workers, read on the cluster's event loop."""
        submitted = []
        for name, job in list(self.cluster.workers.items()):
            groups = self.cluster.worker_spec.get(name, self.cluster.new_spec).get("group") or [""]
            worker_names = frozenset(f"{name}{g}" for g in groups)
            submitted.append((str(name), getattr(job, "job_id", None), getattr(job, "submit_error", None), worker_names,
                              default_log_file(job)))
        connected = frozenset(str(w.get("name")) for w in self.cluster.scheduler_info.get("workers", {}).values())
        return submitted, connected

    def _describe(self) -> str:
        jobs = sorted(self.jobs.values(), key=lambda j: (len(j.job_id or ""), j.job_id or "", j.name))  # in submission order
        return ", ".join(j.describe() for j in jobs) or "no job was submitted"


# ----------------------------------------------------------------------------------------------- SLURM commands


def squeue_states(job_ids: list[str]) -> dict[str, tuple[str, str]] | None:
    """``{job_id: (state, reason)}`` for the jobs SLURM still knows (ended ones are forgotten after ``MinJobAge``); None if squeue failed."""
    try:
        done = subprocess.run(["squeue", "-h", "-t", "all", "-j", ",".join(job_ids), "-o", "%i|%T|%r"],
                              capture_output=True, text=True, timeout=SQUEUE_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("squeue failed: %s", exc)
        return None
    if done.returncode != 0:
        if "Invalid job id" in done.stderr:
            return {}  # none of them is known any more
        log.warning("squeue failed: %s", " ".join(done.stderr.split()))
        return None
    states = {}
    for line in done.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            states[parts[0]] = (parts[1], parts[2])
    return states


def job_log_file(job_id: str) -> str | None:
    """The file a job's stderr went to, as ``scontrol show job`` says (None once SLURM forgot the job, or for a pattern it left unexpanded)."""
    try:
        done = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=SQUEUE_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"\bStdErr=(\S+)", done.stdout) if done.returncode == 0 else None
    if match is None:
        return None
    path = re.sub(r"%[jJA]", job_id, match.group(1))  # SLURM 22.05 shows the -e pattern as given
    return None if "%" in path else path


def default_log_file(job: Any) -> str:
    """Where a dask-jobqueue job's stderr goes: ``log_directory/<job name>-<id>.err``, or SLURM's default ``slurm-<id>.out`` in the submitting directory."""
    job_id = getattr(job, "job_id", None) or "<id>"
    directory = getattr(job, "log_directory", None)
    if directory:
        return str(Path(directory).resolve() / f"{getattr(job, 'job_name', None) or 'worker'}-{job_id}.err")
    return str(Path(os.getcwd()) / f"slurm-{job_id}.out")


def sbatch_message(exc: BaseException) -> str:
    """sbatch's own words from dask-jobqueue's error (its stderr), on one line."""
    if isinstance(exc, FileNotFoundError):
        return "sbatch is not on the PATH here: run thresher where SLURM's commands are (a login node)"
    text = str(exc)
    stderr = text.split("stderr:", 1)[1] if "stderr:" in text else text
    lines = [re.sub(r"^sbatch:\s*(error:\s*)?", "", line.strip()) for line in stderr.splitlines() if line.strip()]
    return "; ".join(dict.fromkeys(lines)) or type(exc).__name__


@functools.cache
def watched_job_class() -> type:
    """:class:`dask_jobqueue.slurm.SLURMJob` that records sbatch's refusal (``submit_error``) instead of raising it in a log callback."""
    from dask_jobqueue.slurm import SLURMJob
    from distributed.core import Status

    class WatchedSLURMJob(SLURMJob):
        submit_error: str | None = None

        async def start(self) -> None:
            try:
                await super().start()
            except Exception as exc:  # sbatch refused the job (or could not be run): the keeper reports it
                self.submit_error = sbatch_message(exc)
                self.job_id = None
                self.status = Status.running  # SpecCluster expects a started job; job_id None says nothing runs

    WatchedSLURMJob.__name__ = WatchedSLURMJob.__qualname__ = "WatchedSLURMJob"
    return WatchedSLURMJob
