"""Progress reporting for jobs: a tqdm bar in rows with rows/s, fed as tasks finish."""

from __future__ import annotations

import sys
import time
from typing import Any


class RowProgress:
    """Counts rows done; shows a bar on stderr unless disabled."""

    def __init__(self, total_rows: int, *, description: str, enabled: bool = True, initial: int = 0):
        self.started = time.perf_counter()
        self.rows = 0
        self._bar: Any = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_rows, initial=initial, desc=description, unit="rows", unit_scale=True, file=sys.stderr, dynamic_ncols=True)

    def advance(self, rows: int) -> None:
        self.rows += rows
        if self._bar is not None:
            self._bar.update(rows)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
