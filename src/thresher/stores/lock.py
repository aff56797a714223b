"""One writer per artefact directory: a lock file created atomically, with stale-lock detection.

``O_CREAT | O_EXCL`` creation is atomic on local disks and on NFS (v3+), and
needs no ``fcntl`` lock, which can hang on network filesystems. The lock file
names its holder (host, pid, start time) so a refusal can say who holds it.
A lock is stale, and is taken over, when its holder is a dead process on this
host, or, for a holder on another host, when it has not been refreshed for
``THRESHER_LOCK_TTL`` seconds (default 600): holders refresh it every
minute from a background thread while they write.
"""

from __future__ import annotations

import datetime as _dt
import json
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


def _ttl() -> float:
    try:
        return float(os.environ.get("THRESHER_LOCK_TTL", "600"))
    except ValueError:
        return 600.0


@contextmanager
def output_lock(directory: str | Path) -> Iterator[Path]:
    """Hold the write lock of ``directory`` (made if needed) for the duration of the block."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    token = uuid.uuid4().hex
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "token": token,
              "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    _acquire(path, holder)
    stop = threading.Event()
    refresher = threading.Thread(target=_refresh, args=(path, token, stop), daemon=True)
    refresher.start()
    try:
        yield path
    finally:
        stop.set()
        refresher.join()
        if _read(path).get("token") == token:
            path.unlink(missing_ok=True)


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
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        return not _pid_alive(holder["pid"])
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return True
    # an unreadable lock may be one being written this instant: only an old one is stale
    return age > _ttl()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_if_unchanged(path: Path, seen: dict[str, Any]) -> None:
    if _read(path) == seen:
        path.unlink(missing_ok=True)


def _refresh(path: Path, token: str, stop: threading.Event) -> None:
    while not stop.wait(REFRESH_SECONDS):
        if _read(path).get("token") != token:
            return
        try:
            os.utime(path)
        except OSError:
            return


def locks_output(param: str = "out"):
    """Decorator: the function holds the write lock of its ``param`` directory while it runs."""
    import functools
    import inspect

    def decorate(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with output_lock(signature.bind_partial(*args, **kwargs).arguments[param]):
                return fn(*args, **kwargs)

        return wrapper

    return decorate
