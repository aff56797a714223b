"""Progress reporting for jobs: a tqdm bar in rows with rows/s, fed as tasks finish (and, for embedding, as each batch is encoded).

Each advance (a finished task, or an encoded batch of the embed step) is also
emitted to the current event log (:mod:`thresher.jobs.events`) with the rows
done, the rate and an ETA.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from thresher.jobs.events import bound_emitter


class RowProgress:
    """Counts rows done; shows a bar on stderr unless disabled."""

    def __init__(self, total_rows: int, *, description: str, enabled: bool = True, initial: int = 0):
        self.started = time.perf_counter()
        self.rows = 0
        self.total_rows = total_rows
        self.initial = initial
        self.description = description
        self._emit = bound_emitter()
        self._lock = threading.Lock()
        self._bar: Any = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_rows, initial=initial, desc=description, unit="rows", unit_scale=True, file=sys.stderr, dynamic_ncols=True)

    def advance(self, rows: int) -> None:
        with self._lock:
            self._advance(rows)

    def _advance(self, rows: int) -> None:
        self.rows += rows
        if self._bar is not None:
            self._bar.update(rows)
        rate = self.rows_per_second
        remaining = max(self.total_rows - self.initial - self.rows, 0)
        self._emit(
            "progress", task=self.description, rows=rows, rows_done=self.initial + self.rows, rows_total=self.total_rows,
            rows_per_second=round(rate, 2), eta_s=round(remaining / rate, 1) if rate > 0 else None,
        )

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def report_futures(futures: Sequence[Any], rows: Sequence[int], *, description: str) -> RowProgress:
    """Emit a progress event (rows done, rate, ETA) as each Dask future finishes; no bar.

    For stages whose tasks are gathered all at once: the callbacks run on the
    client's thread, so the event log and step are bound when this is called.
    """
    bar = RowProgress(int(sum(rows)), description=description, enabled=False)
    for future, n in zip(futures, rows):
        future.add_done_callback(lambda f, n=int(n): bar.advance(n) if f.status == "finished" else None)
    return bar
