"""Where pool files live: fsspec filesystems, opening files and streams, content keys.

Every pool module reaches storage through these helpers, so a local path, a
``memory://`` URL and an ``s3://`` object are opened, hashed and reported the
same way.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import pyarrow as pa

from thresher.exceptions import EnvironmentProblemError, InputDataError
from thresher.fingerprint import hash_file


def filesystem(url: str, options: dict[str, Any]) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and the path in it, or one line saying why there is none.

    An unknown protocol is the user's input (exit 2); a known one whose implementation package is
    not installed, or a host that cannot be reached, is the environment (exit 1) and names the
    package to install or the cause.
    """
    import fsspec
    from fsspec.registry import known_implementations, registry

    protocol = url.split("://", 1)[0].split("::")[-1].lower() if "://" in url else ""
    if protocol and protocol not in registry and protocol not in known_implementations:
        raise InputDataError(f"The pool path {url} uses the protocol {protocol!r}, which fsspec does not know "
                             f"(known: {', '.join(sorted(known_implementations))}).")
    try:
        return fsspec.core.url_to_fs(url, **options)
    except ImportError as exc:
        hint = known_implementations.get(protocol, {}).get("err") or str(exc)
        raise EnvironmentProblemError(f"The pool path {url} needs the fsspec implementation of {protocol!r}, which is not installed: "
                                      f"{' '.join(hint.split())}.") from None
    except ValueError as exc:
        raise InputDataError(f"The pool path {url} is not a usable fsspec URL: {' '.join(str(exc).split())}.") from None
    except (OSError, TimeoutError) as exc:
        raise EnvironmentProblemError(f"Cannot reach the pool at {url}: {_cause(exc)}.") from None


def _cause(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def is_local(fs: Any) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def url_of(fs: Any, path: str) -> str:
    return path if is_local(fs) else fs.unstrip_protocol(path)


def strip_protocol(url: str) -> str:
    return url.split("://", 1)[1] if "://" in url else url.replace(os.sep, "/")


@contextmanager
def open_binary(source: str, options: dict[str, Any], *, mmap: bool = False) -> Iterator[Any]:
    fs, path = filesystem(source, options)
    try:
        handle = (pa.memory_map(path) if mmap else open(path, "rb")) if is_local(fs) else fs.open(path, "rb")
    except (OSError, pa.ArrowIOError) as exc:
        raise InputDataError(f"{source} cannot be opened: {exc}") from None
    try:
        yield handle
    finally:
        handle.close()


@contextmanager
def open_text_stream(source: str, options: dict[str, Any], compressed: bool) -> Iterator[IO[bytes]]:
    with open_binary(source, options) as raw:
        if not compressed:
            yield raw
            return
        with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
            yield stream


def content_key(source: str, options: dict[str, Any]) -> str:
    """Content hash of a local file; the filesystem's checksum (ETag and the like) of a remote one."""
    fs, path = filesystem(source, options)
    if is_local(fs):
        return f"xxh3_128:{hash_file(path)}"
    return f"checksum:{fs.checksum(path)}"


def file_record(source: str, key: str, options: dict[str, Any]) -> dict[str, Any]:
    """What :func:`check_pool_files` compares later: the content key, plus size and mtime of a local file (its fast path)."""
    record: dict[str, Any] = {"source": source, "checksum": key, "size": None, "mtime_ns": None}
    fs, path = filesystem(source, options)
    if is_local(fs):
        stat = os.stat(path)
        record.update(size=stat.st_size, mtime_ns=stat.st_mtime_ns)
    return record
