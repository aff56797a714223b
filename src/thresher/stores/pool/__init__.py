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

Modules
-------
core          :class:`Pool` and reading a partition with its ids
opening       :func:`open_pool`, :func:`reopen_pool`
files         finding files (globs, directories, URLs), id names, planning a file
registry      the input formats: one :class:`InputFormat` per format
jsonl, parquet, arrow, csv, hf_datasets
              one module per input format: planning and reading
partition     :class:`PoolPartition`, planned files, cutting rows out of batches
fs            fsspec filesystems, opening files, content keys
verify        :func:`check_pool_files`
"""

from thresher.stores.pool.core import Pool, PoolFormat
from thresher.stores.pool.opening import open_pool, reopen_pool
from thresher.stores.pool.partition import PoolPartition
from thresher.stores.pool.registry import FORMATS, InputFormat
from thresher.stores.pool.verify import check_pool_files

__all__ = ["FORMATS", "InputFormat", "Pool", "PoolFormat", "PoolPartition", "check_pool_files", "open_pool", "reopen_pool"]
