"""CSV pool files, optionally gzip-compressed: rows counted by a streaming parse, quoted newlines allowed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from thresher.exceptions import InputDataError
from thresher.stores.pool.fs import content_key, open_text_stream
from thresher.stores.pool.partition import FilePlan, PoolPartition, cut_batches, empty_source_error, row_ranges, subschema

if TYPE_CHECKING:
    from thresher.stores.pool.core import Pool


def plan_csv(source: str, options: dict[str, Any], compressed: bool, partition_rows: int) -> FilePlan:
    n_rows = 0
    with _csv_reader(source, options, compressed) as reader:
        schema = reader.schema
        try:
            for batch in reader:
                n_rows += batch.num_rows
        except pa.ArrowInvalid as exc:
            raise InputDataError(f"{source} is not a readable CSV file (after row {n_rows}): {exc}") from None
    if n_rows == 0:
        raise empty_source_error(source)
    fmt = "csv.gz" if compressed else "csv"
    return FilePlan(source, fmt, n_rows, schema, list(row_ranges(n_rows, partition_rows)), content_key(source, options))


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
    with open_text_stream(source, options, compressed) as stream:
        try:
            # Quoted values may hold newlines: correct parsing over faster block splitting.
            parse = pcsv.ParseOptions(newlines_in_values=True)
            reader = pcsv.open_csv(stream, read_options=read, parse_options=parse, convert_options=convert)
        except pa.ArrowInvalid as exc:
            message = str(exc)
            if "Empty CSV file" in message:
                raise empty_source_error(source) from None
            raise InputDataError(f"{source} is not a readable CSV file: {message}") from None
        yield reader


def read_csv(pool: Pool, part: PoolPartition, columns: list[str]) -> pa.Table:
    # pyarrow skips the rows before the partition while parsing (no conversion): cost grows with `start`.
    with _csv_reader(
        part.source, pool.storage_options, part.format == "csv.gz", skip_rows=part.start, schema=pool.schema, columns=columns
    ) as reader:
        try:
            return cut_batches(reader, part.start, part, subschema(reader.schema, columns))
        except pa.ArrowInvalid as exc:
            raise InputDataError(f"{part.source} is not a readable CSV file (rows {part.start}..{part.stop - 1}): {exc}") from None
