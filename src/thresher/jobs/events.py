"""A machine-readable event log: one JSON object a line, appended as work happens.

The pipeline runner opens one per run (``<run>/events.jsonl``) and makes it
current; stages and progress bars then emit into it without knowing about
it (``emit`` does nothing when no log is current). Each line carries the UTC
time, the seconds since the run started, the event name and its fields, so a
dashboard or a script can follow a long run (``tail -f``) or time its steps
afterwards.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as _dt
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_current: contextvars.ContextVar[EventLog | None] = contextvars.ContextVar("thresher_event_log", default=None)
_step: contextvars.ContextVar[str | None] = contextvars.ContextVar("thresher_event_step", default=None)


class EventLog:
    """Appends events to a JSON-lines file (line-buffered, flushed per event)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        self._lock = threading.Lock()
        self._started = time.perf_counter()

    def emit(self, event: str, **fields: Any) -> None:
        record = {
            "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"),
            "elapsed_s": round(time.perf_counter() - self._started, 3),
            "event": event,
        }
        step = _step.get()
        if step is not None and "step" not in fields:
            record["step"] = step
        record.update(fields)
        line = json.dumps(record, default=str, ensure_ascii=False)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@contextlib.contextmanager
def current_event_log(log: EventLog | None) -> Iterator[EventLog | None]:
    """Make ``log`` the one ``emit`` writes to, for the duration of the block."""
    token = _current.set(log)
    try:
        yield log
    finally:
        _current.reset(token)


@contextlib.contextmanager
def current_step(name: str | None) -> Iterator[None]:
    """Tag every event emitted in the block with ``step``."""
    token = _step.set(name)
    try:
        yield
    finally:
        _step.reset(token)


def running_step() -> str | None:
    """The step whose block (:func:`current_step`) is running, or None outside a run."""
    return _step.get()


def emit(event: str, **fields: Any) -> None:
    """Emit into the current event log, if any."""
    log = _current.get()
    if log is not None:
        log.emit(event, **fields)


def bound_emitter():
    """An ``emit`` bound to the log and step current now, for callbacks that run on other threads (Dask's)."""
    log, step = _current.get(), _step.get()

    def emit_here(event: str, **fields: Any) -> None:
        if log is not None:
            log.emit(event, **({"step": step} if step is not None else {}), **fields)

    return emit_here


def read_events(path: str | Path) -> list[dict[str, Any]]:
    """All events of a log (a torn last line from a crash is skipped)."""
    events = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events
