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


def _shard_window(store_path: str, index_path: str | None, shard: int, block_rows: int, *, miner: Any, state: Any,
                  subset: np.ndarray | None = None) -> Any:
    """``miner.partial`` over one shard's rows (its share of ``subset`` when given), the index opened here."""
    from thresher.stores.embedding_store import open_embedding_store
    from thresher.stores.index import open_index

    store = open_embedding_store(store_path)
    neighbors = open_index(index_path, store=store) if index_path else None
    if subset is None:
        return miner.partial(state, store.iter_shard_blocks(shard, block_rows), store, neighbors=neighbors)
    from thresher.stores.subset import StoreSubset, SubsetNeighbors, iter_subset_shard_blocks, shard_range

    lo, hi = shard_range(subset, store, shard)
    searcher = SubsetNeighbors(store, subset, neighbors, block_rows=block_rows)
    blocks = iter_subset_shard_blocks(store, subset[lo:hi], lo, shard, block_rows)
    return miner.partial(state, blocks, StoreSubset(store, subset), neighbors=searcher)


def open_teacher(store_path: str, index_path: str | None, subset: np.ndarray | None, block_rows: int | None = None) -> tuple[Any, Any, Any]:
    """(the store, the pool B3 sees: the store or its subset, the teacher's search), opened where the task runs."""
    from thresher.stores.embedding_store import open_embedding_store
    from thresher.stores.index import open_index

    store = open_embedding_store(store_path)
    neighbors = open_index(index_path, store=store) if index_path else None
    if subset is None:
        return store, store, neighbors
    from thresher.stores.subset import StoreSubset, SubsetNeighbors

    return store, StoreSubset(store, subset), SubsetNeighbors(store, subset, neighbors, block_rows=block_rows or 8192)


def _teacher_depth(store_path: str, index_path: str, *, miner: Any, subset: np.ndarray | None = None) -> Any:
    """``miner.teacher_depth`` of the pool (or subset), the store and index opened here."""
    _, pool, neighbors = open_teacher(store_path, index_path, subset)
    return miner.teacher_depth(pool, neighbors)


def teacher_depth_on_cluster(store: Any, index_path: str | Path | None, miner: Any, *, executor: Any, subset: np.ndarray | None = None,
                             job: Any = None) -> Any:
    """The B3 teacher's IVF depth (:meth:`~thresher.selectors.batch_mining.BatchMiner.teacher_depth`), measured by one task
    where the index is opened (the driver never loads it); None without an index or an IVF one."""
    if index_path is None:
        return None
    return executor.map(_teacher_depth, [(str(store.path), str(index_path))], shared={"miner": miner, "subset": subset}, job=job,
                        description="teacher depth")[0]


def window_on_cluster(store: Any, index_path: str | Path | None, p: int, m: int, *, executor: Any = None, block_rows: int = 8192,
                      subset: np.ndarray | None = None, job: Any = None, client: Any = None, retried: Any = None,
                      miner: Any = None, depth: Any = None) -> np.ndarray:
    """Rank window ``[p, p + m)`` of every store row, shape (n_rows, m), computed shard by shard by ``executor``.

    With ``subset`` (validated, sorted unique store positions), the windows of the
    subset's rows among the subset's rows: shape (len(subset), m), entries are
    subset positions (-1 where missing). Shards holding no subset row are skipped.

    ``executor`` (a :class:`thresher.jobs.executor.Executor`, default in this
    process) runs one task per shard; ``job`` (its :meth:`~thresher.jobs.executor.Executor.new_job`)
    records them. ``client=`` and ``retried=`` are the deprecated spellings of both.

    Each task runs the B3 selector's ``partial`` (``miner``, a
    :class:`~thresher.selectors.batch_mining.BatchMiner`; default one with this
    rank window) and the windows are stitched with its ``merge``. ``depth`` (a
    :class:`~thresher.selectors.batch_mining.TeacherDepth`, from :func:`teacher_depth_on_cluster`)
    is the IVF depth the tasks search at (None: the index's own).
    """
    from thresher.jobs.executor import job_executor
    from thresher.selectors.batch_mining import BatchMiner, TeacherWindows
    from thresher.stores.subset import shard_range

    executor, job = job_executor(executor, job, client=client, retried=retried, caller="window_on_cluster")
    miner = BatchMiner(rank_window=(p, p + m)) if miner is None else miner
    shards = range(store.n_shards)
    if subset is not None:
        shards = [i for i in shards if shard_range(subset, store, i)[1] > shard_range(subset, store, i)[0]]

    def rows_in(shard: int) -> int:
        lo, hi = (store.shard_offsets[shard], store.shard_offsets[shard + 1]) if subset is None else shard_range(subset, store, shard)
        return int(hi - lo)

    items = [(str(store.path), None if index_path is None else str(index_path), i, block_rows) for i in shards]
    results = executor.map(_shard_window, items, shared={"miner": miner, "state": TeacherWindows(p, m, depth), "subset": subset},
                           rows=[rows_in(i) for i in shards], description="teacher ranks", job=job)
    return miner.merge(results).window
