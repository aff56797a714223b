"""The pieces shared by every input format: a partition, a planned file, and cutting rows out of batches."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from thresher.exceptions import InputDataError


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


@dataclass
class FilePlan:
    source: str
    format: str
    n_rows: int
    schema: pa.Schema
    ranges: list[tuple[int, int, int | None, int | None]]
    key: str


def row_ranges(n_rows: int, partition_rows: int) -> list[tuple[int, int, None, None]]:
    return [(start, min(start + partition_rows, n_rows), None, None) for start in range(0, n_rows, partition_rows)]


def empty_source_error(source: str) -> InputDataError:
    return InputDataError(f"{source} is empty: it holds no rows.")


def subschema(schema: pa.Schema, columns: list[str]) -> pa.Schema:
    return pa.schema([schema.field(name) for name in columns])


def cut_batches(batches: Iterator[Any], first_row: int, part: PoolPartition, schema: pa.Schema) -> pa.Table:
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
