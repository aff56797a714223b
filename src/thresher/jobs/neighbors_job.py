"""Teacher rank windows on Dask: each task searches one store shard against the index, on a worker.

Used by B3 batch mining: the FAISS index and the shard are opened on the
worker (memory-mapped), so the driver receives only each row's window of
neighbour positions (int32 when the pool allows), never vectors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _shard_window(store_path: str, index_path: str | None, shard: int, p: int, m: int, block_rows: int) -> tuple[int, np.ndarray]:
    from thresher.selectors.batch_mining import window_neighbors_of_blocks
    from thresher.stores.embedding_store import open_embedding_store
    from thresher.stores.index import open_index

    store = open_embedding_store(store_path)
    neighbors = open_index(index_path, store=store) if index_path else None
    window = window_neighbors_of_blocks(store, store.iter_shard_blocks(shard, block_rows), neighbors, p, m)
    return int(store.shard_offsets[shard]), window


def window_on_cluster(store: Any, index_path: str | Path | None, p: int, m: int, *, client: Any | None, block_rows: int = 8192) -> np.ndarray:
    """Rank window ``[p, p + m)`` of every store row, shape (n_rows, m), computed shard by shard (on Dask when ``client``)."""
    dtype = np.int32 if store.n_rows < 2**31 else np.int64
    out = np.full((store.n_rows, m), -1, dtype=dtype)
    args = [(str(store.path), None if index_path is None else str(index_path), i, p, m, block_rows) for i in range(store.n_shards)]
    if client is None:
        results = [_shard_window(*a) for a in args]
    else:
        results = client.gather([client.submit(_shard_window, *a, retries=2, pure=False) for a in args])
    for start, window in results:
        out[start : start + len(window)] = window
    return out
