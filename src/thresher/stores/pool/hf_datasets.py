"""HF datasets as pools: an in-memory ``datasets.Dataset``/``DatasetDict``, or a ``save_to_disk`` folder.

An in-memory dataset's fingerprint is the dataset's own; a saved folder's hashes
its Arrow data files, like any pool file. A saved folder is memory-mapped once
per process, since Dask workers read many partitions of it.
"""

from __future__ import annotations

import json
import posixpath
from functools import lru_cache
from typing import Any

import pyarrow as pa

from thresher.exceptions import ArtifactError, InputDataError
from thresher.fingerprint import canonical_json, fingerprint_of
from thresher.stores.pool.core import FINGERPRINT_VERSION, Pool, check_id_column, column_names
from thresher.stores.pool.fs import content_key, file_record, filesystem, url_of
from thresher.stores.pool.partition import PoolPartition, empty_source_error, row_ranges


def is_hf_dataset(source: Any) -> bool:
    return type(source).__module__.split(".")[0] == "datasets" and type(source).__name__ in ("Dataset", "DatasetDict")


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


def open_dataset(source: Any, *, id_column: str | None, partition_rows: int, split: str | None) -> Pool:
    dataset = _select_split(source, split)
    name = split or "data"
    schema = dataset.features.arrow_schema
    id_column = check_id_column(id_column, schema, "the dataset")
    if len(dataset) == 0:
        raise InputDataError("The dataset is empty: it holds no rows.")
    ranges = row_ranges(len(dataset), partition_rows)
    partitions = [PoolPartition(k, "", "dataset", start, stop) for k, (start, stop, _, _) in enumerate(ranges)]
    params = {"id_column": id_column, "format": "dataset", "name": name}
    return Pool(
        partitions=partitions,
        n_rows=len(dataset),
        column_names=column_names(schema, id_column),
        fingerprint=fingerprint_of("pool", FINGERPRINT_VERSION, params, [dataset._fingerprint]),
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


def reload_dataset(pool: Pool) -> Any:
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


def saved_dataset_root(entry: str, options: dict[str, Any]) -> str | None:
    """``entry`` as a URL if it is a save_to_disk folder (of a Dataset or a DatasetDict), else None."""
    fs, path = filesystem(entry, options)
    if any(ch in path for ch in "*?[") or not fs.isdir(path):
        return None
    if fs.isfile(posixpath.join(path, "dataset_dict.json")) or (
        fs.isfile(posixpath.join(path, "state.json")) and fs.isfile(posixpath.join(path, "dataset_info.json"))
    ):
        return url_of(fs, path)
    return None


def open_saved_dataset(root: str, options: dict[str, Any], *, id_column: str | None, partition_rows: int, split: str | None) -> Pool:
    fs, path = filesystem(root, options)
    dict_file = posixpath.join(path, "dataset_dict.json")
    if fs.isfile(dict_file):
        splits = sorted(json.loads(fs.cat_file(dict_file)).get("splits", []))
        if split is None:
            raise InputDataError(f"{root} holds a DatasetDict with splits {splits}; pass split= to choose one.")
        if split not in splits:
            raise InputDataError(f"{root} has no split {split!r}; it has splits {splits}.")
        path = posixpath.join(path, split)
    source = url_of(fs, path)
    name = split or "data"
    urls = _saved_files(source, options)
    keys = [content_key(url, options) for url in urls]
    fingerprint = saved_fingerprint(source, options, id_column, name, keys)
    dataset = load_saved_dataset(source, options_key(options), fingerprint)
    schema = dataset.features.arrow_schema
    id_column = check_id_column(id_column, schema, source)
    if len(dataset) == 0:
        raise empty_source_error(source)
    partitions = [
        PoolPartition(k, source, "hf_disk", start, stop) for k, (start, stop, _, _) in enumerate(row_ranges(len(dataset), partition_rows))
    ]
    return Pool(
        partitions=partitions,
        n_rows=len(dataset),
        column_names=column_names(schema, id_column),
        fingerprint=fingerprint,
        schema=schema,
        id_column=id_column,
        names={source: name},
        kind="hf_disk",
        partition_rows=partition_rows,
        files=[file_record(url, key, options) for url, key in zip(urls, keys)],
        storage_options=options,
    )


def _saved_files(source: str, options: dict[str, Any]) -> list[str]:
    """URLs of the Arrow files of a save_to_disk folder, from its state.json."""
    fs, path = filesystem(source, options)
    state = json.loads(fs.cat_file(posixpath.join(path, "state.json")))
    return [url_of(fs, posixpath.join(path, f["filename"])) for f in state.get("_data_files", [])]


def saved_fingerprint(source: str, options: dict[str, Any], id_column: str | None, name: str, keys: list[str] | None = None) -> str:
    if keys is None:
        keys = [content_key(url, options) for url in _saved_files(source, options)]
    return fingerprint_of("pool", FINGERPRINT_VERSION, {"id_column": id_column, "format": "hf_disk", "name": name}, keys)


def options_key(options: dict[str, Any]) -> str:
    return canonical_json(options)


@lru_cache(maxsize=8)
def load_saved_dataset(source: str, options_key: str, fingerprint: str) -> Any:
    """Memory-map a save_to_disk folder once per process (Dask workers read many partitions of it).

    The pool's fingerprint is part of the cache key, so a folder saved again with other content is loaded afresh.
    """
    import datasets

    try:
        return datasets.load_from_disk(source, storage_options=json.loads(options_key) or None)
    except (FileNotFoundError, OSError, ValueError) as exc:
        raise InputDataError(f"{source} is not a readable save_to_disk folder: {exc}") from None


def read_in_memory(pool: Pool, part: PoolPartition, columns: list[str]) -> pa.Table:
    """Rows of an in-memory dataset, which the pool holds (a description reopened holds it again)."""
    if pool._dataset is None:
        raise ArtifactError("This pool came from an in-memory datasets.Dataset that is not attached to it; open the dataset again.")
    return _rows(pool._dataset, part, columns)


def read_saved(pool: Pool, part: PoolPartition, columns: list[str]) -> pa.Table:
    """Rows of a save_to_disk folder, memory-mapped once per process."""
    return _rows(load_saved_dataset(part.source, options_key(pool.storage_options), pool.fingerprint), part, columns)


def _rows(dataset: Any, part: PoolPartition, columns: list[str]) -> pa.Table:
    return dataset.with_format("arrow", columns=columns)[part.start : part.stop]
