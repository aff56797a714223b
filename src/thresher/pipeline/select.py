"""Selection stages: embedding store (+ inputs) → selector → curated shards."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from thresher.pipeline.steps.batches import STEP as B3_STEP
from thresher.pipeline.steps.batches import VERSION as B3_STAGE_VERSION  # noqa: F401 (its old name)
from thresher.pipeline.steps.rds import STEP as RDS_STEP
from thresher.pipeline.steps.rds import VERSION as RDS_STAGE_VERSION  # noqa: F401 (its old name)


def _store_positions(positions: np.ndarray, subset: np.ndarray | None) -> np.ndarray:
    """A selector's positions (within the subset, when there is one) as store positions."""
    return positions if subset is None else subset[positions]


def exact_duplicate_positions(store: Any, subset: np.ndarray | None = None) -> np.ndarray:
    """Positions of rows whose embedded text already appeared at a lower position (from ``text_hash``; 8 bytes a row).

    With ``subset`` (sorted store positions), among the subset's rows only, as
    positions within the subset: a text's first occurrence *in the subset* stays.
    """
    hashes = np.concatenate([store.shard_column(i, "text_hash") for i in range(store.n_shards)]) if store.n_shards else np.empty(0, np.uint64)
    if subset is not None:
        hashes = hashes[subset]
    _, first = np.unique(hashes, return_index=True)
    keep = np.zeros(len(hashes), dtype=bool)
    keep[first] = True
    return np.flatnonzero(~keep)


#: RDS+'s attachment: every target example (task, its position among the task's queries, its text when it came from a file)
TARGETS_FILE = "targets.arrow"


def targets_table(arrays: Mapping[str, np.ndarray], texts: Mapping[str, list[str] | None]) -> Any:
    """The target examples as a table, so a selected row's ``nearest_target`` (a position per task) can be shown as text."""
    import pyarrow as pa

    tasks, positions, values = [], [], []
    for task, array in arrays.items():
        n = len(np.atleast_2d(array))
        tasks += [task] * n
        positions += range(n)
        task_texts = texts.get(task)
        values += list(task_texts) if task_texts is not None and len(task_texts) == n else [None] * n
    return pa.table({"task": pa.array(tasks, pa.string()), "position": pa.array(positions, pa.int64()), "text": pa.array(values, pa.string())})


