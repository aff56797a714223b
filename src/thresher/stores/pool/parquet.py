"""Parquet pool files: row counts from the footer, partitions read from the row groups they overlap."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from thresher.exceptions import InputDataError
from thresher.stores.pool.fs import content_key, open_binary
from thresher.stores.pool.partition import FilePlan, PoolPartition, cut_batches, empty_source_error, row_ranges, subschema

if TYPE_CHECKING:
    from thresher.stores.pool.core import Pool

_BATCH_ROWS = 65_536  # rows per record batch streamed out of the row groups


def plan_parquet(source: str, options: dict[str, Any], compressed: bool, partition_rows: int) -> FilePlan:
    """Plan a Parquet file. ``compressed`` (a .gz name) is not looked at: Parquet is never read compressed, so such a file fails to parse."""
    import pyarrow.parquet as pq

    with open_binary(source, options, mmap=True) as handle:
        try:
            meta = pq.ParquetFile(handle)
            n_rows, schema = meta.metadata.num_rows, meta.schema_arrow
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputDataError(f"{source} is not a readable Parquet file: {exc}") from None
    if n_rows == 0:
        raise empty_source_error(source)
    return FilePlan(source, "parquet", n_rows, schema, list(row_ranges(n_rows, partition_rows)), content_key(source, options))


def read_parquet(pool: Pool, part: PoolPartition, columns: list[str]) -> pa.Table:
    """Only the row groups overlapping the partition, streamed in batches and cut to its rows."""
    import pyarrow.parquet as pq

    with open_binary(part.source, pool.storage_options, mmap=True) as handle:
        reader = pq.ParquetFile(handle)
        meta = reader.metadata
        offsets = np.concatenate(([0], np.cumsum([meta.row_group(i).num_rows for i in range(meta.num_row_groups)])))
        groups = [i for i in range(meta.num_row_groups) if offsets[i] < part.stop and offsets[i + 1] > part.start]
        batches = reader.iter_batches(batch_size=_BATCH_ROWS, row_groups=groups, columns=columns, use_threads=True)
        first_row = int(offsets[groups[0]]) if groups else part.start
        return cut_batches(batches, first_row, part, subschema(reader.schema_arrow, columns))
