"""B3 in two levels on Dask: coarse regions assigned shard by shard, then one task per part (teacher windows, graph, METIS).

Everything heavy runs as tasks on the executor (:meth:`thresher.jobs.executor.Executor.map`):
the regions come from the index's IVF lists (one task opens the index; an
int32 a row comes back) or, for an index without lists, from a k-means whose
sample the driver reads and whose lists every store shard assigns its rows
to; then each part
(a source group's rows of one region) is one task that opens the store and
the index where it runs, searches its rows' rank windows against the whole
pool, keeps the window entries inside the part, and runs METIS there. Rank
windows and graphs live only inside a task; the driver receives each part's
communities (K positions each) and a few counts. The algorithm is
:class:`thresher.selectors.batch_mining.BatchMiner` (:mod:`thresher.selectors.b3_partition`).

With a ``subset`` (sorted unique store positions: the rows a pipeline step
sees), the pool is those rows (:class:`thresher.stores.subset.StoreSubset`),
positions are subset positions and ranks are counted among the subset
(:class:`thresher.stores.subset.SubsetNeighbors`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _open(store_path: str, index_path: str | None, subset: np.ndarray | None, block_rows: int | None) -> tuple[Any, Any, Any]:
    """The store, the pool the selector sees (the store or its subset) and the teacher's search, opened where the task runs."""
    from thresher.jobs.neighbors_job import open_teacher

    return open_teacher(store_path, index_path, subset, block_rows)


def _index_regions(store_path: str, index_path: str, *, miner: Any, subset: np.ndarray | None = None) -> np.ndarray | None:
    """Each pool row's region from the index's IVF lists (None when the index has none), the index opened here."""
    from thresher.stores.embedding_store import open_embedding_store
    from thresher.stores.index import open_index

    store = open_embedding_store(store_path)
    index = open_index(index_path, store=store)
    return miner.index_regions(index, store.n_rows if subset is None else len(subset), subset)


def _shard_regions(store_path: str, shard: int, block_rows: int, *, miner: Any, model: Any,
                   subset: np.ndarray | None = None) -> np.ndarray:
    """The region of each row of one shard (its subset rows when given), in row order."""
    from thresher.stores.embedding_store import open_embedding_store

    store = open_embedding_store(store_path)
    if subset is None:
        return miner.assign_regions(model, store.iter_shard_blocks(shard, block_rows))
    from thresher.stores.subset import iter_subset_shard_blocks, shard_range

    lo, hi = shard_range(subset, store, shard)
    return miner.assign_regions(model, iter_subset_shard_blocks(store, subset[lo:hi], lo, shard, block_rows))


def _part(store_path: str, index_path: str | None, part: int, members: np.ndarray, block_rows: int | None, *, miner: Any, state: Any,
          subset: np.ndarray | None = None) -> Any:
    """``miner.mine_part`` for one part, the store and index opened here."""
    _, pool, neighbors = _open(store_path, index_path, subset, block_rows)
    return miner.mine_part(state, part, members, pool, neighbors=neighbors, block_rows=block_rows)


def parts_on_cluster(store: Any, index_path: str | Path | None, miner: Any, state: Any, *, groups: np.ndarray | None = None,
                     executor: Any = None, subset: np.ndarray | None = None, job: Any = None, block_rows: int | None = None) -> tuple[Any, list[Any]]:
    """The two-level B3 partition of ``store`` (or its ``subset``): the :class:`~thresher.selectors.b3_partition.PartPlan` and one result per part.

    ``miner`` is the :class:`~thresher.selectors.batch_mining.BatchMiner`, ``state``
    its ``prepare`` result; ``groups`` the per-row source labels of the pool
    (subset rows when ``subset``); ``block_rows`` the queries a part searches at
    once (default: :func:`~thresher.selectors.batch_mining.search_block_rows`).
    Pass both returns to ``miner.finish_parts``.
    """
    from thresher.jobs.executor import Executor
    from thresher.stores.subset import StoreSubset

    executor = executor if executor is not None else Executor.in_process(progress=False)
    pool = store if subset is None else StoreSubset(store, subset)
    index = None if index_path is None or miner.rank_scope == "part" else str(index_path)  # part ranks read no index
    region, regions_from = None, "index IVF lists"
    if index is not None:
        # one task: the index is opened where it runs, never on the driver
        region = executor.map(_index_regions, [(str(store.path), index)], shared={"miner": miner, "subset": subset}, job=job)[0]
    if region is None:
        region, regions_from = _kmeans_regions(store, pool, miner, executor=executor, subset=subset, job=job), "k-means lists"
    plan = miner.plan_parts(region, groups, regions_from=regions_from)
    del region
    # the largest parts first, so the last task to finish is a small one
    order = sorted(range(plan.n_parts), key=lambda i: (-len(plan.members[i]), i))
    results = executor.map(_part, [(str(store.path), index, i, plan.members[i], block_rows) for i in order],
                           shared={"miner": miner, "state": state, "subset": subset},
                           rows=[len(plan.members[i]) for i in order], description="teacher ranks", job=job)
    return plan, results


def _kmeans_regions(store: Any, pool: Any, miner: Any, *, executor: Any, subset: np.ndarray | None, job: Any) -> np.ndarray:
    """Regions of a k-means's fine lists: the model from a sample on the driver, rows assigned shard by shard on the executor."""
    from thresher.stores.subset import shard_range

    model = miner.region_model(pool)
    shards = list(range(store.n_shards))
    if subset is not None:
        shards = [i for i in shards if shard_range(subset, store, i)[1] > shard_range(subset, store, i)[0]]

    def rows_in(shard: int) -> int:
        lo, hi = (store.shard_offsets[shard], store.shard_offsets[shard + 1]) if subset is None else shard_range(subset, store, shard)
        return int(hi - lo)

    regions = executor.map(_shard_regions, [(str(store.path), i, 65_536) for i in shards],
                           shared={"miner": miner, "model": model, "subset": subset},
                           rows=[rows_in(i) for i in shards], description="coarse regions", job=job)
    return np.concatenate(regions)
