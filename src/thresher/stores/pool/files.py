"""Finding a pool's files (paths, globs, directories, URLs), naming them for ids, and planning each by its format."""

from __future__ import annotations

import gzip
import os
import posixpath
from typing import Any

import pyarrow as pa

from thresher.exceptions import InputDataError, parameter_error
from thresher.stores.pool.fs import filesystem, is_local, open_binary, strip_protocol, url_of
from thresher.stores.pool.hf_datasets import saved_dataset_root
from thresher.stores.pool.partition import FilePlan
from thresher.stores.pool.registry import FORMATS, SUPPORTED_EXTENSIONS, extension_format


def as_entries(source: Any) -> list[str]:
    if isinstance(source, (str, os.PathLike)):
        entries = [os.fspath(source)]
    elif isinstance(source, (list, tuple)):
        entries = []
        for item in source:
            if not isinstance(item, (str, os.PathLike)):
                raise parameter_error("open_pool", "source", "paths, URLs or globs (str or os.PathLike)", item)
            entries.append(os.fspath(item))
    else:
        raise parameter_error("open_pool", "source", "a path, URL, glob, list of those, datasets.Dataset or DatasetDict", source)
    if not entries:
        raise InputDataError("The pool source is an empty list: no files to read.")
    return entries


def resolve_files(
    entries: list[str], format: str, options: dict[str, Any], skipped: list[str] | None = None
) -> list[tuple[str, str]]:
    """Each entry expanded to (url, format) pairs: globs and directories sorted, entries kept in order.

    What a directory holds but the pool leaves out is appended to ``skipped`` as "path (why)", so the
    embed summary and the store's manifest can say so. Local entries that are not regular files (FIFOs,
    sockets, devices) or that are symbolic-link loops are refused without being opened.
    """
    skipped = [] if skipped is None else skipped
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for entry in entries:
        fs, path = filesystem(entry, options)
        if any(ch in path for ch in "*?["):
            matches = sorted(fs.glob(path))
            if not matches:
                raise InputDataError(f"No files match {entry!r}.")
            found = []
            for match in matches:
                if not fs.isdir(match):
                    found.append((match, _file_format(match, format)))
                elif saved_dataset_root(url_of(fs, match), options) is not None:
                    raise InputDataError(f"{entry} matches the save_to_disk folder {match}; open such a folder alone.")
                else:
                    found.extend(_directory_files(fs, match, format, entry, skipped))
        elif fs.isdir(path):
            if saved_dataset_root(entry, options) is not None:
                raise InputDataError(f"{entry} is a save_to_disk folder; open it alone, not with other sources.")
            found = _directory_files(fs, path, format, entry, skipped)
        elif fs.exists(path):
            found = [(path, _file_format(path, format))]
        else:
            if is_local(fs) and os.path.islink(path):
                _check_local_kind(path)  # a link loop or a dangling link: say which, not "does not exist"
            raise InputDataError(f"{entry} does not exist: no file, directory or glob match.")
        for path, fmt in found:
            if is_local(fs):
                _check_local_kind(path)
            url = url_of(fs, path)
            if url in seen:
                raise InputDataError(f"{url} is part of the pool twice; each file may appear once.")
            seen.add(url)
            out.append((url, fmt))
    return out


def _directory_files(fs: Any, root: str, format: str, entry: str, skipped: list[str]) -> list[tuple[str, str]]:
    """The data files under ``root``; what is left out goes to ``skipped`` (a hidden folder once, not each file in it)."""
    found = []
    passed: dict[str, str] = {}
    local = is_local(fs)
    for path in sorted(fs.find(root)):
        rel = posixpath.relpath(path, root)
        parts = rel.split("/")
        hidden = next((i for i, part in enumerate(parts) if part.startswith((".", "_"))), None)
        if hidden is not None:
            shown = "/".join(parts[: hidden + 1]) + ("/" if hidden < len(parts) - 1 else "")
            passed.setdefault(shown, "hidden: a name starting with '.' or '_'")
            continue
        if local and os.path.islink(path) and os.path.isdir(path):
            passed[rel] = "a symbolic link to a directory, not followed"
            continue
        fmt = extension_format(path)
        if fmt is None:
            passed[rel] = "not a supported extension"
            continue
        if format != "auto" and fmt != format:
            passed[rel] = f"a {fmt} file, not {format}"
            continue
        found.append((path, fmt))
    notes = [f"{url_of(fs, posixpath.join(root, rel))} ({why})" for rel, why in passed.items()]
    if not found:
        wanted = f"supported data files ({SUPPORTED_EXTENSIONS})" if format == "auto" else f"{format} files"
        left = f"; it holds only {_few(notes)}" if notes else ""
        raise InputDataError(f"No files matched in directory {entry}: it holds no {wanted}{left}.")
    skipped.extend(notes)
    return found


