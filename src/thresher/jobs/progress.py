"""Progress reporting for jobs: a tqdm bar in rows with rows/s, fed as tasks finish.

Each advance (one finished partition) is also emitted to the current event
log (:mod:`thresher.jobs.events`) with the rows done, the rate and an ETA.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from thresher.jobs.events import emit


class RowProgress:
    """Counts rows done; shows a bar on stderr unless disabled."""

    def __init__(self, total_rows: int, *, description: str, enabled: bool = True, initial: int = 0):
        self.started = time.perf_counter()
        self.rows = 0
        self.total_rows = total_rows
        self.initial = initial
        self.description = description
        self._bar: Any = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_rows, initial=initial, desc=description, unit="rows", unit_scale=True, file=sys.stderr, dynamic_ncols=True)

    def advance(self, rows: int) -> None:
        self.rows += rows
        if self._bar is not None:
            self._bar.update(rows)
        rate = self.rows_per_second
        remaining = max(self.total_rows - self.initial - self.rows, 0)
        emit(
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
