"""Atomic writes: write under a temporary name in the same directory, fsync, rename.

A reader never sees a half-written file: either the old content (or nothing)
or the complete new one. Temporary names start with ``.tmp-`` so a crashed
run's leftovers are recognisable and never mistaken for shards.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TMP_PREFIX = ".tmp-"


@contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success it is renamed to ``final``.

    On an exception the temporary file is removed and ``final`` is untouched.
    """
    final = Path(final)
    tmp = final.with_name(f"{TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:12]}")
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if getattr(exc, "filename", None) is None:  # a failed write() (disk full, EFBIG) names no file: name the one being written
            raise OSError(exc.errno, exc.strerror or str(exc), str(final)) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(final: str | Path, data: bytes) -> None:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(final: str | Path, value: Any) -> None:
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    atomic_write_bytes(final, text.encode("utf-8"))


def remove_temporaries(directory: str | Path) -> int:
    """Delete leftovers of interrupted writes in ``directory``; returns how many."""
    n = 0
    for p in Path(directory).glob(f"{TMP_PREFIX}*"):
        p.unlink(missing_ok=True)
        n += 1
    return n


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