def select_rds(
    pool_embeddings: str | Path,
    targets: Mapping[str, Any],
    out: str | Path,
    *,
    budget: int | float,
    aggregation: str = "max",
    quotas: Mapping[str, int] | None = None,
    group_column: str | None = None,
    group_quotas: Mapping[Any, int] | None = None,
    dedup: bool = False,
    decontaminate: float | None = None,
    target_text: str | None = None,
    target_text_column: str | None = None,
    target_messages_column: str | None = None,
    executor: Any = None,
    overwrite: bool = False,
    subset: np.ndarray | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    slurm: Any = None,
    client: Any = None,
    local: bool | None = None,
    progress: bool | None = None,
):
    """Select pool rows for target tasks with RDS+ and write them as curated shards.

    Parameters
    ----------
    pool_embeddings : path
        The pool's embedding store (its manifest says how the pool was embedded
        and where the pool's rows are).
    targets : mapping of task name to a data file, an embedding store, or an array (n, dim)
        Query examples per task, in turn order. Files are embedded with the
        pool store's own encoder (model, pooling, layer).
    budget : int or float
        Rows to select, or a fraction of the pool.
    quotas : mapping of task to count, optional
        Per-task caps for the round-robin (they must add up to at least the budget).
    group_column, group_quotas : str, mapping of value to count, optional
        Per-source caps: at most ``group_quotas[v]`` selected rows whose pool
        column ``group_column`` is ``v`` (values without a quota are uncapped).
        Rows of a full group are passed over; when that exhausts a task's top-k
        the pool is scored again with a larger k, so the result is exact.
    dedup : bool
        Drop exact-duplicate texts before selection (the first occurrence stays).
    decontaminate : float, optional
        Drop pool rows whose cosine to any target example is at least this.
    subset : ndarray of int, optional
        Store positions of the only rows to consider (a pipeline step sees the
        rows the previous one kept); the result is that of a store holding just
        those rows. The budget's fraction is of ``len(subset)``.
    executor : thresher.jobs.executor.Executor, optional
        Where the scoring tasks run (default: a local Dask cluster started for the call).
    scheduler, workers, slurm, client, local, progress
        Deprecated: ``executor=Executor.from_settings(...)``.

    Returns
    -------
    thresher.stores.CuratedShards
        Selected rows with ``score``, ``task`` (the task that picked the row),
        ``task_scores`` (one score per task, in target order) and
        ``nearest_target`` (per task, the position of the target example the row
        is closest to); the attachment ``targets.arrow`` holds every target
        example (``task``, ``position``, ``text``) to read those positions by.
    """
    from thresher.exceptions import ParameterError
    from thresher.jobs.executor import stage_executor
    from thresher.jobs.score_job import score_store
    from thresher.pipeline.targets import load_targets, target_texts
    from thresher.selectors._base import budget_rounding, resolve_budget
    from thresher.selectors.rds import NeedDeeperRankings, RDSPlus
    from thresher.stores.curated import write_curated
    from thresher.stores.embedding_store import open_embedding_store
    from thresher.stores.subset import StoreSubset, check_subset, subset_digest

    from thresher.stores.output_guard import artefact_inputs, check_output

    executor = stage_executor(executor, "select_rds", scheduler=scheduler, workers=workers, slurm=slurm, client=client, local=local,
                              progress=progress)
    check_output(out, "curated", inputs={"pool_embeddings": pool_embeddings, "targets": targets, "pool_files": artefact_inputs(pool_embeddings)}, overwrite=overwrite)
    store = open_embedding_store(pool_embeddings)
    pool_rows = store.reopen_pool()  # refuses pool files changed since they were embedded, before any work or output
    subset = check_subset(subset, store.n_rows, "select_rds")
    pool = store if subset is None else StoreSubset(store, subset)
    selector = RDSPlus(aggregation=aggregation, decontaminate=decontaminate)
    selector.validate_params()
    n_budget = resolve_budget(budget, pool.n_rows, "RDSPlus")
    if (group_column is None) != (group_quotas is None):
        raise ParameterError("select_rds takes group_column and group_quotas together (--group-column with --group-quota).")
    arrays, target_fps = load_targets(targets, store, text=target_text, text_column=target_text_column, messages_column=target_messages_column)
    exclude = exact_duplicate_positions(store, subset) if dedup else None
    state = selector.prepare(pool, budget=n_budget, targets=arrays, exclude=exclude)

    params = {**selector.get_params(), "budget": n_budget, "quotas": dict(quotas) if quotas else None, "dedup": dedup, "targets": list(arrays)}
    if group_column is not None:
        params.update(group_column=group_column, group_quotas={str(k): int(v) for k, v in group_quotas.items()})
    if subset is not None:
        params["subset"] = subset_digest(subset)
    fingerprint = RDS_STEP.fingerprint([store.fingerprint, *target_fps.values()], params)

    def run(executor: Any) -> Any:
        job = executor.new_job()
        groups = None
        if group_column is not None:
            from thresher.pipeline.columns import read_labels

            groups = read_labels(store, group_column, executor.map_fn(job))
            groups = groups if subset is None else groups[subset]
        scored_state = state
        while True:
            merged = score_store(store, selector, scored_state, executor=executor, subset=subset, job=job)
            try:
                selection = selector.finish(scored_state, merged, pool, budget=n_budget, quotas=quotas, groups=groups,
                                            group_quotas=group_quotas)
                break
            except NeedDeeperRankings as deeper:
                scored_state = deeper.state
        summary = {**selection.summary, "n_exact_duplicates_removed": 0 if exclude is None else int(len(exclude)), "rows_in": pool.n_rows}
        rounding = budget_rounding(budget, pool.n_rows, n_budget)
        if rounding is not None:
            summary["budget_rounding"] = rounding
        texts = target_texts(targets, store, text=target_text, text_column=target_text_column, messages_column=target_messages_column)
        return write_curated(
            out, pool=pool_rows, positions=_store_positions(selection.positions, subset), columns=selection.selection_columns(),
            expected_ids=selection.ids, selector=selector.name, params=params, fingerprint=fingerprint, seed=selector.seed,
            inputs={"pool_embeddings": store.fingerprint, **{f"target:{t}": fp for t, fp in target_fps.items()}},
            summary=summary, overwrite=overwrite, map_fn=executor.map_fn(job), job=job,
            attachments={TARGETS_FILE: targets_table(arrays, texts)},
        )

    with executor.started():
        return run(executor)


