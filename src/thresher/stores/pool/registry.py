"""The input formats a pool reads, in one table: adding a format is one module plus one entry here.

A format says which file names it claims, whether it reads them gzip-compressed,
how to plan a file (count its rows, infer its schema, hash it, split it into
row ranges) and how to read one partition's rows. The formats a partition
records (``PoolPartition.format``) are finer than the names users pass
(``format="arrow"`` plans as "arrow.file" or "arrow.stream"); ``read_formats``
lists them, and :func:`reader_for` finds the reader of each.

Hashing is shared: a file's content key is its xxh3 hash (computed while
scanning for uncompressed JSON Lines) or the remote filesystem's checksum,
and the pool's fingerprint hashes each file's id name, partition format and
key (:mod:`thresher.stores.pool.opening`).

HF datasets (``hf_disk`` and in-memory datasets) are not files: they are opened
by :mod:`thresher.stores.pool.hf_datasets` and have no ``plan`` here, only readers.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, get_args

import pyarrow as pa

from thresher.stores.pool import arrow, csv, hf_datasets, jsonl, parquet
from thresher.stores.pool.core import PoolFormat
from thresher.stores.pool.partition import FilePlan, PoolPartition

if TYPE_CHECKING:
    from thresher.stores.pool.core import Pool

PlanFile = Callable[[str, dict[str, Any], bool, int], FilePlan]
"""``plan(source, storage_options, compressed, partition_rows)``: a planned file."""
ReadPartition = Callable[["Pool", PoolPartition, list[str]], pa.Table]
"""``read(pool, partition, columns)``: the partition's rows, those columns in that order."""


@dataclass(frozen=True)
class InputFormat:
    """One input format of a pool.

    Attributes
    ----------
    name : str
        The value of ``open_pool(format=...)``.
    extensions : tuple of str
        File name endings read as this format by ``format="auto"`` (lower case, with the dot).
    gzip : bool
        Whether ``<name><extension>.gz`` files are read, decompressed while streaming.
    read_formats : tuple of str
        The ``PoolPartition.format`` values its plans record.
    read : callable
        Reads one partition (see :data:`ReadPartition`).
    plan : callable or None
        Plans one file (see :data:`PlanFile`); None for sources that are not files.
    """

    name: str
    extensions: tuple[str, ...]
    gzip: bool
    read_formats: tuple[str, ...]
    read: ReadPartition
    plan: PlanFile | None = None


FORMATS: dict[str, InputFormat] = {
    f.name: f
    for f in (
        InputFormat("jsonl", (".jsonl", ".ndjson"), True, ("jsonl", "jsonl.gz"), jsonl.read_jsonl, jsonl.plan_jsonl),
        InputFormat("json", (".json",), True, ("json", "json.gz"), jsonl.read_json_file, jsonl.plan_json),
        InputFormat("parquet", (".parquet",), False, ("parquet",), parquet.read_parquet, parquet.plan_parquet),
        InputFormat("arrow", (".arrow",), False, ("arrow.file", "arrow.stream"), arrow.read_arrow, arrow.plan_arrow),
        InputFormat("csv", (".csv",), True, ("csv", "csv.gz"), csv.read_csv, csv.plan_csv),
        InputFormat("hf_disk", (), False, ("hf_disk",), hf_datasets.read_saved),
        InputFormat("dataset", (), False, ("dataset",), hf_datasets.read_in_memory),
    )
}
"""Every input format by name; "dataset" (an in-memory dataset) is chosen by the source's type, never by ``format=``."""

POOL_FORMATS = get_args(PoolFormat)
"""The values ``open_pool(format=...)`` accepts."""

SUPPORTED_EXTENSIONS = ", ".join(ext for f in FORMATS.values() for ext in f.extensions)

_BY_EXTENSION = {ext: f.name for f in FORMATS.values() for ext in f.extensions}
_READERS = {kind: f.read for f in FORMATS.values() for kind in f.read_formats}


def extension_format(path: str) -> str | None:
    """The format a file's name says (``.gz`` only for formats read compressed), or None."""
    base = path.lower()
    if base.endswith(".gz"):
        fmt = _BY_EXTENSION.get(posixpath.splitext(base[:-3])[1])
        return fmt if fmt is not None and FORMATS[fmt].gzip else None
    return _BY_EXTENSION.get(posixpath.splitext(base)[1])


def reader_for(read_format: str) -> ReadPartition:
    """The function reading partitions whose ``format`` is ``read_format`` (e.g. "arrow.stream")."""
    return _READERS[read_format]
