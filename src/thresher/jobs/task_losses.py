"""A scheduler plugin that remembers which tasks lost workers sent back to be run again.

Registered by :class:`thresher.jobs.cluster.TaskRetries`; it runs inside the
Dask scheduler, so it imports nothing from thresher beyond this module.
"""

from __future__ import annotations

from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

LEDGER_MAX_KEYS = 100_000
HANDLER = "thresher_task_losses"


class TaskLossLedger(SchedulerPlugin):
    """For each task key, how many times a lost worker sent it back to be run again.

    The scheduler logs a ``remove-worker`` event naming the tasks that were
    assigned to the lost worker and the finished results it held that are
    still wanted; both are run again elsewhere. This plugin sees every event
    as it is logged (``log_event``), so none is missed however long the job.
    It keeps the last :data:`LEDGER_MAX_KEYS` keys, so a long-lived cluster's
    ledger stays small, and answers the scheduler RPC ``thresher_task_losses``
    with a list of ``(key, count)``.
    """

    name = "thresher-task-losses"
    idempotent = True

    def __init__(self) -> None:
        self.lost: dict[Any, int] = {}

    async def start(self, scheduler: Any) -> None:
        scheduler.handlers[HANDLER] = self.losses

    def log_event(self, topic: str, msg: Any) -> None:
        if topic != "all" or not isinstance(msg, dict) or msg.get("action") != "remove-worker":
            return
        for key in (*msg.get("processing-tasks", ()), *msg.get("lost-computed-tasks", ())):
            self.lost[key] = self.lost.pop(key, 0) + 1  # re-inserted: the dict stays in order of last loss
        while len(self.lost) > LEDGER_MAX_KEYS:
            del self.lost[next(iter(self.lost))]

    def losses(self) -> list[tuple[Any, int]]:
        return list(self.lost.items())
