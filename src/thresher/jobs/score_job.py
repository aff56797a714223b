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


def _score_shard(store_path: str, shard: int, selector: Any, scorer: Any, k: int, block_rows: int, exclude: np.ndarray | None) -> tuple[Any, dict[str, int]]:
    from thresher.stores.embedding_store import open_embedding_store

    store = open_embedding_store(store_path)
    return selector.score_partition(store.iter_shard_blocks(shard, block_rows), scorer, k, store.take, exclude)


def _merge(a: tuple[Any, dict[str, int]], b: tuple[Any, dict[str, int]]) -> tuple[Any, dict[str, int]]:
    return a[0].merge(b[0]), {key: a[1].get(key, 0) + b[1].get(key, 0) for key in set(a[1]) | set(b[1])}


def score_store(store: Any, selector: Any, scorer: Any, k: int, *, client: Any | None, exclude: np.ndarray | None = None,
                block_rows: int | None = None, retries: int = 2) -> tuple[Any, dict[str, int]]:
    """Run ``selector.score_partition`` over every shard of ``store`` and merge the partial results.

    With ``client=None`` the shards are scored one after another in this
    process; the merged result is the same either way (merging is exact and
    order-independent).
    """
    block_rows = block_rows or scorer.default_block_rows()
    path = str(Path(store.path))
    if client is None:
        parts = [_score_shard(path, i, selector, scorer, k, block_rows, exclude) for i in range(store.n_shards)]
        result = parts[0]
        for part in parts[1:]:
            result = _merge(result, part)
        return result
    scorer_f, selector_f = client.scatter([scorer, selector], broadcast=True)
    exclude_f = client.scatter(exclude, broadcast=True) if exclude is not None else None
    futures = [client.submit(_score_shard, path, i, selector_f, scorer_f, k, block_rows, exclude_f, retries=retries, pure=False)
               for i in range(store.n_shards)]
    while len(futures) > 1:
        paired = [client.submit(_merge, a, b, retries=retries, pure=False) for a, b in zip(futures[0::2], futures[1::2])]
        if len(futures) % 2:
            paired.append(futures[-1])
        futures = paired
    return futures[0].result()
