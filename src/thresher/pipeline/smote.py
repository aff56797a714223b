"""The SMOTE stage: embedding store + a label column of the pool → SMOTE (+ under-sampling) → curated shards.

The labels come from the pool itself (one column, read partition by
partition; pool partitions are the store's shards, row for row). The kept
pool rows are written first, in pool order, with all their pool columns plus
``synthetic`` (false), ``parents`` (null), ``gap`` (null) and ``embedding``;
then the synthetic rows, with ``synthetic`` true, ``parents`` (the base's and
the neighbour's pool ids), ``gap``, their class in the label column, an ``id``,
``embedding``, and nulls in the other pool columns (Chawla et al., JAIR 2002;
see :mod:`thresher.selectors.smote`).

Synthetic rows get ids (``"synthetic:<class>:<n>"``, or the integers after the
pool's largest id), unique against the whole pool.

Memory: the labels (one value per pool row), one class's vectors and FAISS
index at a time, the synthetic rows' parents and gaps (their vectors are made
and written one block at a time), and the kept rows' embeddings (which the
shards carry so the output is a self-contained training set in embedding space).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from thresher.pipeline.columns import read_labels

from thresher.pipeline.steps.smote import STEP as SMOTE_STEP
from thresher.pipeline.steps.smote import VERSION as SMOTE_STAGE_VERSION  # noqa: F401 (its old name)

#: Selection columns the stage writes; the label column may not be one of them.
SMOTE_COLUMNS = ("rank", "synthetic", "parents", "gap", "embedding")




def match_classes(mapping: Mapping[Any, Any] | None, classes: list[Any]) -> Mapping[Any, Any] | None:
    """Map keys given as text (from the CLI or a JSON file) onto the classes they spell, e.g. "1" -> 1."""
    if mapping is None or not isinstance(mapping, Mapping):
        return mapping
    by_text = {str(c): c for c in classes}
    return {(k if k in classes else by_text.get(str(k), k)): v for k, v in mapping.items()}


def _fixed_list(vectors: np.ndarray) -> pa.FixedSizeListArray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), type=pa.float32()), vectors.shape[1])


def select_smote(
    pool_embeddings: str | Path,
    out: str | Path,
    *,
    labels: str,
    sampling_strategy: Any = "auto",
    undersample_majority: float | Mapping[Any, float] | None = None,
    k_neighbors: int = 5,
    neighbors: Any = "auto",
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
    """Over-sample minority classes with SMOTE in embedding space (and under-sample the majority); write curated shards.

    Parameters
    ----------
    pool_embeddings : path
        The pool's embedding store.
    out : path
        Output curated-shard directory.
    labels : str
        The pool column holding each row's class.
    sampling_strategy, undersample_majority, k_neighbors, neighbors, seed
        As :class:`thresher.selectors.smote.SMOTE`; dict keys given as text ("1") match
        the class they spell (1).
    executor : thresher.jobs.executor.Executor, optional
        Where the per-partition reads run (default: a local Dask cluster started for the call).
    scheduler, workers, slurm, client, local, progress
        Deprecated: ``executor=Executor.from_settings(...)``.
    subset : ndarray of int, optional
        Store positions of the only rows to consider (a pipeline step sees the
        rows the previous one kept): class counts, neighbours and the kept rows
        are those of a store holding just these rows.

    Returns
    -------
    thresher.stores.CuratedShards
        Kept pool rows (pool order) then synthetic rows; the manifest's summary holds class
        counts before and after, ``n_synthetic`` and ``n_undersampled``.
    """
    from thresher.exceptions import ArtifactError, ParameterError
    from thresher.jobs.executor import stage_executor
    from thresher.selectors.smote import SMOTE, check_labels, synthetic_ids
    from thresher.stores.curated import open_curated, write_curated
    from thresher.stores.embedding_store import open_embedding_store
    from thresher.stores.manifest import damage, read_manifest
    from thresher.stores.subset import StoreSubset, check_subset, subset_digest

    from thresher.stores.output_guard import artefact_inputs, check_output

    executor = stage_executor(executor, "select_smote", scheduler=scheduler, workers=workers, slurm=slurm, client=client, local=local,
                              progress=progress)
    check_output(out, "curated", inputs={"pool_embeddings": pool_embeddings, "pool_files": artefact_inputs(pool_embeddings)}, overwrite=overwrite)
    if not isinstance(labels, str) or not labels:
        raise ParameterError(f"The 'labels' parameter of select_smote must name a pool column; got {labels!r}.")
    if labels in SMOTE_COLUMNS:
        raise ParameterError(f"The label column may not be named {labels!r}: SMOTE writes a column of that name ({list(SMOTE_COLUMNS)}).")
    store = open_embedding_store(pool_embeddings)
    pool = store.reopen_pool()  # refuses pool files changed since they were embedded, before any work or output
    subset = check_subset(subset, store.n_rows, "select_smote")
    view = store if subset is None else StoreSubset(store, subset)
    selector = SMOTE(k_neighbors=k_neighbors, sampling_strategy=sampling_strategy, undersample_majority=undersample_majority,
                     neighbors=neighbors, seed=seed)
    selector.validate_params()

    def run(executor: Any) -> Any:
        job = executor.new_job()
        map_fn = executor.map_fn(job)
        y = read_labels(store, labels, map_fn)
        y = check_labels(y if subset is None else y[subset], view.n_rows)
        classes = np.unique(y).tolist()
        selector.sampling_strategy = match_classes(sampling_strategy, classes)
        selector.undersample_majority = match_classes(undersample_majority, classes)
        plan = selector.plan(y)
        params = {**selector.describe_params(), "labels": labels,
                  "n_new": {str(c): n for c, n in plan.n_new.items()}, "n_keep": {str(c): n for c, n in plan.n_keep.items()}}
        if subset is not None:
            params["subset"] = subset_digest(subset)
        fingerprint = SMOTE_STEP.fingerprint([store.fingerprint], params)
        if not overwrite:
            try:
                if read_manifest(out, "curated").get("fingerprint") == fingerprint and damage(out) is None:
                    return open_curated(out)
            except ArtifactError:
                pass  # absent or unfinished: write_curated decides
        selection = selector.select(view, budget=1.0, labels=y)
        id_type = pool.id_type
        n_kept, synthetic = len(selection), selection.synthetic
        columns = {
            "synthetic": pa.array(np.zeros(n_kept, dtype=bool)),
            "parents": pa.nulls(n_kept, pa.list_(id_type, 2)),
            "gap": pa.nulls(n_kept, pa.float32()),
            "embedding": _fixed_list(selection.columns["embedding"]),
        }
        # ids unique against the whole pool, not only the subset this step sees
        ids = selection.synthetic_ids if subset is None else synthetic_ids(store.ids(), synthetic.label)

        def table_of(block: dict[str, Any], block_ids: np.ndarray) -> pa.Table:
            return pa.table({
                "id": pa.array(block_ids.tolist(), type=id_type),
                "synthetic": pa.array(block["synthetic"]),
                "parents": pa.FixedSizeListArray.from_arrays(pa.array(block["parents"].reshape(-1).tolist(), type=id_type), 2),
                "gap": pa.array(block["gap"], type=pa.float32()),
                "embedding": _fixed_list(block["embedding"]),
                labels: pa.array(block["label"].tolist()).cast(pool.schema.field(labels).type),
            })

        def extra() -> Any:  # one block of synthetic rows at a time: their vectors are never all held
            if not len(synthetic):
                yield table_of(selection.synthetic_columns(), ids)
            for lo, block in zip(range(0, len(synthetic), synthetic.block_rows), selection.iter_synthetic_columns()):
                yield table_of(block, ids[lo : lo + len(block["gap"])])

        return write_curated(
            out, pool=pool, positions=selection.positions if subset is None else subset[selection.positions], columns=columns, expected_ids=selection.ids, selector=selector.name,
            params=params, fingerprint=fingerprint, seed=seed, inputs={"pool_embeddings": store.fingerprint},
            summary={**selection.summary, "label_column": labels, "rows_in": view.n_rows}, overwrite=overwrite, map_fn=map_fn, extra_rows=extra(), job=job,
        )

    with executor.started():
        return run(executor)
