"""Opening a pool: :func:`open_pool` plans it from its sources, :func:`reopen_pool` rebuilds it from a description."""

from __future__ import annotations

import base64
import os
from typing import Any

import numpy as np
import pyarrow as pa

from thresher.exceptions import ArtifactError, InputDataError, parameter_error
from thresher.fingerprint import fingerprint_of
from thresher.stores.pool.core import DESCRIPTION_VERSION, FINGERPRINT_VERSION, Pool, PoolFormat, check_id_column, column_names
from thresher.stores.pool.files import as_entries, id_names, plan_file, pool_schema, resolve_files
from thresher.stores.pool.fs import file_record
from thresher.stores.pool.hf_datasets import is_hf_dataset, open_dataset, open_saved_dataset, reload_dataset, saved_dataset_root
from thresher.stores.pool.partition import PoolPartition
from thresher.stores.pool.registry import POOL_FORMATS
from thresher.stores.pool.verify import verify_fingerprint


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
    if format not in POOL_FORMATS:
        raise parameter_error("open_pool", "format", f"one of {list(POOL_FORMATS)}", format)
    if id_column is not None and (not isinstance(id_column, str) or not id_column):
        raise parameter_error("open_pool", "id_column", "a column name or None", id_column)
    if split is not None and (not isinstance(split, str) or not split):
        raise parameter_error("open_pool", "split", "a split name or None", split)
    partition_rows = check_partition_rows(partition_rows)
    options = dict(storage_options or {})
    if is_hf_dataset(source):
        return open_dataset(source, id_column=id_column, partition_rows=partition_rows, split=split)
    entries = as_entries(source)
    if len(entries) == 1:
        saved = saved_dataset_root(entries[0], options)
        if saved is not None or format == "hf_disk":
            if saved is None:
                raise InputDataError(f"{entries[0]} is not a folder written by datasets' save_to_disk (no state.json or dataset_dict.json).")
            return open_saved_dataset(saved, options, id_column=id_column, partition_rows=partition_rows, split=split)
    if format == "hf_disk":
        raise parameter_error("open_pool", "source", "one save_to_disk folder when format='hf_disk'", source)
    if split is not None:
        raise parameter_error("open_pool", "split", "None for a pool of files (it applies to datasets only)", split)
    skipped: list[str] = []
    files = resolve_files(entries, format, options, skipped)
    names = id_names([url for url, _ in files])
    plans = [plan_file(url, fmt, options, partition_rows) for url, fmt in files]
    schema = pool_schema(plans)
    id_column = check_id_column(id_column, schema, plans[0].source)
    partitions: list[PoolPartition] = []
    for plan in plans:
        for start, stop, byte_start, byte_stop in plan.ranges:
            partitions.append(PoolPartition(len(partitions), plan.source, plan.format, start, stop, byte_start, byte_stop))
    inputs = [f"{names[p.source]}|{p.format}|{p.key}" for p in plans]
    return Pool(
        partitions=partitions,
        n_rows=sum(p.n_rows for p in plans),
        column_names=column_names(schema, id_column),
        fingerprint=fingerprint_of("pool", FINGERPRINT_VERSION, {"id_column": id_column}, inputs),
        schema=schema,
        id_column=id_column,
        names=names,
        kind="files",
        partition_rows=partition_rows,
        files=[file_record(p.source, p.key, options) for p in plans],
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
    if description.get("version", 0) > DESCRIPTION_VERSION:
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
        pool._dataset = reload_dataset(pool)
    if verify:
        verify_fingerprint(pool)
    return pool


def check_partition_rows(partition_rows: int | None) -> int:
    if partition_rows is None:
        from thresher.config import runtime_config

        return runtime_config().partition_rows
    if isinstance(partition_rows, (bool, np.bool_)) or not isinstance(partition_rows, (int, np.integer)) or partition_rows < 1:
        raise parameter_error("open_pool", "partition_rows", "an int >= 1", partition_rows)
    return int(partition_rows)
