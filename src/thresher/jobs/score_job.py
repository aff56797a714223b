"""Scoring jobs: map a selector's per-partition scoring over store shards on Dask, merge by a tree reduction.

Each task opens the store (memory-mapped, on the worker), streams its shard
in blocks through the selector's ``partial`` (the distributed protocol of
:class:`thresher.selectors._base.BlockwiseSelector`), and returns a small
partial result (for RDS+, a per-task top-k and counts); partial results are
merged pairwise by the selector's ``merge``, so the driver never receives more than a few of them at once and
never sees the pool.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np


class _SubsetRows:
    """The rows of one shard's share of a subset, numbered within the subset (``start`` is its first subset position)."""

    def __init__(self, store: Any, start: int, positions: np.ndarray):
        self.store, self.start, self.positions = store, start, positions

    def take(self, local: np.ndarray) -> np.ndarray:
        return self.store.take(self.positions[np.asarray(local, dtype=np.int64) - self.start])


def _score_shard(store_path: str, shard: int, rows: tuple[int, np.ndarray] | None, *, selector: Any, state: Any, block_rows: int) -> Any:
    """``selector.partial`` over one shard; with ``rows`` = (first subset position, the shard's subset rows), those rows only,
    numbered within the subset."""
    from thresher.stores.embedding_store import open_embedding_store

    store = open_embedding_store(store_path)
    if rows is None:
        return selector.partial(state, store.iter_shard_blocks(shard, block_rows), store)
    from thresher.stores.subset import iter_subset_shard_blocks

    start, positions = rows
    return selector.partial(state, iter_subset_shard_blocks(store, positions, start, shard, block_rows), _SubsetRows(store, start, positions))


def _merge(a: Any, b: Any, *, selector: Any) -> Any:
    return selector.merge([a, b])


def score_store(store: Any, selector: Any, state: Any, *, executor: Any = None, subset: np.ndarray | None = None,
                block_rows: int | None = None, retries: int = 2, job: Any = None, client: Any = None, retried: Any = None,
                description: str = "score") -> Any:
    """Run a :class:`~thresher.selectors._base.BlockwiseSelector`'s ``partial`` over every shard of ``store`` and ``merge`` the results.

    ``state`` is what ``selector.prepare`` returned (for RDS+, the scorer, the
    ranking depth and the excluded positions); the result is ``selector.merge``'s.

    ``executor`` (a :class:`thresher.jobs.executor.Executor`, default in this
    process) runs one task per shard and merges their results pairwise; the
    merged result is the same either way (merging is exact and order-independent).
    ``job`` records the tasks (to count those re-run after a worker died);
    ``client=`` and ``retried=`` are the deprecated spellings of both.

    With ``subset`` (sorted unique store positions), only those rows are scored,
    as if they were the whole store: positions in the result and in ``exclude``
    are positions within the subset, and shards holding none of its rows are
    skipped. Each task receives only its shard's share of the subset.
    """
    from thresher.jobs.executor import job_executor

    executor, job = job_executor(executor, job, client=client, retried=retried, caller="score_store")
    block_rows = block_rows or selector.block_rows_for(state)
    path = str(Path(store.path))
    tasks: list[tuple[int, tuple[int, np.ndarray] | None]] = [(i, None) for i in range(store.n_shards)]
    if subset is not None:
        from thresher.stores.subset import shard_range

        ranges = [(i, shard_range(subset, store, i)) for i in range(store.n_shards)]
        tasks = [(i, (lo, subset[lo:hi])) for i, (lo, hi) in ranges if hi > lo]
    sizes = [int(store.shard_offsets[i + 1] - store.shard_offsets[i]) if rows is None else len(rows[1]) for i, rows in tasks]
    items = [(path, i, rows) for i, rows in tasks]
    merge = functools.partial(_merge, selector=selector)
    return executor.map_reduce(_score_shard, items, merge, shared={"selector": selector, "state": state, "block_rows": block_rows},
                               rows=sizes, description=description, job=job, retries=retries)
