"""The data pool: the user's examples, read partition by partition with stable ids.

A pool is planned once by :func:`open_pool` and read many times by
:meth:`Pool.read_partition`, usually on Dask workers, so the plan is small and
picklable: a list of :class:`PoolPartition` (a row range of one file, plus a
byte range for JSON Lines), the pool's columns, its schema and a fingerprint.
Planning never loads a whole large file: JSON Lines are scanned in fixed-size
byte chunks (counting lines with numpy, recording the byte offset of every
``partition_rows``-th row), Parquet row counts come from the footer, Arrow IPC
from record batches, CSV from a streaming parse. Memory stays bounded by the
chunk and partition sizes, whatever the size of the pool.

Every row carries a stable ``id`` that later artefacts (embedding store, index,
curated shards) refer to (DESIGN.md, "Formats"): the user's ``id_column``, or
``"{name}:{row}"`` where ``name`` is the file's path relative to the common
root of the pool's files and ``row`` its 0-based row in that file (blank JSON
Lines lines are not rows). Ids never depend on how the pool is partitioned.

The pool's fingerprint, as in HF datasets, hashes the content of each file (or
the filesystem's checksum for remote storage), its name, its format and the
id column, so a changed input is noticed before a partial run is resumed.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import posixpath
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import IO, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from thresher.exceptions import ArtifactError, EnvironmentProblemError, InputDataError, parameter_error
from thresher.fingerprint import canonical_json, fingerprint_of, hash_file

PoolFormat = Literal["auto", "jsonl", "json", "parquet", "arrow", "csv", "hf_disk"]

_POOL_FORMATS = ("auto", "jsonl", "json", "parquet", "arrow", "csv", "hf_disk")
_FILE_FORMATS = ("jsonl", "json", "parquet", "arrow", "csv")
_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".arrow": "arrow", ".csv": "csv"}
_GZIP_FORMATS = ("jsonl", "json", "csv")
_DESCRIPTION_VERSION = 1
_FINGERPRINT_VERSION = 1
_CHUNK = 4 << 20  # bytes read at once when scanning JSON Lines
_SAMPLE_BYTES = 1 << 20  # bytes of each JSON Lines file the column types are inferred from
_BATCH_ROWS = 65_536
# Bytes that make a JSON Lines line blank when it holds nothing else: planning and reading agree on these.
_BLANK = np.zeros(256, dtype=bool)
_BLANK[[ord(" "), ord("\t"), ord("\r"), ord("\n")]] = True


@dataclass(frozen=True)
class PoolPartition:
    """One partition of a pool: rows ``start`` … ``stop - 1`` of one source.

    Attributes
    ----------
    index : int
        Partition number; also the number of the embedding shard made from it.
    source : str
        Resolved file path or URL; a ``save_to_disk`` folder for ``hf_disk``; "" for an in-memory dataset.
    format : str
        How the source is read: "jsonl", "jsonl.gz", "json", "json.gz", "parquet", "arrow.file",
        "arrow.stream", "csv", "csv.gz", "hf_disk" or "dataset".
    start, stop : int
        Row range within the source (``stop`` excluded).
    byte_start, byte_stop : int or None
        For uncompressed JSON Lines only: the byte range holding those rows, aligned on line starts.
    """

    index: int
    source: str
    format: str
    start: int
    stop: int
    byte_start: int | None = None
    byte_stop: int | None = None

    @property
    def n_rows(self) -> int:
        return self.stop - self.start


@dataclass(eq=True)
class Pool:
    """A planned pool: its partitions, columns, schema and fingerprint. Small and picklable.

    Build one with :func:`open_pool` (or :func:`reopen_pool` from a description).

    Attributes
    ----------
    partitions : list of PoolPartition
        In pool order: sorted files, then row order.
    n_rows : int
        Rows in the whole pool.
    column_names : list of str
        The pool's own columns (an ``id_column`` named "id" is the ``id`` column itself and is not repeated).
    fingerprint : str
        Content hash of the pool's files (or the dataset's fingerprint), formats and id column.
    schema : pyarrow.Schema
        Types of ``column_names``; every partition is read with these types.
    id_column : str or None
        The column the ids come from; None for ids ``"{name}:{row}"``.
    names : dict of str to str
        The id prefix ``name`` of each source.
    kind : {"files", "hf_disk", "dataset"}
        Where the rows live.
    files : list of dict or None
        Per source file (for "files" and "hf_disk"): its ``source``, ``checksum`` (the content key
        the fingerprint hashes) and, for local files, ``size`` and ``mtime_ns`` when it was hashed;
        :func:`check_pool_files` compares them cheaply. None for in-memory datasets, and in
        descriptions written before they were recorded.
    skipped : list of str
        What the pool's directories hold but the pool leaves out, each as "path (why)": hidden
        names, other extensions, links to directories. Shown by ``thresher embed`` and kept in
        the store's manifest, so a file left out is never a surprise.
    partition_rows : int
        Rows per partition (the last one of each source may hold fewer).
    """

    partitions: list[PoolPartition]
    n_rows: int
    column_names: list[str]
    fingerprint: str
    schema: pa.Schema
    id_column: str | None
    names: dict[str, str]
    kind: Literal["files", "hf_disk", "dataset"]
    partition_rows: int
    dataset_files: list[str] | None = None
    files: list[dict[str, Any]] | None = field(default=None, compare=False, repr=False)
    skipped: list[str] = field(default_factory=list, compare=False, repr=False)
    storage_options: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    _dataset: Any = field(default=None, compare=False, repr=False)

    def __repr__(self) -> str:
        return (
            f"Pool(kind={self.kind!r}, n_rows={self.n_rows}, n_partitions={self.n_partitions}, "
            f"columns={self.column_names}, id_column={self.id_column!r}, fingerprint={self.fingerprint!r})"
        )

    def __len__(self) -> int:
        return self.n_rows

    @property
    def n_partitions(self) -> int:
        return len(self.partitions)

    @property
    def id_type(self) -> pa.DataType:
        """Arrow type of the ``id`` column: int64 or string."""
        if self.id_column is None:
            return pa.string()
        return _id_type(self.schema.field(self.id_column).type)

    def read_partition(self, partition: int | PoolPartition, columns: Sequence[str] | None = None) -> pa.Table:
        """Read one partition: an ``id`` column first, then ``columns`` (default: all pool columns).

        Parameters
        ----------
        partition : int or PoolPartition
            The partition's index, or the partition itself.
        columns : sequence of str, optional
            Pool columns to read, in the order wanted.

        Returns
        -------
        pyarrow.Table
            ``partition.stop - partition.start`` rows with the pool's column types.
        """
        part = self._partition(partition)
        wanted = self._wanted_columns(columns)
        needed = wanted + [self.id_column] if self.id_column and self.id_column not in wanted else list(wanted)
        needed = [c for c in needed if c in self.schema.names]
        table = self._read_rows(part, needed)
        if table.num_rows != part.n_rows:
            raise InputDataError(
                f"{part.source or 'The dataset'} gave {table.num_rows} rows for rows {part.start}..{part.stop - 1} of the pool's "
                f"partition {part.index}; it changed since the pool was opened. Open the pool again."
            )
        ids = self._ids(part, table)
        out = table.select([c for c in wanted if c in self.schema.names])
        return out.add_column(0, pa.field("id", ids.type, nullable=False), ids)

    def describe(self) -> dict[str, Any]:
        """A JSON-able description, stored in manifests; ``reopen_pool(describe())`` gives an equal pool.

        Storage options (which may hold credentials) are left out; pass them to :func:`reopen_pool`.
        """
        return {
            "kind": "pool",
            "version": _DESCRIPTION_VERSION,
            "source_kind": self.kind,
            "fingerprint": self.fingerprint,
            "n_rows": self.n_rows,
            "column_names": list(self.column_names),
            "id_column": self.id_column,
            "partition_rows": self.partition_rows,
            "names": dict(self.names),
            "dataset_files": self.dataset_files,
            "files": self.files,
            "skipped": list(self.skipped),
            "schema": base64.b64encode(self.schema.serialize().to_pybytes()).decode("ascii"),
            "partitions": [asdict(p) for p in self.partitions],
        }

    # -- reading ---------------------------------------------------------------------------------

    def _partition(self, partition: int | PoolPartition) -> PoolPartition:
        if isinstance(partition, PoolPartition):
            return partition
        if isinstance(partition, (bool, np.bool_)) or not isinstance(partition, (int, np.integer)):
            raise parameter_error("Pool.read_partition", "partition", "an int or a PoolPartition", partition)
        if not 0 <= partition < self.n_partitions:
            raise parameter_error("Pool.read_partition", "partition", f"an int in [0, {self.n_partitions})", partition)
        return self.partitions[int(partition)]

    def _wanted_columns(self, columns: Sequence[str] | None) -> list[str]:
        if columns is None:
            return list(self.column_names)
        if isinstance(columns, str):
            raise parameter_error("Pool.read_partition", "columns", "a list of column names", columns)
        wanted: list[str] = []
        for name in columns:
            if name == "id":
                continue  # always there, first
            if name not in self.column_names:
                raise InputDataError(f"Column {name!r} is not in the pool; it has columns {self.column_names}.")
            if name not in wanted:
                wanted.append(name)
        return wanted

    def _read_rows(self, part: PoolPartition, columns: list[str]) -> pa.Table:
        # Readers given no column read all of them; read one to learn the row count, then drop it.
        read = columns or self.schema.names[:1]
        if part.format in ("dataset", "hf_disk"):
            if part.format == "dataset":
                dataset = self._dataset
            else:
                dataset = _load_saved_dataset(part.source, _options_key(self.storage_options), self.fingerprint)
            if dataset is None:
                raise ArtifactError("This pool came from an in-memory datasets.Dataset that is not attached to it; open the dataset again.")
            table = dataset.with_format("arrow", columns=read)[part.start : part.stop]
        else:
            table = _READERS[part.format](self, part, read)
        return _cast_to(table.select(columns), self.schema, part.source)

    def _ids(self, part: PoolPartition, table: pa.Table) -> pa.Array:
        if self.id_column is None:
            rows = pc.cast(pa.array(np.arange(part.start, part.stop, dtype=np.int64)), pa.string())
            return pc.binary_join_element_wise(f"{self.names[part.source]}:", rows, "")
        column = table.column(self.id_column).combine_chunks()
        where = part.source or "the dataset"
        if column.null_count:
            row = part.start + int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
            raise InputDataError(f"The id column {self.id_column!r} is null in row {row} of {where}; every row needs an id.")
        column = column.cast(_id_type(column.type))
        if pc.count_distinct(column).as_py() != len(column):
            values = column.to_pylist()
            seen: set[Any] = set()
            for offset, value in enumerate(values):
                if value in seen:
                    raise InputDataError(
                        f"The id column {self.id_column!r} repeats the id {value!r} (again in row {part.start + offset} of {where}); ids must be unique."
                    )
                seen.add(value)
        return column


# ------------------------------------------------------------------------------------------------
# Opening
# ------------------------------------------------------------------------------------------------


def open_pool(
    source: Any,
    *,
    format: PoolFormat = "auto",
    id_column: str | None = None,
    partition_rows: int | None = None,
    storage_options: dict[str, Any] | None = None,
    split: str | None = None,
) -> Pool:
    """Plan a pool: find its files, count their rows, split them into partitions.

    Parameters
    ----------
    source : str, os.PathLike, list of those, datasets.Dataset or datasets.DatasetDict
        A file, a glob, a directory (every supported file inside, recursively, sorted; names
        starting with "." or "_" are skipped), a ``save_to_disk`` folder, an fsspec URL of any of
        these (``s3://``, ``memory://``, ``file://``), a list of paths (read in the order given), or
        an in-memory dataset.
    format : {"auto", "jsonl", "json", "parquet", "arrow", "csv", "hf_disk"}, default "auto"
        "auto" reads each file by its extension (.jsonl/.ndjson, .json, .parquet, .arrow, .csv,
        optionally .gz for the text formats). A .json file holding an array is read whole; one
        holding JSON objects line by line is read as JSON Lines.
    id_column : str, optional
        Column holding the ids (integers or strings, no nulls, unique). Without it each row's id
        is ``"{name}:{row}"`` (``"{split or 'data'}:{row}"`` for datasets).
    partition_rows : int, optional
        Rows per partition (default: ``runtime_config().partition_rows``).
    storage_options : dict, optional
        Passed to fsspec for remote storage; never written into descriptions.
    split : str, optional
        Split of a DatasetDict (in memory or saved to disk); also the id prefix of a dataset.

    Returns
    -------
    Pool
    """
    if format not in _POOL_FORMATS:
        raise parameter_error("open_pool", "format", f"one of {list(_POOL_FORMATS)}", format)
    if id_column is not None and (not isinstance(id_column, str) or not id_column):
        raise parameter_error("open_pool", "id_column", "a column name or None", id_column)
    if split is not None and (not isinstance(split, str) or not split):
        raise parameter_error("open_pool", "split", "a split name or None", split)
    partition_rows = _check_partition_rows(partition_rows)
    options = dict(storage_options or {})
    if _is_hf_dataset(source):
        return _open_dataset(source, id_column=id_column, partition_rows=partition_rows, split=split)
    entries = _as_entries(source)
    if len(entries) == 1:
        saved = _saved_dataset_root(entries[0], options)
        if saved is not None or format == "hf_disk":
            if saved is None:
                raise InputDataError(f"{entries[0]} is not a folder written by datasets' save_to_disk (no state.json or dataset_dict.json).")
            return _open_saved_dataset(saved, options, id_column=id_column, partition_rows=partition_rows, split=split)
    if format == "hf_disk":
        raise parameter_error("open_pool", "source", "one save_to_disk folder when format='hf_disk'", source)
    if split is not None:
        raise parameter_error("open_pool", "split", "None for a pool of files (it applies to datasets only)", split)
    skipped: list[str] = []
    files = _resolve_files(entries, format, options, skipped)
    names = _id_names([url for url, _ in files])
    plans = [_plan_file(url, fmt, options, partition_rows) for url, fmt in files]
    schema = _pool_schema(plans)
    id_column = _check_id_column(id_column, schema, plans[0].source)
    partitions: list[PoolPartition] = []
    for plan in plans:
        for start, stop, byte_start, byte_stop in plan.ranges:
            partitions.append(PoolPartition(len(partitions), plan.source, plan.format, start, stop, byte_start, byte_stop))
    inputs = [f"{names[p.source]}|{p.format}|{p.key}" for p in plans]
    return Pool(
        partitions=partitions,
        n_rows=sum(p.n_rows for p in plans),
        column_names=_column_names(schema, id_column),
        fingerprint=fingerprint_of("pool", _FINGERPRINT_VERSION, {"id_column": id_column}, inputs),
        schema=schema,
        id_column=id_column,
        names=names,
        kind="files",
        partition_rows=partition_rows,
        files=[_file_record(p.source, p.key, options) for p in plans],
        skipped=skipped,
        storage_options=options,
    )


def reopen_pool(description: dict[str, Any], *, storage_options: dict[str, Any] | None = None, verify: bool = False) -> Pool:
    """Rebuild a pool from :meth:`Pool.describe` without scanning its files again.

    Parameters
    ----------
    description : dict
        What :meth:`Pool.describe` returned (for example from a manifest).
    storage_options : dict, optional
        fsspec options for remote files (descriptions never hold them).
    verify : bool, default False
        Recompute the fingerprint from the files and refuse a pool whose files changed.
    """
    if not isinstance(description, dict) or description.get("kind") != "pool":
        raise ArtifactError("This is not a pool description (no 'kind': 'pool'); pass what Pool.describe() returned.")
    if description.get("version", 0) > _DESCRIPTION_VERSION:
        raise ArtifactError(f"The pool description has version {description['version']}, newer than this thresher reads; upgrade thresher.")
    try:
        schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(description["schema"])))
        pool = Pool(
            partitions=[PoolPartition(**p) for p in description["partitions"]],
            n_rows=int(description["n_rows"]),
            column_names=list(description["column_names"]),
            fingerprint=description["fingerprint"],
            schema=schema,
            id_column=description["id_column"],
            names=dict(description["names"]),
            kind=description["source_kind"],
            partition_rows=int(description["partition_rows"]),
            dataset_files=description.get("dataset_files"),
            files=description.get("files"),
            skipped=list(description.get("skipped") or []),
            storage_options=dict(storage_options or {}),
        )
    except (KeyError, TypeError, ValueError, pa.ArrowInvalid) as exc:
        raise ArtifactError(f"The pool description is incomplete or corrupt: {exc!r}") from exc
    if pool.kind == "dataset":
        pool._dataset = _reload_dataset(pool)
    if verify:
        _verify(pool)
    return pool


def _check_partition_rows(partition_rows: int | None) -> int:
    if partition_rows is None:
        from thresher.config import runtime_config

        return runtime_config().partition_rows
    if isinstance(partition_rows, (bool, np.bool_)) or not isinstance(partition_rows, (int, np.integer)) or partition_rows < 1:
        raise parameter_error("open_pool", "partition_rows", "an int >= 1", partition_rows)
    return int(partition_rows)


def _row_ranges(n_rows: int, partition_rows: int) -> list[tuple[int, int, None, None]]:
    return [(start, min(start + partition_rows, n_rows), None, None) for start in range(0, n_rows, partition_rows)]


def _column_names(schema: pa.Schema, id_column: str | None) -> list[str]:
    return [name for name in schema.names if not (name == "id" and id_column == "id")]


def _check_id_column(id_column: str | None, schema: pa.Schema, where: str) -> str | None:
    """The id column to use: the one named, else a column called ``id`` when the data has one, else None (derived ids)."""
    if id_column is None:
        if "id" not in schema.names:
            return None
        id_column = "id"
    if id_column not in schema.names:
        raise InputDataError(f"The id column {id_column!r} is not in {where}; it has columns {schema.names}.")
    kind = schema.field(id_column).type
    if not (pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise InputDataError(f"The id column {id_column!r} of {where} holds {kind} values; ids must be integers or strings.")
    return id_column


def _id_type(kind: pa.DataType) -> pa.DataType:
    return pa.int64() if pa.types.is_integer(kind) else pa.string()


def _cast_to(table: pa.Table, schema: pa.Schema, where: str) -> pa.Table:
    """Give every column the pool's type (files may differ: int32 vs int64, or a column inferred as null)."""
    for i, name in enumerate(table.column_names):
        target = schema.field(name).type
        column = table.column(i)
        if column.type == target or pa.types.is_null(target):
            continue
        try:
            table = table.set_column(i, schema.field(name), column.cast(target))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise InputDataError(
                f"Column {name!r} of {where or 'the dataset'} holds {column.type} values that do not convert to the pool's type {target}: {exc}"
            ) from None
    return table


# ------------------------------------------------------------------------------------------------
# Finding the files
# ------------------------------------------------------------------------------------------------


def _is_hf_dataset(source: Any) -> bool:
    return type(source).__module__.split(".")[0] == "datasets" and type(source).__name__ in ("Dataset", "DatasetDict")


def _as_entries(source: Any) -> list[str]:
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


def _filesystem(url: str, options: dict[str, Any]) -> tuple[Any, str]:
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


def _is_local(fs: Any) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def _url(fs: Any, path: str) -> str:
    return path if _is_local(fs) else fs.unstrip_protocol(path)


def _resolve_files(
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
        fs, path = _filesystem(entry, options)
        if any(ch in path for ch in "*?["):
            matches = sorted(fs.glob(path))
            if not matches:
                raise InputDataError(f"No files match {entry!r}.")
            found = []
            for match in matches:
                if not fs.isdir(match):
                    found.append((match, _file_format(match, format)))
                elif _saved_dataset_root(_url(fs, match), options) is not None:
                    raise InputDataError(f"{entry} matches the save_to_disk folder {match}; open such a folder alone.")
                else:
                    found.extend(_directory_files(fs, match, format, entry, skipped))
        elif fs.isdir(path):
            if _saved_dataset_root(entry, options) is not None:
                raise InputDataError(f"{entry} is a save_to_disk folder; open it alone, not with other sources.")
            found = _directory_files(fs, path, format, entry, skipped)
        elif fs.exists(path):
            found = [(path, _file_format(path, format))]
        else:
            if _is_local(fs) and os.path.islink(path):
                _check_local_kind(path)  # a link loop or a dangling link: say which, not "does not exist"
            raise InputDataError(f"{entry} does not exist: no file, directory or glob match.")
        for path, fmt in found:
            if _is_local(fs):
                _check_local_kind(path)
            url = _url(fs, path)
            if url in seen:
                raise InputDataError(f"{url} is part of the pool twice; each file may appear once.")
            seen.add(url)
            out.append((url, fmt))
    return out


def _directory_files(fs: Any, root: str, format: str, entry: str, skipped: list[str]) -> list[tuple[str, str]]:
    """The data files under ``root``; what is left out goes to ``skipped`` (a hidden folder once, not each file in it)."""
    found = []
    passed: dict[str, str] = {}
    local = _is_local(fs)
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
        fmt = _extension_format(path)
        if fmt is None:
            passed[rel] = "not a supported extension"
            continue
        if format != "auto" and fmt != format:
            passed[rel] = f"a {fmt} file, not {format}"
            continue
        found.append((path, fmt))
    notes = [f"{_url(fs, posixpath.join(root, rel))} ({why})" for rel, why in passed.items()]
    if not found:
        wanted = "supported data files (.jsonl, .ndjson, .json, .parquet, .arrow, .csv)" if format == "auto" else f"{format} files"
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


def _extension_format(path: str) -> str | None:
    base = path.lower()
    if base.endswith(".gz"):
        fmt = _EXTENSIONS.get(posixpath.splitext(base[:-3])[1])
        return fmt if fmt in _GZIP_FORMATS else None
    return _EXTENSIONS.get(posixpath.splitext(base)[1])


def _file_format(path: str, format: str) -> str:
    if format != "auto":
        return format
    fmt = _extension_format(path)
    if fmt is None:
        raise InputDataError(
            f"Cannot tell the format of {path} from its extension; use .jsonl, .ndjson, .json, .parquet, .arrow or .csv "
            "(.gz for the text formats), or pass format=."
        )
    return fmt


def _id_names(urls: list[str]) -> dict[str, str]:
    """Id prefix of each file: its path relative to the files' common root (the basename for one file)."""
    paths = [_strip_protocol(u) for u in urls]
    if len(paths) == 1:
        return {urls[0]: posixpath.basename(paths[0])}
    root = posixpath.commonpath([posixpath.dirname(p) or "/" for p in paths])
    names = {u: posixpath.relpath(p, root) for u, p in zip(urls, paths)}
    if len(set(names.values())) != len(names):
        raise InputDataError(f"Two pool files have the same name relative to their common root {root}: {sorted(urls)}.")
    return names


def _strip_protocol(url: str) -> str:
    return url.split("://", 1)[1] if "://" in url else url.replace(os.sep, "/")


# ------------------------------------------------------------------------------------------------
# Planning one file
# ------------------------------------------------------------------------------------------------


@dataclass
class _FilePlan:
    source: str
    format: str
    n_rows: int
    schema: pa.Schema
    ranges: list[tuple[int, int, int | None, int | None]]
    key: str


@contextmanager
def _open_binary(source: str, options: dict[str, Any], *, mmap: bool = False) -> Iterator[Any]:
    fs, path = _filesystem(source, options)
    try:
        handle = (pa.memory_map(path) if mmap else open(path, "rb")) if _is_local(fs) else fs.open(path, "rb")
    except (OSError, pa.ArrowIOError) as exc:
        raise InputDataError(f"{source} cannot be opened: {exc}") from None
    try:
        yield handle
    finally:
        handle.close()


@contextmanager
def _open_text_stream(source: str, options: dict[str, Any], compressed: bool) -> Iterator[IO[bytes]]:
    with _open_binary(source, options) as raw:
        if not compressed:
            yield raw
            return
        with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
            yield stream


def _content_key(source: str, options: dict[str, Any]) -> str:
    """Content hash of a local file; the filesystem's checksum (ETag and the like) of a remote one."""
    fs, path = _filesystem(source, options)
    if _is_local(fs):
        return f"xxh3_128:{hash_file(path)}"
    return f"checksum:{fs.checksum(path)}"


def _plan_file(source: str, format: str, options: dict[str, Any], partition_rows: int) -> _FilePlan:
    compressed = source.lower().endswith(".gz")
    if not compressed:
        _refuse_unnamed_gzip(source, format, options)
    try:
        if format in ("json", "jsonl"):
            with _open_text_stream(source, options, compressed) as stream:
                is_array = _first_byte(stream) == b"["
            if format == "json" and is_array:
                return _plan_json_array(source, options, compressed)
            return _plan_jsonl(source, options, compressed, partition_rows)
        if format == "parquet":
            return _plan_parquet(source, options, partition_rows)
        if format == "arrow":
            return _plan_arrow(source, options, partition_rows)
        return _plan_csv(source, options, compressed, partition_rows)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise InputDataError(f"{source} cannot be read: {exc}") from None


def _refuse_unnamed_gzip(source: str, format: str, options: dict[str, Any]) -> None:
    """A gzip file without a .gz name would be parsed as garbage text (or fail with a misleading error): say what it is."""
    with _open_binary(source, options) as handle:
        magic = handle.read(2)
    if magic != b"\x1f\x8b":
        return
    base = posixpath.basename(_strip_protocol(source))
    ext = posixpath.splitext(base)[1] or "without an extension"
    if format in _GZIP_FORMATS:
        raise InputDataError(f"{source} is gzip-compressed but named {ext}; rename it {base}.gz (or decompress it).")
    raise InputDataError(f"{source} is gzip-compressed, and {format} files cannot be read compressed; decompress it (gunzip).")


def _first_byte(stream: IO[bytes]) -> bytes:
    while chunk := stream.read(1 << 16):
        stripped = chunk.lstrip(b" \t\r\n\xef\xbb\xbf")
        if stripped:
            return stripped[:1]
    return b""


def _empty(source: str) -> InputDataError:
    return InputDataError(f"{source} is empty: it holds no rows.")


def _plan_jsonl(source: str, options: dict[str, Any], compressed: bool, partition_rows: int) -> _FilePlan:
    fs, _ = _filesystem(source, options)
    hash_while_scanning = _is_local(fs) and not compressed
    hasher = xxhash.xxh3_128() if hash_while_scanning else None
    with _open_text_stream(source, options, compressed) as stream:
        scan = _scan_jsonl(stream, partition_rows, hasher=hasher)
    if scan.n_rows == 0:
        raise _empty(source)
    with _open_text_stream(source, options, compressed) as stream:
        schema = _jsonl_sample_schema(stream, source)
    if compressed:
        ranges: list[tuple[int, int, int | None, int | None]] = list(_row_ranges(scan.n_rows, partition_rows))
    else:
        bounds = scan.marks + [scan.n_bytes]
        ranges = [
            (k * partition_rows, min((k + 1) * partition_rows, scan.n_rows), bounds[k], bounds[k + 1]) for k in range(len(scan.marks))
        ]
    key = f"xxh3_128:{hasher.hexdigest()}" if hasher is not None else _content_key(source, options)
    return _FilePlan(source, "jsonl.gz" if compressed else "jsonl", scan.n_rows, schema, ranges, key)


@dataclass
class _Scan:
    n_rows: int
    marks: list[int]  # byte offset of rows 0, every, 2 * every, ...
    n_bytes: int


def _scan_jsonl(stream: IO[bytes], every: int, *, stop_row: int | None = None, hasher: Any = None) -> _Scan:
    """Count the non-blank lines of a stream in fixed-size chunks, with numpy (no Python loop per line).

    Records the byte offset of every ``every``-th row; stops early once more than ``stop_row`` rows are seen.
    """
    n_rows = 0
    marks: list[int] = []
    base = 0  # offset of the current chunk
    line_start = 0  # offset of the line still open at the end of the previous chunk
    line_has_content = False
    while chunk := stream.read(_CHUNK):
        if hasher is not None:
            hasher.update(chunk)
        data = np.frombuffer(chunk, dtype=np.uint8)
        content = ~_BLANK[data]
        newlines = np.flatnonzero(data == 10)
        if newlines.size == 0:
            line_has_content = line_has_content or bool(content.any())
            base += len(data)
            continue
        # Line i of this chunk spans [starts[i], newlines[i]]; the first one continues the open line.
        starts = np.concatenate(([0], newlines[:-1] + 1))
        has = np.logical_or.reduceat(content[: newlines[-1] + 1], starts)
        has[0] = has[0] or line_has_content
        row_starts = (base + starts)[has]
        if has[0]:
            row_starts[0] = line_start
        numbers = n_rows + np.arange(len(row_starts))
        marks.extend(row_starts[numbers % every == 0].tolist())
        n_rows += len(row_starts)
        line_start = base + int(newlines[-1]) + 1
        line_has_content = bool(content[newlines[-1] + 1 :].any())
        base += len(data)
        if stop_row is not None and n_rows > stop_row:
            return _Scan(n_rows, marks, base)
    if line_has_content:
        if n_rows % every == 0:
            marks.append(line_start)
        n_rows += 1
    return _Scan(n_rows, marks, base)


def _jsonl_sample_schema(stream: IO[bytes], source: str) -> pa.Schema:
    """Column types inferred from the first ~1 MiB of whole lines."""
    data = b""
    while len(data) < _SAMPLE_BYTES or b"\n" not in data:
        chunk = stream.read(_SAMPLE_BYTES)
        if not chunk:
            break
        data += chunk
    else:
        data = data[: data.rindex(b"\n") + 1]
    return _parse_jsonl(data, source, first_line=1, schema=None).schema


def _parse_jsonl(data: bytes, source: str, *, first_line: int | None, schema: pa.Schema | None, locate: Any = None) -> pa.Table:
    """Parse JSON Lines bytes with pyarrow (columns not in ``schema`` are inferred); name the bad line on failure."""
    import pyarrow.json as pj

    _check_utf8(data, source, first_line, locate)
    explicit = None if schema is None else pa.schema([f for f in schema if not pa.types.is_null(f.type)])
    parse = pj.ParseOptions(explicit_schema=explicit, unexpected_field_behavior="infer")
    block = 1 << 20
    while True:
        try:
            return pj.read_json(pa.BufferReader(data), read_options=pj.ReadOptions(block_size=block), parse_options=parse)
        except pa.ArrowInvalid as exc:
            message = str(exc)
            if "straddl" in message and block < len(data):
                block = min(max(block * 8, 1), len(data) + 1)  # one line longer than a block: use bigger blocks
                continue
            line = first_line if first_line is not None else locate()
            bad = _locate_json_error(data, source, line)
            if bad is not None:
                raise bad from None
            raise InputDataError(f"The JSON Lines of {source} from line {line} on hold values of conflicting types: {message}") from None


def _check_utf8(data: bytes, source: str, first_line: int | None, locate: Any) -> None:
    """Refuse bytes that are not UTF-8, naming the line: pyarrow's JSON reader lets them through into string columns."""
    offsets = pa.py_buffer(np.array([0, len(data)], dtype=np.int64))
    try:
        pa.LargeStringArray.from_buffers(1, offsets, pa.py_buffer(data)).validate(full=True)  # no copy, unlike bytes.decode
    except pa.ArrowInvalid:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = (first_line if first_line is not None else locate()) + data.count(b"\n", 0, exc.start)
            raise InputDataError(
                f"Line {line} of {source} is not valid UTF-8 (byte {data[exc.start]:#04x}); pool files must be UTF-8 encoded."
            ) from None
        raise


def _locate_json_error(data: bytes, source: str, first_line: int) -> InputDataError | None:
    for offset, line in enumerate(data.split(b"\n")):
        if not line.strip(b" \t\r"):
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            return InputDataError(f"Line {first_line + offset} of {source} is not valid JSON: {exc}.")
        if not isinstance(value, dict):
            return InputDataError(
                f"Line {first_line + offset} of {source} is a JSON {type(value).__name__}, not an object; each line must be one JSON object."
            )
        surrogate = _lone_surrogate(value)
        if surrogate is not None:
            return _surrogate_error(f"Line {first_line + offset} of {source}", surrogate)
    return None


def _lone_surrogate(value: Any) -> str | None:
    """The first lone UTF-16 surrogate (a JSON escape like \\ud800 with no partner) in a parsed JSON value, or None."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.object[exc.start]
    return None


def _surrogate_error(where: str, surrogate: str) -> InputDataError:
    return InputDataError(
        f"{where} holds the lone surrogate \\u{ord(surrogate):04x} in a string: half of a UTF-16 pair, not a character, "
        "so the text cannot be stored; fix or drop that escape."
    )


def _plan_json_array(source: str, options: dict[str, Any], compressed: bool) -> _FilePlan:
    table = _read_json_array(source, options, compressed)
    if table.num_rows == 0:
        raise _empty(source)
    fmt = "json.gz" if compressed else "json"
    return _FilePlan(source, fmt, table.num_rows, table.schema, [(0, table.num_rows, None, None)], _content_key(source, options))


def _read_json_array(source: str, options: dict[str, Any], compressed: bool) -> pa.Table:
    with _open_text_stream(source, options, compressed) as stream:
        raw = stream.read()
    try:
        rows = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InputDataError(f"Line {exc.lineno} of {source} is not valid JSON: {exc.msg} (column {exc.colno}).") from None
    except ValueError as exc:
        raise InputDataError(f"{source} is not valid JSON: {exc}.") from None
    if not isinstance(rows, list):
        raise InputDataError(f"{source} holds a JSON {type(rows).__name__}; a .json pool file must hold an array of objects (or JSON Lines).")
    for position, row in enumerate(rows):
        if not isinstance(row, dict):
            raise InputDataError(f"Element {position} of the JSON array in {source} is a {type(row).__name__}, not an object.")
    if not rows:
        return pa.table({})
    try:
        return pa.Table.from_struct_array(pa.array(rows))
    except UnicodeEncodeError:
        position, surrogate = next((i, c) for i, row in enumerate(rows) if (c := _lone_surrogate(row)) is not None)
        raise _surrogate_error(f"Element {position} of the JSON array in {source}", surrogate) from None
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InputDataError(f"The objects in {source} hold values of conflicting types: {exc}") from None


def _plan_parquet(source: str, options: dict[str, Any], partition_rows: int) -> _FilePlan:
    import pyarrow.parquet as pq

    with _open_binary(source, options, mmap=True) as handle:
        try:
            meta = pq.ParquetFile(handle)
            n_rows, schema = meta.metadata.num_rows, meta.schema_arrow
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputDataError(f"{source} is not a readable Parquet file: {exc}") from None
    if n_rows == 0:
        raise _empty(source)
    return _FilePlan(source, "parquet", n_rows, schema, list(_row_ranges(n_rows, partition_rows)), _content_key(source, options))


def _plan_arrow(source: str, options: dict[str, Any], partition_rows: int) -> _FilePlan:
    with _open_binary(source, options, mmap=True) as handle:
        fmt = _arrow_kind(handle)
        try:
            batches = _arrow_batches(handle, fmt)
            schema = next(batches)
            n_rows = sum(batch.num_rows for batch in batches)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputDataError(f"{source} is not a readable Arrow IPC file or stream: {exc}") from None
    if n_rows == 0:
        raise _empty(source)
    return _FilePlan(source, fmt, n_rows, schema, list(_row_ranges(n_rows, partition_rows)), _content_key(source, options))


def _arrow_kind(handle: Any) -> str:
    magic = handle.read(6)
    handle.seek(0)
    return "arrow.file" if magic == b"ARROW1" else "arrow.stream"


def _arrow_batches(handle: Any, fmt: str) -> Iterator[Any]:
    """Yield the schema, then each record batch in order."""
    if fmt == "arrow.file":
        reader = pa.ipc.open_file(handle)
        yield reader.schema
        for i in range(reader.num_record_batches):
            yield reader.get_batch(i)
    else:
        reader = pa.ipc.open_stream(handle)
        yield reader.schema
        yield from reader


def _plan_csv(source: str, options: dict[str, Any], compressed: bool, partition_rows: int) -> _FilePlan:
    n_rows = 0
    with _csv_reader(source, options, compressed) as reader:
        schema = reader.schema
        try:
            for batch in reader:
                n_rows += batch.num_rows
        except pa.ArrowInvalid as exc:
            raise InputDataError(f"{source} is not a readable CSV file (after row {n_rows}): {exc}") from None
    if n_rows == 0:
        raise _empty(source)
    fmt = "csv.gz" if compressed else "csv"
    return _FilePlan(source, fmt, n_rows, schema, list(_row_ranges(n_rows, partition_rows)), _content_key(source, options))


@contextmanager
def _csv_reader(
    source: str,
    options: dict[str, Any],
    compressed: bool,
    *,
    skip_rows: int = 0,
    schema: pa.Schema | None = None,
    columns: list[str] | None = None,
) -> Iterator[Any]:
    import pyarrow.csv as pcsv

    read = pcsv.ReadOptions(skip_rows_after_names=skip_rows, block_size=4 << 20)
    convert = pcsv.ConvertOptions(
        column_types=None if schema is None else {f.name: f.type for f in schema if not pa.types.is_null(f.type)},
        include_columns=columns,
    )
    with _open_text_stream(source, options, compressed) as stream:
        try:
            # Quoted values may hold newlines: correct parsing over faster block splitting.
            parse = pcsv.ParseOptions(newlines_in_values=True)
            reader = pcsv.open_csv(stream, read_options=read, parse_options=parse, convert_options=convert)
        except pa.ArrowInvalid as exc:
            message = str(exc)
            if "Empty CSV file" in message:
                raise _empty(source) from None
            raise InputDataError(f"{source} is not a readable CSV file: {message}") from None
        yield reader


def _pool_schema(plans: list[_FilePlan]) -> pa.Schema:
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


# ------------------------------------------------------------------------------------------------
# Reading one partition of a file
# ------------------------------------------------------------------------------------------------


def _read_jsonl(pool: Pool, part: PoolPartition, columns: list[str]) -> pa.Table:
    options = pool.storage_options
    if part.format == "jsonl":
        with _open_binary(part.source, options) as handle:
            handle.seek(part.byte_start)
            data = handle.read(part.byte_stop - part.byte_start)

        def locate() -> int:
            with _open_binary(part.source, options) as handle:
                return _count_newlines(handle, part.byte_start) + 1

    else:
        start, stop = _gz_offsets(part, pool.partition_rows, options)
        with _open_text_stream(part.source, options, True) as stream:
            _skip(stream, start)
            data = stream.read(stop - start)

        def locate() -> int:
            with _open_text_stream(part.source, options, True) as stream:
                return _count_newlines(stream, start) + 1

    table = _parse_jsonl(data, part.source, first_line=None, schema=pool.schema, locate=locate)
    return _with_columns(table, pool.schema, columns)


def _gz_offsets(part: PoolPartition, partition_rows: int, options: dict[str, Any]) -> tuple[int, int]:
    """Offsets of the partition's first row and of the row after its last, in the decompressed stream."""
    with _open_text_stream(part.source, options, True) as stream:
        scan = _scan_jsonl(stream, partition_rows, stop_row=part.stop)
    k = part.start // partition_rows
    if k >= len(scan.marks):
        return scan.n_bytes, scan.n_bytes
    stop = scan.marks[k + 1] if k + 1 < len(scan.marks) else scan.n_bytes
    return scan.marks[k], stop


def _skip(stream: IO[bytes], n_bytes: int) -> None:
    while n_bytes > 0:
        chunk = stream.read(min(n_bytes, _CHUNK))
        if not chunk:
            return
        n_bytes -= len(chunk)


def _count_newlines(stream: IO[bytes], n_bytes: int) -> int:
    count = 0
    while n_bytes > 0:
        chunk = stream.read(min(n_bytes, _CHUNK))
        if not chunk:
            break
        count += chunk.count(b"\n")
        n_bytes -= len(chunk)
    return count


def _with_columns(table: pa.Table, schema: pa.Schema, columns: list[str]) -> pa.Table:
    """``columns`` in order; one absent from these rows (a sparse JSON key) comes back as nulls."""
    arrays = []
    for name in columns:
        if name in table.column_names:
            arrays.append(table.column(name))
        else:
            arrays.append(pa.nulls(table.num_rows, schema.field(name).type))
    return pa.Table.from_arrays(arrays, names=columns)


def _read_json_file(pool: Pool, part: PoolPartition, columns: list[str]) -> pa.Table:
    table = _read_json_array(part.source, pool.storage_options, part.format == "json.gz")
    return _with_columns(table, pool.schema, columns).slice(part.start, part.n_rows)


def _read_parquet(pool: Pool, part: PoolPartition, columns: list[str]) -> pa.Table:
    """Only the row groups overlapping the partition, streamed in batches and cut to its rows."""
    import pyarrow.parquet as pq

    with _open_binary(part.source, pool.storage_options, mmap=True) as handle:
        reader = pq.ParquetFile(handle)
        meta = reader.metadata
        offsets = np.concatenate(([0], np.cumsum([meta.row_group(i).num_rows for i in range(meta.num_row_groups)])))
        groups = [i for i in range(meta.num_row_groups) if offsets[i] < part.stop and offsets[i + 1] > part.start]
        batches = reader.iter_batches(batch_size=_BATCH_ROWS, row_groups=groups, columns=columns, use_threads=True)
        first_row = int(offsets[groups[0]]) if groups else part.start
        return _cut(batches, first_row, part, _arrow_subschema(reader.schema_arrow, columns))


def _read_arrow(pool: Pool, part: PoolPartition, columns: list[str]) -> pa.Table:
    with _open_binary(part.source, pool.storage_options, mmap=True) as handle:
        batches = _arrow_batches(handle, part.format)
        schema = next(batches)
        selected = (batch.select(columns) for batch in batches)
        return _cut(selected, 0, part, _arrow_subschema(schema, columns))


def _read_csv(pool: Pool, part: PoolPartition, columns: list[str]) -> pa.Table:
    # pyarrow skips the rows before the partition while parsing (no conversion): cost grows with `start`.
    with _csv_reader(
        part.source, pool.storage_options, part.format == "csv.gz", skip_rows=part.start, schema=pool.schema, columns=columns
    ) as reader:
        try:
            return _cut(reader, part.start, part, _arrow_subschema(reader.schema, columns))
        except pa.ArrowInvalid as exc:
            raise InputDataError(f"{part.source} is not a readable CSV file (rows {part.start}..{part.stop - 1}): {exc}") from None


def _arrow_subschema(schema: pa.Schema, columns: list[str]) -> pa.Schema:
    return pa.schema([schema.field(name) for name in columns])


def _cut(batches: Iterator[Any], first_row: int, part: PoolPartition, schema: pa.Schema) -> pa.Table:
    """Concatenate the batches' rows within ``[part.start, part.stop)``; ``first_row`` is the first batch's row."""
    kept = []
    row = first_row
    for batch in batches:
        lo, hi = max(part.start, row), min(part.stop, row + batch.num_rows)
        if hi > lo:
            kept.append(batch.slice(lo - row, hi - lo))
        row += batch.num_rows
        if row >= part.stop:
            break
    return pa.Table.from_batches(kept, schema=schema)


_READERS = {
    "jsonl": _read_jsonl,
    "jsonl.gz": _read_jsonl,
    "json": _read_json_file,
    "json.gz": _read_json_file,
    "parquet": _read_parquet,
    "arrow.file": _read_arrow,
    "arrow.stream": _read_arrow,
    "csv": _read_csv,
    "csv.gz": _read_csv,
}


# ------------------------------------------------------------------------------------------------
# HF datasets: in memory and saved to disk
# ------------------------------------------------------------------------------------------------


def _select_split(dataset: Any, split: str | None) -> Any:
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        splits = sorted(dataset.keys())
        if split is None:
            raise InputDataError(f"The pool is a DatasetDict with splits {splits}; pass split= to choose one.")
        if split not in dataset:
            raise InputDataError(f"The DatasetDict has no split {split!r}; it has splits {splits}.")
        return dataset[split]
    return dataset


def _open_dataset(source: Any, *, id_column: str | None, partition_rows: int, split: str | None) -> Pool:
    dataset = _select_split(source, split)
    name = split or "data"
    schema = dataset.features.arrow_schema
    id_column = _check_id_column(id_column, schema, "the dataset")
    if len(dataset) == 0:
        raise InputDataError("The dataset is empty: it holds no rows.")
    ranges = _row_ranges(len(dataset), partition_rows)
    partitions = [PoolPartition(k, "", "dataset", start, stop) for k, (start, stop, _, _) in enumerate(ranges)]
    params = {"id_column": id_column, "format": "dataset", "name": name}
    return Pool(
        partitions=partitions,
        n_rows=len(dataset),
        column_names=_column_names(schema, id_column),
        fingerprint=fingerprint_of("pool", _FINGERPRINT_VERSION, params, [dataset._fingerprint]),
        schema=schema,
        id_column=id_column,
        names={"": name},
        kind="dataset",
        partition_rows=partition_rows,
        dataset_files=_memory_mapped_files(dataset),
        _dataset=dataset,
    )


def _memory_mapped_files(dataset: Any) -> list[str] | None:
    """The Arrow files that hold exactly this dataset's rows and columns, or None if it has other state.

    A dataset read from cache files with no row selection, column change or in-memory part can be
    reopened from those files; any other dataset can only be reopened from the object itself.
    """
    from datasets.table import ConcatenationTable, MemoryMappedTable

    if getattr(dataset, "_indices", None) is not None:
        return None
    table = dataset.data
    if isinstance(table, MemoryMappedTable):
        rows = [[table]]
    elif isinstance(table, ConcatenationTable):
        rows = table.blocks
    else:
        return None
    files = []
    for row in rows:
        if len(row) != 1 or not isinstance(row[0], MemoryMappedTable) or row[0].replays:
            return None
        files.append(row[0].path)
    return files


def _reload_dataset(pool: Pool) -> Any:
    import datasets

    if not pool.dataset_files:
        raise InputDataError(
            "This pool came from an in-memory datasets.Dataset that no cache files back; it cannot be reopened from its "
            "description. Save the dataset with save_to_disk and open that folder, or open the dataset object again."
        )
    try:
        parts = [datasets.Dataset.from_file(path) for path in pool.dataset_files]
    except (FileNotFoundError, OSError, pa.ArrowInvalid) as exc:
        raise ArtifactError(f"The dataset files of the pool cannot be read: {exc}") from None
    dataset = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    if len(dataset) != pool.n_rows or not set(pool.column_names) <= set(dataset.column_names):
        raise ArtifactError(f"The dataset files {pool.dataset_files} no longer hold the pool's {pool.n_rows} rows and columns {pool.column_names}.")
    return dataset


def _saved_dataset_root(entry: str, options: dict[str, Any]) -> str | None:
    """``entry`` as a URL if it is a save_to_disk folder (of a Dataset or a DatasetDict), else None."""
    fs, path = _filesystem(entry, options)
    if any(ch in path for ch in "*?[") or not fs.isdir(path):
        return None
    if fs.isfile(posixpath.join(path, "dataset_dict.json")) or (
        fs.isfile(posixpath.join(path, "state.json")) and fs.isfile(posixpath.join(path, "dataset_info.json"))
    ):
        return _url(fs, path)
    return None


def _open_saved_dataset(root: str, options: dict[str, Any], *, id_column: str | None, partition_rows: int, split: str | None) -> Pool:
    fs, path = _filesystem(root, options)
    dict_file = posixpath.join(path, "dataset_dict.json")
    if fs.isfile(dict_file):
        splits = sorted(json.loads(fs.cat_file(dict_file)).get("splits", []))
        if split is None:
            raise InputDataError(f"{root} holds a DatasetDict with splits {splits}; pass split= to choose one.")
        if split not in splits:
            raise InputDataError(f"{root} has no split {split!r}; it has splits {splits}.")
        path = posixpath.join(path, split)
    source = _url(fs, path)
    name = split or "data"
    urls = _saved_files(source, options)
    keys = [_content_key(url, options) for url in urls]
    fingerprint = _saved_fingerprint(source, options, id_column, name, keys)
    dataset = _load_saved_dataset(source, _options_key(options), fingerprint)
    schema = dataset.features.arrow_schema
    id_column = _check_id_column(id_column, schema, source)
    if len(dataset) == 0:
        raise _empty(source)
    partitions = [
        PoolPartition(k, source, "hf_disk", start, stop) for k, (start, stop, _, _) in enumerate(_row_ranges(len(dataset), partition_rows))
    ]
    return Pool(
        partitions=partitions,
        n_rows=len(dataset),
        column_names=_column_names(schema, id_column),
        fingerprint=fingerprint,
        schema=schema,
        id_column=id_column,
        names={source: name},
        kind="hf_disk",
        partition_rows=partition_rows,
        files=[_file_record(url, key, options) for url, key in zip(urls, keys)],
        storage_options=options,
    )


def _saved_files(source: str, options: dict[str, Any]) -> list[str]:
    """URLs of the Arrow files of a save_to_disk folder, from its state.json."""
    fs, path = _filesystem(source, options)
    state = json.loads(fs.cat_file(posixpath.join(path, "state.json")))
    return [_url(fs, posixpath.join(path, f["filename"])) for f in state.get("_data_files", [])]


def _saved_fingerprint(source: str, options: dict[str, Any], id_column: str | None, name: str, keys: list[str] | None = None) -> str:
    if keys is None:
        keys = [_content_key(url, options) for url in _saved_files(source, options)]
    return fingerprint_of("pool", _FINGERPRINT_VERSION, {"id_column": id_column, "format": "hf_disk", "name": name}, keys)


def _options_key(options: dict[str, Any]) -> str:
    return canonical_json(options)


@lru_cache(maxsize=8)
def _load_saved_dataset(source: str, options_key: str, fingerprint: str) -> Any:
    """Memory-map a save_to_disk folder once per process (Dask workers read many partitions of it).

    The pool's fingerprint is part of the cache key, so a folder saved again with other content is loaded afresh.
    """
    import datasets

    try:
        return datasets.load_from_disk(source, storage_options=json.loads(options_key) or None)
    except (FileNotFoundError, OSError, ValueError) as exc:
        raise InputDataError(f"{source} is not a readable save_to_disk folder: {exc}") from None


# ------------------------------------------------------------------------------------------------
# Verification
# ------------------------------------------------------------------------------------------------


def _file_record(source: str, key: str, options: dict[str, Any]) -> dict[str, Any]:
    """What :func:`check_pool_files` compares later: the content key, plus size and mtime of a local file (its fast path)."""
    record: dict[str, Any] = {"source": source, "checksum": key, "size": None, "mtime_ns": None}
    fs, path = _filesystem(source, options)
    if _is_local(fs):
        stat = os.stat(path)
        record.update(size=stat.st_size, mtime_ns=stat.st_mtime_ns)
    return record


def check_pool_files(pool: Pool, where: str) -> None:
    """Refuse a pool whose files changed since ``where`` (an embedding store) was made from them.

    Cheap when nothing changed: a local file with the recorded size and
    mtime_ns is taken as unchanged; any other is hashed again and must give
    the recorded content key (so a file only touched, or copied elsewhere
    with the same bytes, is accepted). Remote files are compared by the
    filesystem's checksum. A description without per-file records (written
    before they were kept) is checked by recomputing the pool's whole
    fingerprint, which hashes every file.

    Raises
    ------
    InputDataError
        Naming the first changed or missing file and ``where``.
    """
    if pool.files is None:
        if pool.kind == "dataset":
            return  # an in-memory dataset: reopen_pool checked its rows and columns against the description
        try:
            _verify(pool)
        except InputDataError:
            raise InputDataError(
                f"The pool files of {where} changed since they were embedded (the pool's fingerprint differs); re-embed them or restore the files."
            ) from None
        return
    for record in pool.files:
        source = record["source"]
        fs, path = _filesystem(source, pool.storage_options)
        if _is_local(fs):
            try:
                stat = os.stat(path)
            except OSError:
                raise InputDataError(f"Pool file {source} embedded into {where} is missing; restore it or re-embed the pool.") from None
            if stat.st_size == record.get("size") and stat.st_mtime_ns == record.get("mtime_ns"):
                continue
        try:
            key = _content_key(source, pool.storage_options)
        except (OSError, FileNotFoundError):
            raise InputDataError(f"Pool file {source} embedded into {where} cannot be read; restore it or re-embed the pool.") from None
        if key != record.get("checksum"):
            raise InputDataError(
                f"Pool file {source} changed since it was embedded into {where} (content differs); re-embed it or restore the file."
            )


def _verify(pool: Pool) -> None:
    if pool.kind == "files":
        sources = list(dict.fromkeys(p.source for p in pool.partitions))
        formats = {p.source: p.format for p in pool.partitions}
        inputs = [f"{pool.names[s]}|{formats[s]}|{_content_key(s, pool.storage_options)}" for s in sources]
        fingerprint = fingerprint_of("pool", _FINGERPRINT_VERSION, {"id_column": pool.id_column}, inputs)
    elif pool.kind == "hf_disk":
        source = pool.partitions[0].source
        fingerprint = _saved_fingerprint(source, pool.storage_options, pool.id_column, pool.names[source])
    else:
        return  # the reloaded dataset was checked against the description's row count and columns
    if fingerprint != pool.fingerprint:
        raise InputDataError(f"The pool's files changed since it was described (fingerprint {fingerprint}, described {pool.fingerprint}).")
