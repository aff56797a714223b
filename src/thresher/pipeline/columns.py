"""Reading one pool column (labels, sources) for every store row, in store order, partition by partition."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa


def read_label_partition(pool: Any, column: str, partition: int) -> np.ndarray:
    """One pool partition's labels as numpy; a null label is refused, naming the row's id."""
    from thresher.exceptions import InputDataError

    table = pool.read_partition(partition, columns=[column])
    values = table.column(column)
    kind = values.type
    if not (pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_boolean(kind)
            or pa.types.is_floating(kind) or pa.types.is_dictionary(kind)):
        raise InputDataError(f"The label column {column!r} of the pool holds {kind}; labels must be ints, strings, bools or floats.")
    if values.null_count:
        row = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
        raise InputDataError(
            f"The label column {column!r} is null for the pool row id={table.column('id')[row].as_py()!r} "
            f"({values.null_count} null labels in partition {partition}); every row needs a class."
        )
    if pa.types.is_dictionary(kind):
        values = values.cast(kind.value_type)
    return values.to_numpy(zero_copy_only=False)


def read_labels(store: Any, column: str, map_fn: Callable[..., Any] = map) -> np.ndarray:
    """The pool's ``column`` for every store row, in store order.

    The pool's rows are the store's, position by position (a store embedded from the pool, or one
    a run checked against it: :mod:`thresher.stores.pool_binding`), so the pool's partitions are
    read in order; they need not line up with the store's shards (an imported store has its own).

    Raises
    ------
    InputDataError
        The column is missing, holds nulls or unusable types.
    ArtifactError
        The pool no longer has as many rows as the store.
    """
    import functools

    from thresher.exceptions import ArtifactError, InputDataError

    pool = store.reopen_pool()  # refuses pool files changed since they were embedded
    if column not in pool.column_names:
        raise InputDataError(f"The pool has no label column {column!r}; it has columns {pool.column_names}.")
    if pool.n_rows != store.n_rows:
        raise ArtifactError(f"The pool has {pool.n_rows} rows and the store {store.path} {store.n_rows}; re-run the embedding.")
    parts = list(map_fn(functools.partial(read_label_partition, pool, column), range(pool.n_partitions)))
    return np.concatenate(parts) if parts else np.empty(0)
