"""One writer per artefact directory: a lock file created atomically, with stale-lock detection.

Taking the lock never waits: the lock file is created with ``O_CREAT |
O_EXCL``, which either succeeds at once or fails at once with "exists". No
``fcntl``/``flock`` lock is used: on network filesystems those depend on a
lock daemon (NFSv3's NLM) and can block indefinitely or be silently local.
Exclusive creation is atomic on local disks and on NFS v3 and later (the
server checks existence and creates in one operation); on NFSv2 or on
filesystems that fake ``O_EXCL`` it is not, and two writers starting in the
same instant could both succeed. A second job is refused at once with a
message naming the holder (host, pid, start time), never queued.

A lock is stale, and is taken over, when its holder is known to be dead:

* the holder ran on this host (same host name and, on Linux, same PID
  namespace, so containers sharing a host name do not judge each other's
  processes) and its pid no longer runs, or runs a different process (the
  process start time recorded in the lock differs: the pid was reused);
* the holder ran on another host and the lock has not been refreshed for
  ``THRESHER_LOCK_TTL`` seconds (default 600). A process cannot see another
  host's processes, so a remote holder is judged only by this heartbeat:
  holders touch the lock's modification time every ``min(60, TTL / 4)``
  seconds from a background thread while they write. On NFS the time is set
  by the server and compared with this host's clock, so hosts must keep
  their clocks within a small fraction of the TTL of each other, and every
  host should use the same TTL. An unreadable lock (a holder that crashed
  between creating and filling it) is judged by the same heartbeat.

Taking over is not atomic: a job removes a stale lock only if it still
reads as it did when judged stale, but in the microseconds between that
check and the removal another job could take the lock over and create its
own, which would then be removed in its place, and both jobs would write.
A holder whose lock was taken over finds out at its next refresh and logs
an error.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from thresher.exceptions import ArtifactError

LOCK_NAME = ".thresher-lock.json"
REFRESH_SECONDS = 60.0

log = logging.getLogger(__name__)


def _ttl() -> float:
    try:
        return float(os.environ.get("THRESHER_LOCK_TTL", "600"))
    except ValueError:
        return 600.0


@contextmanager
def output_lock(directory: str | Path) -> Iterator[Path]:
    """Hold the write lock of ``directory`` (made if needed) for the duration of the block."""
    from thresher.stores.output_guard import check_location

    directory = Path(directory)
    check_location(directory.resolve(), f"The output directory {directory}")
    made = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    token = uuid.uuid4().hex
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "pid_started": _process_started(os.getpid()),
              "pid_namespace": _pid_namespace(), "token": token,
              "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    _acquire(path, holder)
    stop = threading.Event()
    refresher = threading.Thread(target=_refresh, args=(path, token, stop, max(0.1, min(REFRESH_SECONDS, _ttl() / 4))), daemon=True)
    refresher.start()
    failed = True
    try:
        yield path
        failed = False
    finally:
        stop.set()
        refresher.join()
        if _read(path).get("token") == token:
            path.unlink(missing_ok=True)
        if failed and made:
            _remove_if_nothing_written(directory)


def _remove_if_nothing_written(directory: Path) -> None:
    """Leave nothing behind: a directory this job made, which it failed in before writing any data, is removed.

    It may hold only the partial-run marker (a failed run's shards stay, to be resumed);
    anything else there — shards, another job's lock — keeps it.
    """
    from thresher.stores.manifest import PARTIAL_NAME

    try:
        entries = list(directory.iterdir())
        if any(p.name != PARTIAL_NAME or not p.is_file() for p in entries):
            return
        for p in entries:
            p.unlink()
        directory.rmdir()
    except OSError:
        pass  # best effort: the error that got us here is the one to report


def _acquire(path: Path, holder: dict[str, Any]) -> None:
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            current = _read(path)
            if _is_stale(path, current):
                _remove_if_unchanged(path, current)
                continue
            raise ArtifactError(
                f"{path.parent} is being written by another thresher job (pid {current.get('pid')} on {current.get('host')}, "
                f"since {current.get('started')}); wait for it to finish, or delete {path} if that job is gone."
            ) from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(holder, f)
        return
    raise ArtifactError(f"Could not take the write lock {path}: it keeps changing hands.")


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _is_stale(path: Path, holder: dict[str, Any]) -> bool:
    pid = holder.get("pid")
    same_machine = holder.get("host") == socket.gethostname() and holder.get("pid_namespace", _pid_namespace()) == _pid_namespace()
    if same_machine and isinstance(pid, int):
        return not _runs(pid, holder.get("pid_started"))
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return True
    return age > _ttl()


def _runs(pid: int, started: float | None) -> bool:
    """Whether process ``pid`` is alive and, when its start time is known, is still the same process."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:  # dead, not yet reaped by its parent
            return False
        return started is None or abs(process.create_time() - started) < 1.0
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # alive, owned by someone else
        return True


def _process_started(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _pid_namespace() -> str | None:
    """This process's PID namespace on Linux (``pid:[4026531836]``): pids are only comparable within one."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _remove_if_unchanged(path: Path, seen: dict[str, Any]) -> None:
    if _read(path) == seen:
        path.unlink(missing_ok=True)


def _refresh(path: Path, token: str, stop: threading.Event, every: float) -> None:
    while not stop.wait(every):
        if _read(path).get("token") != token:
            log.error("The write lock %s was taken over by another job (judged stale): two jobs may now write %s.", path, path.parent)
            return
        try:
            os.utime(path)
        except OSError:
            return


def locks_output(param: str = "out", *, check: Any = None):
    """Decorator: the function holds the write lock of its ``param`` directory while it runs.

    ``check``, if given, is called with the call's bound arguments (defaults
    applied) before the lock is taken — before the directory is made — so an
    output the function must refuse (see :mod:`thresher.stores.output_guard`)
    is refused with nothing created.
    """
    import functools
    import inspect

    def decorate(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if check is not None:
                bound = signature.bind(*args, **kwargs)
                bound.apply_defaults()
                check(bound.arguments)
            with output_lock(signature.bind_partial(*args, **kwargs).arguments[param]):
                return fn(*args, **kwargs)

        return wrapper

    return decorate