def select_batches(
    pool_embeddings: str | Path,
    out: str | Path,
    *,
    index: str | Path | None = None,
    batch_size: int = 1024,
    community_size: int = 32,
    rank_window: tuple[int, int] = (30, 130),
    n_hard_negatives: int = 0,
    group_column: str | None = None,
    drop_last: bool = True,
    budget: int | float = 1.0,
    partition: str = "auto",
    part_rows: int | None = None,
    rank_scope: str = "pool",
    teacher_recall: float | None = 0.95,
    seed: int = 0,
    executor: Any = None,
    overwrite: bool = False,
    subset: np.ndarray | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    slurm: Any = None,
    client: Any = None,
    local: bool | None = None,
    progress: bool | None = None,
):
    """B3 batch mining over a store, written as curated shards in batch order (see :class:`BatchMiner`).

    ``index`` is a thresher FAISS index over the same store (its teacher
    ranks); without one, exact search is used, which suits small pools only.
    The work runs on ``executor`` (default: a local Dask cluster started for
    the call; ``scheduler, workers, slurm, client, local, progress`` are its
    deprecated spellings). One level (``partition``; "auto" up to 250,000
    rows): the neighbour search runs shard by shard on the executor, the graph,
    METIS and batch assembly on the driver. Two levels: the driver trains the
    coarse k-means on a sample; region assignment (per shard) and each part's
    search, graph and METIS (``part_rows`` rows a part, default 100,000) run on
    the executor (:mod:`thresher.jobs.b3_parts_job`); the driver assembles the batches.
    ``rank_scope="part"`` (always two levels): each part ranks its rows among
    its own rows, without ``index`` (see :class:`BatchMiner`).
    With an IVF index, the teacher searches the fewest lists whose rank
    windows hold ``teacher_recall`` of the exact ones (measured by one task on
    256 seeded rows; the manifest's summary records it as ``teacher``).

    ``subset`` (store positions) restricts the stage to those rows, as if the
    store held only them: teacher ranks are counted among the subset (found as
    :class:`~thresher.stores.subset.SubsetNeighbors` says, by the subset's share of the store), the rank window
    ``[p, p + m)`` and the budget's fraction are of the subset.
    """
    import dataclasses

    from thresher.exceptions import ArtifactError, ParameterError
    from thresher.jobs.executor import stage_executor
    from thresher.selectors.batch_mining import BatchMiner
    from thresher.stores.curated import write_curated
    from thresher.stores.embedding_store import open_embedding_store
    from thresher.stores.index import open_index
    from thresher.stores.subset import StoreSubset, check_subset, subset_digest

    from thresher.stores.output_guard import artefact_inputs, check_output

    executor = stage_executor(executor, "select_batches", scheduler=scheduler, workers=workers, slurm=slurm, client=client, local=local,
                              progress=progress)
    check_output(out, "curated", inputs={"pool_embeddings": pool_embeddings, "index": index, "pool_files": artefact_inputs(pool_embeddings)}, overwrite=overwrite)
    store = open_embedding_store(pool_embeddings)
    pool_rows = store.reopen_pool()  # refuses pool files changed since they were embedded, before any work or output
    subset = check_subset(subset, store.n_rows, "select_batches")
    pool = store if subset is None else StoreSubset(store, subset)
    index_fingerprint = None
    if rank_scope == "part":
        index = None  # each part ranks its own rows: the pool's index is neither read nor an input
    if index is not None:
        if not Path(index).exists():
            raise ArtifactError(f"The index {index} does not exist: build it with `thresher index --embeddings {store.path} --out {index}`.")
        # checked against the store here, then let go: the tasks open it where they run (at 1M rows an IVF-Flat index is 1.5 GB)
        index_fingerprint = open_index(index, store=store).manifest["fingerprint"]
    from thresher.selectors.b3_partition import DEFAULT_PART_ROWS

    miner = BatchMiner(batch_size=batch_size, community_size=community_size, rank_window=tuple(rank_window),
                       n_hard_negatives=n_hard_negatives, drop_last=drop_last, partition=partition,
                       part_rows=DEFAULT_PART_ROWS if part_rows is None else part_rows, rank_scope=rank_scope, teacher_recall=teacher_recall,
                       seed=seed)
    miner.validate_params()
    from thresher.jobs.b3_parts_job import parts_on_cluster
    from thresher.jobs.neighbors_job import teacher_depth_on_cluster, window_on_cluster
    from thresher.pipeline.columns import read_labels
    from thresher.selectors._base import budget_rounding, resolve_budget

    p, stop = int(rank_window[0]), int(rank_window[1])
    if stop >= pool.n_rows:
        raise ParameterError(f"The 'rank_window' of BatchMiner ends at rank {stop}, but the pool has only {pool.n_rows} rows; p + m must be < the pool size.")
    groups = read_labels(store, group_column) if group_column else None
    if groups is not None and subset is not None:
        groups = groups[subset]
    if miner.two_levels(pool.n_rows):
        n_budget = resolve_budget(budget, pool.n_rows, "BatchMiner")
        state = miner.prepare(pool, budget=n_budget, groups=groups)
        with executor.started():
            job = executor.new_job()
            depth = teacher_depth_on_cluster(store, index, miner, executor=executor, subset=subset, job=job)
            state = dataclasses.replace(state, depth=depth)
            plan, results = parts_on_cluster(store, index, miner, state, groups=groups, executor=executor, subset=subset, job=job)
            job = dict(job)  # read before the cluster closes
        selection = miner.finish_parts(state, plan, results, pool, budget=n_budget)
        del plan, results
        rounding = budget_rounding(budget, pool.n_rows, n_budget)
        if rounding is not None:
            selection = dataclasses.replace(selection, summary={**selection.summary, "budget_rounding": rounding})
    else:
        with executor.started():
            job = executor.new_job()
            depth = teacher_depth_on_cluster(store, index, miner, executor=executor, subset=subset, job=job)
            window = window_on_cluster(store, index, p, stop - p, executor=executor, subset=subset, job=job, miner=miner, depth=depth)
            job = dict(job)  # read before the cluster closes
        selection = miner.select(pool, budget=budget, groups=groups, window=window)
        selection = dataclasses.replace(selection, summary={**selection.summary, "teacher": None if depth is None else depth.summary()})
        del window
    params = {**selection.params, "budget": budget, "group_column": group_column}
    if subset is not None:
        params["subset"] = subset_digest(subset)
    inputs = {"pool_embeddings": store.fingerprint, **({"index": index_fingerprint} if index_fingerprint else {})}
    fingerprint = B3_STEP.fingerprint(list(inputs.values()), params)
    return write_curated(
        out, pool=pool_rows, positions=_store_positions(selection.positions, subset), columns=selection.selection_columns(),
        expected_ids=selection.ids, selector=miner.name, params=params, fingerprint=fingerprint, seed=seed, inputs=inputs,
        summary={**selection.summary, "rows_in": pool.n_rows}, rows_per_shard=max(batch_size, (50_000 // batch_size) * batch_size), overwrite=overwrite, job=job,
    )
