"""Arrow IPC pool files, in the file format (``ARROW1`` magic) or the stream format: rows counted from record batches."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from thresher.exceptions import InputDataError
from thresher.stores.pool.fs import content_key, open_binary
from thresher.stores.pool.partition import FilePlan, PoolPartition, cut_batches, empty_source_error, row_ranges, subschema

if TYPE_CHECKING:
    from thresher.stores.pool.core import Pool


def plan_arrow(source: str, options: dict[str, Any], compressed: bool, partition_rows: int) -> FilePlan:
    """Plan a Arrow IPC file. ``compressed`` (a .gz name) is not looked at: Arrow IPC is never read compressed, so such a file fails to parse."""
    with open_binary(source, options, mmap=True) as handle:
        fmt = _arrow_kind(handle)
        try:
            batches = _arrow_batches(handle, fmt)
            schema = next(batches)
            n_rows = sum(batch.num_rows for batch in batches)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputDataError(f"{source} is not a readable Arrow IPC file or stream: {exc}") from None
    if n_rows == 0:
        raise empty_source_error(source)
    return FilePlan(source, fmt, n_rows, schema, list(row_ranges(n_rows, partition_rows)), content_key(source, options))


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


def read_arrow(pool: Pool, part: PoolPartition, columns: list[str]) -> pa.Table:
    with open_binary(part.source, pool.storage_options, mmap=True) as handle:
        batches = _arrow_batches(handle, part.format)
        schema = next(batches)
        selected = (batch.select(columns) for batch in batches)
        return cut_batches(selected, 0, part, subschema(schema, columns))
