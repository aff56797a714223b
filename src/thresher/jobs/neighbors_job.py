"""Teacher rank windows on Dask: each task searches one store shard against the index, on a worker.

Used by B3 batch mining: the FAISS index and the shard are opened on the
worker (memory-mapped), so the driver receives only each row's window of
neighbour positions (int32 when the pool allows), never vectors.

With a ``subset`` (sorted unique store positions: the rows a pipeline step
sees), ranks are counted among the subset's rows only and windows hold subset
positions; each task searches the subset rows of its shard
(:class:`thresher.stores.subset.SubsetNeighbors`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from thresher.jobs.progress import RowProgress, report_futures


def _shard_window(store_path: str, index_path: str | None, shard: int, p: int, m: int, block_rows: int,
                  subset: np.ndarray | None = None) -> tuple[int, np.ndarray]:
    from thresher.selectors.batch_mining import window_neighbors_of_blocks
    from thresher.stores.embedding_store import open_embedding_store
    from thresher.stores.index import open_index

    store = open_embedding_store(store_path)
    neighbors = open_index(index_path, store=store) if index_path else None
    if subset is None:
        window = window_neighbors_of_blocks(store, store.iter_shard_blocks(shard, block_rows), neighbors, p, m)
        return int(store.shard_offsets[shard]), window
    from thresher.stores.subset import StoreSubset, SubsetNeighbors, iter_subset_shard_blocks, shard_range

    lo, hi = shard_range(subset, store, shard)
    searcher = SubsetNeighbors(store, subset, neighbors, block_rows=block_rows)
    blocks = iter_subset_shard_blocks(store, subset[lo:hi], lo, shard, block_rows)
    return lo, window_neighbors_of_blocks(StoreSubset(store, subset), blocks, searcher, p, m)


def window_on_cluster(store: Any, index_path: str | Path | None, p: int, m: int, *, client: Any | None, block_rows: int = 8192,
                      subset: np.ndarray | None = None, retried: Any = None) -> np.ndarray:
    """Rank window ``[p, p + m)`` of every store row, shape (n_rows, m), computed shard by shard (on Dask when ``client``).

    With ``subset`` (validated, sorted unique store positions), the windows of the
    subset's rows among the subset's rows: shape (len(subset), m), entries are
    subset positions (-1 where missing). Shards holding no subset row are skipped.

    ``retried`` (a :class:`thresher.jobs.cluster.TaskRetries`) records the Dask
    tasks, to count those re-run after a worker died.
    """
    n = store.n_rows if subset is None else len(subset)
    dtype = np.int32 if n < 2**31 else np.int64
    out = np.full((n, m), -1, dtype=dtype)
    from thresher.stores.subset import shard_range

    shards = range(store.n_shards)
    if subset is not None:
        shards = [i for i in shards if shard_range(subset, store, i)[1] > shard_range(subset, store, i)[0]]
    args = [(str(store.path), None if index_path is None else str(index_path), i, p, m, block_rows) for i in shards]
    def rows_in(shard: int) -> int:
        lo, hi = (store.shard_offsets[shard], store.shard_offsets[shard + 1]) if subset is None else shard_range(subset, store, shard)
        return int(hi - lo)

    sizes = [rows_in(i) for i in shards]
    if client is None:
        bar = RowProgress(sum(sizes), description="teacher ranks", enabled=False)
        results = []
        for a, size in zip(args, sizes):
            results.append(_shard_window(*a, subset))
            bar.advance(size)
    else:
        subset_f = None if subset is None else client.scatter(subset, broadcast=True)
        futures = [client.submit(_shard_window, *a, subset_f, retries=2, pure=False) for a in args]
        report_futures(futures, sizes, description="teacher ranks")
        results = client.gather(retried.track(futures) if retried is not None else futures)
    for start, window in results:
        out[start : start + len(window)] = window
    return out