def _few(items: list[str], n: int = 5) -> str:
    """The first ``n`` items, comma-separated, and how many more."""
    shown = ", ".join(items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def _check_local_kind(path: str) -> None:
    """Refuse a local path that is not a regular file, without opening it (opening a FIFO blocks until a writer comes)."""
    import errno
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputDataError(f"{path} is a symbolic link loop: following it leads back to itself (too many levels of symbolic links).") from None
        if os.path.islink(path):
            raise InputDataError(f"{path} is a symbolic link to {os.readlink(path)}, which does not exist.") from None
        raise InputDataError(f"{path} cannot be read: {exc.strerror}.") from None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return
    kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a character device" if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode) else "a special file")
    raise InputDataError(
        f"{path} is {kind}, not a regular file; pool files are read several times (planning, hashing, each partition), "
        "so save the data to a file first."
    )


def _file_format(path: str, format: str) -> str:
    if format != "auto":
        return format
    fmt = extension_format(path)
    if fmt is None:
        raise InputDataError(
            f"Cannot tell the format of {path} from its extension; use .jsonl, .ndjson, .json, .parquet, .arrow or .csv "
            "(.gz for the text formats), or pass format=."
        )
    return fmt


def id_names(urls: list[str]) -> dict[str, str]:
    """Id prefix of each file: its path relative to the files' common root (the basename for one file)."""
    paths = [strip_protocol(u) for u in urls]
    if len(paths) == 1:
        return {urls[0]: posixpath.basename(paths[0])}
    root = posixpath.commonpath([posixpath.dirname(p) or "/" for p in paths])
    names = {u: posixpath.relpath(p, root) for u, p in zip(urls, paths)}
    if len(set(names.values())) != len(names):
        raise InputDataError(f"Two pool files have the same name relative to their common root {root}: {sorted(urls)}.")
    return names


def plan_file(source: str, format: str, options: dict[str, Any], partition_rows: int) -> FilePlan:
    compressed = source.lower().endswith(".gz")
    if not compressed:
        _refuse_unnamed_gzip(source, format, options)
    try:
        return FORMATS[format].plan(source, options, compressed, partition_rows)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise InputDataError(f"{source} cannot be read: {exc}") from None


def _refuse_unnamed_gzip(source: str, format: str, options: dict[str, Any]) -> None:
    """A gzip file without a .gz name would be parsed as garbage text (or fail with a misleading error): say what it is."""
    with open_binary(source, options) as handle:
        magic = handle.read(2)
    if magic != b"\x1f\x8b":
        return
    base = posixpath.basename(strip_protocol(source))
    ext = posixpath.splitext(base)[1] or "without an extension"
    if FORMATS[format].gzip:
        raise InputDataError(f"{source} is gzip-compressed but named {ext}; rename it {base}.gz (or decompress it).")
    raise InputDataError(f"{source} is gzip-compressed, and {format} files cannot be read compressed; decompress it (gunzip).")


def pool_schema(plans: list[FilePlan]) -> pa.Schema:
    """The first file's columns, with types unified across files; a file with other columns is refused."""
    first = plans[0]
    schema = first.schema
    for plan in plans[1:]:
        if set(plan.schema.names) != set(first.schema.names) or len(plan.schema.names) != len(first.schema.names):
            raise InputDataError(
                f"{plan.source} has columns {plan.schema.names} but {first.source} has {first.schema.names}: "
                "every file of a pool must have the same columns."
            )
        try:
            schema = pa.unify_schemas([schema, plan.schema], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise InputDataError(f"{plan.source} and {first.source} hold columns of incompatible types: {exc}") from None
    return pa.schema([schema.field(name) for name in first.schema.names], metadata=schema.metadata)
