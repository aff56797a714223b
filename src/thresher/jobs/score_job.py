"""Scoring jobs: map a selector's per-partition scoring over store shards on Dask, merge by a tree reduction.

Each task opens the store (memory-mapped, on the worker), streams its shard
in blocks through the selector's ``score_partition``, and returns a small
partial result (a per-task top-k and counts); partial results are merged
pairwise, so the driver never receives more than a few of them at once and
never sees the pool.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from thresher.jobs.progress import RowProgress, report_futures


def _score_shard(store_path: str, shard: int, selector: Any, scorer: Any, k: int, block_rows: int, exclude: np.ndarray | None,
                 rows: tuple[int, np.ndarray] | None = None) -> tuple[Any, dict[str, int]]:
    """Score one shard; with ``rows`` = (first subset position, the shard's subset rows), those rows only, numbered within the subset."""
    from thresher.stores.embedding_store import open_embedding_store

    store = open_embedding_store(store_path)
    if rows is None:
        return selector.score_partition(store.iter_shard_blocks(shard, block_rows), scorer, k, store.take, exclude)
    from thresher.stores.subset import iter_subset_shard_blocks

    start, positions = rows

    def take(local: np.ndarray) -> np.ndarray:
        return store.take(positions[np.asarray(local, dtype=np.int64) - start])

    return selector.score_partition(iter_subset_shard_blocks(store, positions, start, shard, block_rows), scorer, k, take, exclude)


def _merge(a: tuple[Any, dict[str, int]], b: tuple[Any, dict[str, int]]) -> tuple[Any, dict[str, int]]:
    return a[0].merge(b[0]), {key: a[1].get(key, 0) + b[1].get(key, 0) for key in set(a[1]) | set(b[1])}


def score_store(store: Any, selector: Any, scorer: Any, k: int, *, client: Any | None, exclude: np.ndarray | None = None,
                subset: np.ndarray | None = None, block_rows: int | None = None, retries: int = 2,
                retried: Any = None) -> tuple[Any, dict[str, int]]:
    """Run ``selector.score_partition`` over every shard of ``store`` and merge the partial results.

    With ``client=None`` the shards are scored one after another in this
    process; the merged result is the same either way (merging is exact and
    order-independent).

    With ``subset`` (sorted unique store positions), only those rows are scored,
    as if they were the whole store: positions in the result and in ``exclude``
    are positions within the subset, and shards holding none of its rows are
    skipped. Each task receives only its shard's share of the subset.

    ``retried`` (a :class:`thresher.jobs.cluster.TaskRetries`) records the Dask
    tasks, to count those re-run after a worker died.
    """
    block_rows = block_rows or scorer.default_block_rows()
    path = str(Path(store.path))
    tasks: list[tuple[int, tuple[int, np.ndarray] | None]] = [(i, None) for i in range(store.n_shards)]
    if subset is not None:
        from thresher.stores.subset import shard_range

        ranges = [(i, shard_range(subset, store, i)) for i in range(store.n_shards)]
        tasks = [(i, (lo, subset[lo:hi])) for i, (lo, hi) in ranges if hi > lo]
    sizes = [int(store.shard_offsets[i + 1] - store.shard_offsets[i]) if rows is None else len(rows[1]) for i, rows in tasks]
    if client is None:
        bar = RowProgress(sum(sizes), description="score", enabled=False)
        parts = []
        for (i, rows), size in zip(tasks, sizes):
            parts.append(_score_shard(path, i, selector, scorer, k, block_rows, exclude, rows))
            bar.advance(size)
        result = parts[0]
        for part in parts[1:]:
            result = _merge(result, part)
        return result
    scorer_f, selector_f = client.scatter([scorer, selector], broadcast=True)
    exclude_f = client.scatter(exclude, broadcast=True) if exclude is not None else None
    rows_f = client.scatter([rows for _, rows in tasks]) if subset is not None else [None] * len(tasks)
    futures = [client.submit(_score_shard, path, i, selector_f, scorer_f, k, block_rows, exclude_f, r, retries=retries, pure=False)
               for (i, _), r in zip(tasks, rows_f)]
    if retried is not None:
        retried.track(futures)
    report_futures(futures, sizes, description="score")
    while len(futures) > 1:
        paired = [client.submit(_merge, a, b, retries=retries, pure=False) for a, b in zip(futures[0::2], futures[1::2])]
        if retried is not None:
            retried.track(paired)
        if len(futures) % 2:
            paired.append(futures[-1])
        futures = paired
    return futures[0].result()
