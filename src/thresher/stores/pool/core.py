"""The planned pool: :class:`Pool`, its description, and reading a partition with its ids."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.exceptions import InputDataError, parameter_error
from thresher.stores.pool.partition import PoolPartition


PoolFormat = Literal["auto", "jsonl", "json", "parquet", "arrow", "csv", "hf_disk"]
DESCRIPTION_VERSION = 1  # of Pool.describe()
FINGERPRINT_VERSION = 1  # of pool fingerprints: bumping it changes every pool's fingerprint


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
            "version": DESCRIPTION_VERSION,
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
        from thresher.stores.pool.registry import reader_for  # the formats import this module

        read = columns or self.schema.names[:1]
        table = reader_for(part.format)(self, part, read)
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


def column_names(schema: pa.Schema, id_column: str | None) -> list[str]:
    return [name for name in schema.names if not (name == "id" and id_column == "id")]


def check_id_column(id_column: str | None, schema: pa.Schema, where: str) -> str | None:
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
