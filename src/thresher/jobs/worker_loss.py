"""Turn Dask's ``KilledWorker`` into an error that names the step, the task, the workers' memory limit and what to change.

A Dask worker that grows past ``distributed.worker.memory.terminate`` (95%) of
its memory limit is killed by its nanny; the scheduler sends its tasks to
another worker, and after ``distributed.scheduler.allowed-failures`` (3) deaths
while running one task it gives up on that task with ``KilledWorker`` (a
``dask worker`` without a nanny, or a SLURM job killed for its memory, dies
the same way). Nothing hangs, but Dask's message names neither the step nor
the memory figure, and a user cannot tell a memory kill from a crash. This
module reads what the scheduler knows (each worker's memory limit, the task's
key) and says it in one error (:class:`WorkerLostError`, exit 1).
"""

from __future__ import annotations

import re
from typing import Any

from thresher.exceptions import EnvironmentProblemError


class WorkerLostError(EnvironmentProblemError):
    """Workers kept dying while running one task of a step (most often: the task needed more memory than a worker may hold)."""


def is_killed_worker(exc: BaseException) -> bool:
    """Whether ``exc`` is Dask's ``KilledWorker`` (the scheduler gave up on a task whose workers kept dying)."""
    try:
        from distributed.scheduler import KilledWorker
    except ImportError:  # pragma: no cover - distributed is a dependency
        return False
    return isinstance(exc, KilledWorker)


def worker_lost_error(exc: BaseException, limits: list[int], *, step: str | None, task: str) -> WorkerLostError:
    """The :class:`WorkerLostError` for ``exc`` (a ``KilledWorker``) raised while ``step`` ran ``task``.

    ``limits``: the memory limit of each worker when the tasks were submitted
    (:func:`memory_limits`; read before, since the killed worker may not be back).
    """
    import dask
    from dask.utils import format_bytes

    if not limits:
        memory = "the workers' memory limits are unknown"
    elif all(limit == 0 for limit in limits):
        memory = "the workers have no memory limit, so the machine itself (or SLURM) ran out of memory or the worker crashed"
    else:
        low, high = min(x for x in limits if x), max(limits)
        spread = format_bytes(low) if low == high else f"{format_bytes(low)} to {format_bytes(high)}"
        terminate = dask.config.get("distributed.worker.memory.terminate", 0.95)
        memory = (f"each worker may hold {spread}, and its nanny kills it above {terminate:.0%} of that; "
                  "a worker killed for its memory is the usual cause")
    where = f"step {step!r}" if step else "the job"
    tries = re.search(r"on (\d+) different workers", str(exc))
    died = f"{tries.group(1)} time{'s' if tries.group(1) != '1' else ''}" if tries else "too many times"
    return WorkerLostError(
        f"{where}: the worker running its task {task!r} died {died}, so Dask gave up on it "
        f"(the scheduler's distributed.scheduler.allowed-failures); {memory}. Give each worker more memory (fewer workers "
        "per machine: --workers, or 'memory' in the SLURM cluster config, or --memory-limit on `dask worker`) or make the "
        "step's tasks smaller (its block or partition size; `thresher run --dry-run` prints each step's memory per worker). "
        f"Dask said: {_one_line(str(exc))}"
    )


def memory_limits(client: Any) -> list[int]:
    """Each connected worker's memory limit in bytes (0: none), or an empty list when the scheduler does not answer."""
    try:
        workers = client.scheduler_info(n_workers=-1)["workers"]
    except Exception:  # the scheduler may be gone too; the error must still be raised
        return []
    return [int(w.get("memory_limit") or 0) for w in workers.values()]


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
