"""The semantic-dedup stage: embedding store → SemDeDup → kept rows as curated shards + ``removed.arrow``.

SemDeDup (Abbas et al. 2023, as NeMo Curator runs it; the definition, its
tie-breaks and its exactness are in :mod:`thresher.selectors.semdedup`):

1. Fit spherical k-means on a seeded sample of the rows (of ``subset`` when
   given), on the driver, thread-invariant (:mod:`thresher.selectors.spherical_kmeans`).
2. Assign every row to its nearest centroid, streaming, one task per store
   shard (on Dask, or in this process with ``local``).
3. Group positions by cluster on the driver; deduplicate cluster by cluster,
   clusters packed into tasks of about ``THRESHER_PARTITION_ROWS`` rows (a
   large cluster alone, blocked inside its task so no more than
   block x cluster similarities exist at once). A task reads its clusters'
   vectors from the memory-mapped store.
4. Write the kept rows (pool order) as curated shards with ``cluster``,
   ``centroid_distance`` and ``max_similarity``, and ``removed.arrow``
   (``id``, ``duplicate_of``, ``similarity``, ``max_similarity``,
   ``cluster``, in pool order) before the manifest, which lists it with its
   checksum under ``attachments``.

With ``mode="exact"`` (:mod:`thresher.selectors.semdedup_exact`), step 2 also
marks, per row, the clusters it may have a near-duplicate in; step 3's tasks
return every pair at cosine >= 1 - eps with an end in their clusters (reading
the marked rows of nearby clusters from the store), and the driver keeps rows
greedily over those pairs, in the paper's order made global.

Every result is the same for any number of workers, shards, blocks or threads.
The driver holds per-row scalars only (position, cluster, cosines: about 60
bytes a row at peak; exact mode adds n_clusters / 8 bytes a row of marks and
24 bytes per near-duplicate pair), never the vectors; a task holds its
clusters' vectors (exact mode: and the marked rows of the clusters near them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from thresher.pipeline.steps.semdedup import STEP as SEMDEDUP_STEP
from thresher.pipeline.steps.semdedup import VERSION as SEMDEDUP_STAGE_VERSION  # noqa: F401 (its old name)
from thresher.stores.ids import store_ids_at as ids_at  # pool ids at store positions, shard by shard

REMOVED_FILE = "removed.arrow"
#: selection columns of the kept rows (a pool column of one of these names is renamed ``<name>_pool``)
SEMDEDUP_COLUMNS = ("rank", "cluster", "centroid_distance", "max_similarity")


def _cluster_task(store_path: str, groups: list[tuple[int, np.ndarray, np.ndarray]], *, selector: Any, rows: np.ndarray | None,
                  context: Any) -> Any:
    """SemDeDup's work on ``groups`` ((cluster, positions, centroid cosines)), vectors read from the store
    (:meth:`thresher.selectors.semdedup.SemDeDup.cluster_task`).

    Positions are those of the pool SemDeDup sees: store positions, or with
    ``rows`` (the subset's sorted store positions) positions within the subset.
    """
    from thresher.stores.embedding_store import open_embedding_store

    store = open_embedding_store(store_path)
    with store.reader() as store_take:  # one read per cluster: the shards stay mapped for the task

        def take(p: np.ndarray) -> np.ndarray:
            return store_take(p if rows is None else rows[p])

        return selector.cluster_task(groups, take, context)


def _id_array(ids: np.ndarray, id_type: pa.DataType) -> pa.Array:
    return pa.array(ids.tolist() if ids.dtype == object else ids, type=id_type)


def _nullable(values: np.ndarray) -> pa.Array:
    return pa.array(values, type=pa.float64(), mask=~np.isfinite(values))


def select_semdedup(
    pool_embeddings: str | Path,
    out: str | Path,
    *,
    n_clusters: int,
    eps: float,
    sample_size: int | None = None,
    n_iter: int = 25,
    seed: int = 0,
    mode: str = "paper",
    subset: Any = None,
    block_rows: int | None = None,
    executor: Any = None,
    overwrite: bool = False,
    scheduler: str | None = None,
    workers: int | None = None,
    slurm: Any = None,
    client: Any = None,
    local: bool | None = None,
    progress: bool | None = None,
):
    """Remove semantic near-duplicates with SemDeDup (Abbas et al. 2023) and write the kept rows as curated shards.

    Parameters
    ----------
    pool_embeddings : path
        The pool's embedding store.
    out : path
        Output curated-shard directory; it also gets ``removed.arrow``.
    n_clusters : int
        k of the k-means (at most the number of rows considered).
    eps : float in [0, 1)
        A row is removed when its cosine to an earlier row of its cluster's
        order (farthest from the centroid first) is >= 1 - eps.
    sample_size : int, optional
        Rows the k-means is fitted on (default min(rows, 256 x n_clusters)).
    n_iter, seed, block_rows
        As :class:`thresher.selectors.semdedup.SemDeDup`.
    mode : {"paper", "exact"}
        ``"paper"`` (default): the paper's within-cluster rule. ``"exact"``: a
        row goes when a kept row of any cluster is within eps; every removed
        row then has a kept twin at cosine >= 1 - eps (``duplicate_of``) and no
        two kept rows are that close.
    subset : array of int, optional
        Sorted unique store positions to deduplicate (the rows a previous step
        kept); None = every row.
    executor : thresher.jobs.executor.Executor, optional
        Where the per-shard and per-cluster tasks run (default: a local Dask
        cluster started for the call; ``Executor.in_process()``: in this process).
    scheduler, workers, slurm, client, local, progress
        Deprecated: ``executor=Executor.from_settings(...)``.

    Returns
    -------
    thresher.stores.CuratedShards
        Kept rows in pool order; the manifest's summary holds ``rows_in``,
        ``kept``, ``removed``, ``clusters``, ``eps`` (and more); use
        :func:`read_removed` for the removed rows.
    """
    from thresher.config import runtime_config
    from thresher.exceptions import ArtifactError
    from thresher.jobs.executor import stage_executor
    from thresher.jobs.score_job import score_store
    from thresher.rng import as_generator
    from thresher.selectors.semdedup import SemDeDup
    from thresher.stores.curated import open_curated, write_curated
    from thresher.stores.embedding_store import open_embedding_store
    from thresher.stores.manifest import damage, read_manifest
    from thresher.stores.subset import StoreSubset, check_subset, subset_digest

    from thresher.stores.output_guard import artefact_inputs, check_output

    executor = stage_executor(executor, "select_semdedup", scheduler=scheduler, workers=workers, slurm=slurm, client=client, local=local,
                              progress=progress)
    check_output(out, "curated", inputs={"pool_embeddings": pool_embeddings, "pool_files": artefact_inputs(pool_embeddings)}, overwrite=overwrite)
    store = open_embedding_store(pool_embeddings)
    pool = store.reopen_pool()  # refuses pool files changed since they were embedded, before any work or output
    rows = check_subset(subset, store.n_rows, "select_semdedup")
    n_in = store.n_rows if rows is None else len(rows)
    selector = SemDeDup(n_clusters=n_clusters, eps=eps, sample_size=sample_size, n_iter=n_iter, block_rows=block_rows, seed=seed, mode=mode)
    selector.check_rows(n_in)
    params = {k: v for k, v in selector.get_params().items() if k != "block_rows"}  # block size never changes the result
    if mode == "paper":
        del params["mode"]  # as before there were modes: a finished paper-mode output keeps its fingerprint
    params["subset"] = None if rows is None else {"rows": int(n_in), "hash": subset_digest(rows)}
    fingerprint = SEMDEDUP_STEP.fingerprint([store.fingerprint], params)
    if not overwrite:
        try:
            if read_manifest(out, "curated").get("fingerprint") == fingerprint and damage(out) is None:
                return open_curated(out)
        except ArtifactError:
            pass  # absent or unfinished: write_curated decides
    path = str(Path(store.path))
    config = runtime_config()
    assign_rows = block_rows or config.block_rows

    seen = store if rows is None else StoreSubset(store, rows)
    # the k-means fit runs on the driver alone, before this call starts its cluster: beside an idle local cluster it ran
    # 2-12% slower on 2 cores (200k rows, 1,000 clusters; measured, issue 19)
    state = selector.prepare(seen, budget=n_in, rng=as_generator(seed, "SemDeDup"))  # as SemDeDup.select draws it

    def run(executor: Any) -> Any:
        job = executor.new_job()
        assignment = score_store(store, selector, state, executor=executor, subset=rows, block_rows=assign_rows, job=job,
                                 description="assign")

        def run_tasks(tasks: list[list[tuple[int, np.ndarray, np.ndarray]]], context: Any) -> list[Any]:
            return executor.map(_cluster_task, [(path, task) for task in tasks], shared={"selector": selector, "rows": rows, "context": context},
                                job=job, rows=[sum(len(g[1]) for g in task) for task in tasks], description="dedup")

        selection = selector.finish(state, assignment, seen, run_tasks=run_tasks, task_rows=config.partition_rows,
                                    ids_at=lambda p: ids_at(store, p if rows is None else rows[p]))
        del assignment
        removed = selection.removed
        removed_table = pa.table({
            "id": _id_array(removed.ids, pool.id_type),
            "duplicate_of": _id_array(removed.duplicate_of, pool.id_type),
            "similarity": pa.array(removed.similarity, type=pa.float64()),
            "max_similarity": pa.array(removed.max_similarity, type=pa.float64()),
            "cluster": pa.array(removed.cluster, type=pa.int64()),
        })
        columns = {
            "cluster": pa.array(selection.columns["cluster"], type=pa.int64()),
            "centroid_distance": pa.array(selection.columns["centroid_distance"], type=pa.float64()),
            "max_similarity": _nullable(selection.columns["max_similarity"]),
        }
        return write_curated(
            out, pool=pool, positions=selection.positions if rows is None else rows[selection.positions], columns=columns,
            expected_ids=selection.ids, selector=selector.name, params=params, fingerprint=fingerprint, seed=seed,
            inputs={"pool_embeddings": store.fingerprint},
            summary=selection.summary, overwrite=overwrite, map_fn=executor.map_fn(job), job=job,
            attachments={REMOVED_FILE: removed_table},
        )

    with executor.started():
        return run(executor)


def read_removed(path: str | Path, *, verify: bool = True) -> pa.Table:
    """The ``removed.arrow`` table of a finished semdedup directory; ``verify`` checks it against the manifest's checksum."""
    from thresher.exceptions import ArtifactError
    from thresher.fingerprint import hash_file
    from thresher.stores.arrow_io import read_stream_shard
    from thresher.stores.manifest import artifact_file, read_manifest

    path = Path(path)
    manifest = read_manifest(path, "curated")
    entry = next((a for a in manifest.get("attachments", []) if a["file"] == REMOVED_FILE), None)
    if manifest.get("selector") != "semdedup" or entry is None:
        raise ArtifactError(f"{path} is not a semdedup output: its manifest lists no {REMOVED_FILE}.")
    file = artifact_file(path, REMOVED_FILE, key="attachments")  # never a link out of the directory
    if verify and file.is_file():
        algo, _, expected = entry["checksum"].partition(":")
        if hash_file(file) != expected:
            raise ArtifactError(f"{file} is corrupt or truncated: its {algo} checksum differs from the manifest's.")
    table = read_stream_shard(file)
    if table.num_rows != entry["rows"]:
        raise ArtifactError(f"{file} has {table.num_rows} rows; the manifest says {entry['rows']}.")
    return table
