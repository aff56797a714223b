"""Streaming reads that both pages of a run share: ``thresher report`` and ``thresher explore``.

Both show a bounded handful of rows of outputs that may hold millions, so
they draw seeded samples of a curated output's rows and read only those,
shard by shard (:func:`sample_positions`, :func:`rows_at`), and rebuild the
texts of a few pool rows from the partitions that hold them
(:func:`pool_rows_at`). Nothing here holds a whole output or the pool.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.exceptions import ParameterError
from thresher.stores.arrow_io import read_stream_shard

#: which rows of a curated output a sample is drawn from: every row, the pool's rows, or SMOTE's synthetic rows
RowKind = Literal["all", "pool", "synthetic"]


def check_int(owner: str, name: str, value: Any, low: int) -> None:
    """Refuse a parameter of ``owner`` ("the report", "explore") that is not an int >= ``low`` (bools are not ints here)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ParameterError(f"The {name!r} parameter of {owner} must be an int >= {low}; got {value!r}.")


def clip(text: str | None, limit: int) -> str:
    """``text`` cut to ``limit`` characters, with an ellipsis when cut ("" for None)."""
    if text is None:
        return ""
    return text if len(text) <= limit else text[:limit] + "…"


def row_mask(table: pa.Table, rows: RowKind) -> np.ndarray:
    """Which rows of a curated shard are of kind ``rows``: pool rows have an id and are not SMOTE's synthetic rows."""
    if rows == "all":
        return np.ones(table.num_rows, dtype=bool)
    synthetic = np.zeros(table.num_rows, dtype=bool)
    if "synthetic" in table.column_names:
        synthetic = table.column("synthetic").combine_chunks().fill_null(False).to_numpy(zero_copy_only=False).astype(bool)
    if rows == "synthetic":
        return synthetic
    return ~synthetic & pc.is_valid(table.column("id")).to_numpy()


def sample_positions(curated: Any, k: int, rng: np.random.Generator, *, rows: RowKind = "all") -> tuple[int, np.ndarray]:
    """A seeded uniform sample of at most ``k`` rows of kind ``rows`` of a curated output.

    Returns (how many rows of that kind the output has, their sampled row
    positions in the output, sorted, so in rank order). One streaming pass
    reads the flags (a memory-mapped column per shard); ``rows="all"`` reads
    nothing. The positions of every candidate are a numpy array (8 bytes a
    row), never Python objects.
    """
    if rows == "all":
        candidates = np.arange(curated.n_rows, dtype=np.int64)
    else:
        masks = [row_mask(read_stream_shard(f), rows) for f in curated.files]
        candidates = np.flatnonzero(np.concatenate(masks)) if masks else np.empty(0, np.int64)
    if not len(candidates):
        return 0, candidates
    return int(len(candidates)), np.sort(rng.choice(candidates, size=min(k, len(candidates)), replace=False))


def rows_at(curated: Any, positions: np.ndarray, columns: Sequence[str] | None = None) -> Iterator[pa.Table]:
    """The rows at sorted row ``positions`` of a curated output, one table per shard that holds any, in order.

    ``columns`` (those the shards have, in that order) limits what is read; default every column.
    """
    positions = np.asarray(positions, dtype=np.int64)
    base = 0
    for f, shard in zip(curated.files, curated.shards):
        mine = positions[(positions >= base) & (positions < base + shard.rows)] - base
        base += shard.rows
        if not len(mine):
            continue
        table = read_stream_shard(f)
        if columns is not None:
            table = table.select([c for c in dict.fromkeys(columns) if c in table.column_names])
        yield table.take(pa.array(mine))


def pool_rows_at(store: Any, pool: Any, positions: Sequence[int] | np.ndarray, columns: Sequence[str]) -> Iterator[tuple[np.ndarray, pa.Table]]:
    """The pool rows at store ``positions`` (any order), partition by partition (store shard i is pool partition i).

    Yields (indices into ``positions``, those rows' ``columns`` in that order).
    """
    positions = np.asarray(positions, dtype=np.int64)
    shard_of = np.searchsorted(store.shard_offsets, positions, side="right") - 1
    for i in np.unique(shard_of):
        sel = np.flatnonzero(shard_of == i)
        table = pool.read_partition(int(i), columns=list(dict.fromkeys(columns)))
        yield sel, table.take(pa.array(positions[sel] - store.shard_offsets[i]))
