"""The acquisition stage: embedding store + model predictions (+ labelled rows) → AnchorAL → acquisition → curated shards.

One active-learning round over a pool that was embedded by thresher: the
model's class probabilities (or MC / ensemble samples, for BALD) are given per
pool id, the already-labelled rows are given with their labels; optionally an
AnchorAL sub-pool (Lesci & Vlachos, NAACL 2024, arXiv 2404.05623) restricts the
candidates, then uncertainty acquisition with top-k or stochastic batch
sampling (Kirsch et al., TMLR 2023, arXiv 2106.12059) picks the batch. The
picked rows are written as curated shards with ``score``, ``raw_score``,
``in_subpool``, ``anchor_hits`` and ``round``.

Runs in this process (no Dask): the predictions and the labels are read once,
on the driver. Memory: the predictions (n × S × C float64), the pool ids, and
the sub-pool.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.exceptions import InputDataError, ParameterError
from thresher.params import UNSET, renamed_argument

ACQUIRE_STAGE_VERSION = 1
PREDICTION_SUFFIXES = (".parquet", ".arrow", ".feather")
LABEL_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv")


# --------------------------------------------------------------------------------------------------
# Reading inputs
# --------------------------------------------------------------------------------------------------


def _read_table_file(path: Path) -> pa.Table:
    """One parquet, Arrow IPC (stream or file), jsonl or csv file as a table; an unreadable one is refused, naming it."""
    try:
        return _read_table_by_suffix(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputDataError(f"Cannot read {path} as a {path.suffix.lstrip('.').lower()} file: {exc}") from None


def _read_table_by_suffix(path: Path) -> pa.Table:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path)
    if suffix in (".arrow", ".feather"):
        import pyarrow.ipc as ipc

        try:
            with pa.memory_map(str(path)) as source:
                return ipc.open_stream(source).read_all()
        except pa.ArrowInvalid:
            with pa.memory_map(str(path)) as source:
                return ipc.open_file(source).read_all()
    if suffix in (".jsonl", ".json"):
        import pyarrow.json as pj

        return pj.read_json(path)
    if suffix == ".csv":
        import pyarrow.csv as pcsv

        return pcsv.read_csv(path)
    raise InputDataError(f"Cannot read {path}: expected a .parquet, .arrow, .jsonl or .csv file.")


def read_table(path: str | Path, suffixes: tuple[str, ...], what: str) -> tuple[pa.Table, list[Path]]:
    """A file, or every matching file of a directory (sorted, concatenated), and the files read."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in suffixes and not p.name.startswith("."))
        if not files:
            raise InputDataError(f"The {what} directory {path} holds no {', '.join(suffixes)} files.")
    elif path.exists():
        files = [path]
    else:
        raise InputDataError(f"The {what} file {path} does not exist.")
    tables = [_read_table_file(f) for f in files]
    try:
        return pa.concat_tables(tables, promote_options="permissive"), files
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InputDataError(f"The {what} files under {path} do not share one schema: {exc}") from None


def _as_store_ids(values: pa.ChunkedArray | pa.Array, store_ids: np.ndarray, where: str) -> np.ndarray:
    """Ids read from a file, as the store's id kind (int64 or str); nulls refused."""
    if values.null_count:
        raise InputDataError(f"The 'id' column of {where} holds {values.null_count} null ids.")
    raw = values.to_numpy(zero_copy_only=False)
    if store_ids.dtype == object:
        return np.asarray([str(v) for v in raw], dtype=object)
    try:
        return np.asarray(raw).astype(np.int64)
    except (TypeError, ValueError):
        raise InputDataError(f"The ids of {where} must be integers, as the pool's are; got e.g. {raw[0]!r}.") from None


def id_positions(store: Any, ids: np.ndarray, where: str) -> np.ndarray:
    """Store positions of ``ids``; an id not in the pool, or one given twice, is refused, naming it."""
    try:
        positions = store.positions_of(ids)
    except InputDataError as exc:
        raise InputDataError(f"{where} names a row that is not in the pool: {exc}") from None
    unique, first, counts = np.unique(positions, return_index=True, return_counts=True)
    if len(unique) != len(positions):
        twice = ids[first[np.flatnonzero(counts > 1)[0]]]
        raise InputDataError(f"{where} gives the id {twice!r} more than once.")
    return positions


def _check_sums(values: np.ndarray, ids: np.ndarray, where: str) -> None:
    """Every row (and sample) of ``values`` (n, S, C) is a probability vector; the first bad row is named by id."""
    from thresher.selectors.acquisition import SUM_TOLERANCE

    finite = np.isfinite(values).all(axis=2)
    if not finite.all():
        row, sample = (int(i) for i in np.argwhere(~finite)[0])
        which = f", sample {sample}" if values.shape[1] > 1 else ""
        raise InputDataError(f"{where[:1].upper()}{where[1:]} hold a non-finite value (NaN or inf) for id {ids[row]!r}{which}: "
                             f"{values[row, sample].tolist()}; every probability must be a finite number.")
    bad = ((values < 0).any(axis=2)) | (np.abs(values.sum(axis=2) - 1.0) > SUM_TOLERANCE)
    if bad.any():
        row, sample = (int(i) for i in np.argwhere(bad)[0])
        v = values[row, sample]
        which = f", sample {sample}" if values.shape[1] > 1 else ""
        raise InputDataError(
            f"{where[:1].upper()}{where[1:]} are not probabilities for id {ids[row]!r}{which}: sum {v.sum():.6g}, min {v.min():.6g} "
            "(each row must be >= 0 and sum to 1 within 1e-4; apply a softmax to logits first)."
        )


def _list_column(column: pa.ChunkedArray, ids: np.ndarray, where: str, name: str) -> np.ndarray:
    """A list<float> column as (n, C), or list<list<float>> as (n, S, C); ragged rows refused by id."""
    array = column.combine_chunks()
    if not (pa.types.is_list(array.type) or pa.types.is_large_list(array.type) or pa.types.is_fixed_size_list(array.type)):
        raise InputDataError(f"The {name!r} column of {where} must hold lists of floats; it holds {array.type}.")
    if array.null_count:
        row = int(np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))[0])
        raise InputDataError(f"The {name!r} column of {where} is null for id {ids[row]!r}.")
    shape = [len(array)]
    level = array
    for depth in range(2 if name == "samples" else 1):
        lengths = pc.list_value_length(level).to_numpy(zero_copy_only=False)
        if len(lengths) == 0:
            raise InputDataError(f"The {name!r} column of {where} is empty.")
        if (lengths != lengths[0]).any():
            bad = int(np.flatnonzero(lengths != lengths[0])[0])
            row = bad if depth == 0 else bad // shape[1]
            raise InputDataError(
                f"The {name!r} column of {where} has rows of different shapes: id {ids[row]!r} has {lengths[bad]} values "
                f"where the first row has {lengths[0]}" + (" (samples of one row must all have the same number of classes)." if depth else ".")
            )
        shape.append(int(lengths[0]))
        level = pc.list_flatten(level)
    if not (pa.types.is_floating(level.type) or pa.types.is_integer(level.type)):
        raise InputDataError(f"The {name!r} column of {where} must hold floats; its values are {level.type}.")
    values = level.to_numpy(zero_copy_only=False).astype(np.float64).reshape(shape)
    return values if name == "samples" else values[:, None, :]


def read_predictions(predictions: Any, store: Any, store_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """Predictions and the store positions they belong to (``store_ids``: ``store.ids()``).

    Returns
    -------
    values : ndarray of float64, shape (n, S, C)
        S = 1 for plain probabilities.
    positions : ndarray of int64, shape (n,)
    fingerprint : str
    """
    from thresher.fingerprint import hash_bytes, hash_file

    if isinstance(predictions, np.ndarray):
        values = np.asarray(predictions, dtype=np.float64)
        if values.ndim not in (2, 3) or len(values) != store.n_rows:
            raise InputDataError(
                f"A predictions array must have shape (n_rows, C) or (n_rows, S, C) with n_rows = {store.n_rows} (the pool's rows, "
                f"in store order); got {values.shape}."
            )
        values = values[:, None, :] if values.ndim == 2 else values
        _check_sums(values, store_ids, "the predictions array")
        return values, np.arange(store.n_rows, dtype=np.int64), hash_bytes(np.ascontiguousarray(values).tobytes())
    table, files = read_table(predictions, PREDICTION_SUFFIXES, "predictions")
    where = f"the predictions {predictions}"
    if "id" not in table.column_names:
        raise InputDataError(f"{where} have no 'id' column; they have {table.column_names}.")
    has = [c for c in ("probs", "samples") if c in table.column_names]
    if len(has) != 1:
        raise InputDataError(f"{where} need exactly one of the columns 'probs' (list<float> [C]) or 'samples' "
                             f"(list<list<float>> [S][C]); they have {table.column_names}.")
    ids = _as_store_ids(table.column("id"), store_ids, where)
    values = _list_column(table.column(has[0]), ids, where, has[0])
    if values.shape[2] < 2:
        raise InputDataError(f"{where} give {values.shape[2]} class probabilities per row; at least 2 are needed.")
    _check_sums(values, ids, where)
    positions = id_positions(store, ids, where)
    fingerprint = hash_bytes("".join(hash_file(f) for f in files).encode())
    return values, positions, fingerprint


def read_labeled(labeled: str | Path, store: Any, store_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """Positions and labels of the labelled rows (a file with ``id`` and ``label`` columns)."""
    from thresher.fingerprint import hash_bytes, hash_file

    table, files = read_table(labeled, LABEL_SUFFIXES, "labeled")
    where = f"the labeled rows {labeled}"
    missing = [c for c in ("id", "label") if c not in table.column_names]
    if missing:
        raise InputDataError(f"{where} lack the column(s) {missing}; they have {table.column_names}.")
    ids = _as_store_ids(table.column("id"), store_ids, where)
    label_col = table.column("label")
    if label_col.null_count:
        row = int(np.flatnonzero(label_col.is_null().to_numpy(zero_copy_only=False))[0])
        raise InputDataError(f"{where} give no label (null) for id {ids[row]!r}.")
    labels = label_col.to_numpy(zero_copy_only=False)
    positions = id_positions(store, ids, where)
    return positions, labels, hash_bytes("".join(hash_file(f) for f in files).encode())


def label_classes(labels: np.ndarray, n_classes: int, where: str) -> list[Any]:
    """The class of each probability column: 0..C-1 for integer labels, else the C sorted distinct labels."""
    if len(labels) and np.issubdtype(np.asarray(labels).dtype, np.integer):
        out_of_range = (labels < 0) | (labels >= n_classes)
        if out_of_range.any():
            raise InputDataError(f"{where}: label {labels[out_of_range][0]!r} is not a class index in [0, {n_classes}) (the predictions have {n_classes} columns).")
        return list(range(n_classes))
    classes = sorted(set(np.asarray(labels).tolist()))
    if len(classes) != n_classes:
        raise InputDataError(
            f"{where}: the labelled rows hold {len(classes)} classes {classes} but the predictions have {n_classes} columns. "
            "AnchorAL needs labelled rows of every class (use integer labels 0..C-1 to name the columns)."
        )
    return classes


# --------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------


def select_acquire(
    pool_embeddings: str | Path,
    out: str | Path,
    *,
    predictions: Any,
    budget: int,
    labelled: str | Path | None = UNSET,
    method: Literal["entropy", "bald", "margin", "least_confidence", "variation_ratio"] = UNSET,
    sampling: Literal["topk", "softmax", "power", "softrank"] = "power",
    beta: float = 1.0,
    anchoral: bool = False,
    n_anchors: int = 10,
    n_neighbors: int = 50,
    subpool_size: int = 10_000,
    index: str | Path | None = None,
    round: int = 0,
    seed: int = 0,
    overwrite: bool = False,
    labeled: Any = UNSET,
    score: Any = UNSET,
):
    """One active-learning acquisition round over an embedded pool; the picked rows become curated shards.

    Parameters
    ----------
    pool_embeddings : path
        The pool's embedding store.
    out : path
        Output curated-shard directory.
    predictions : path or ndarray
        A parquet / Arrow file or directory with an ``id`` column and ``probs`` (list<float> [C]) or
        ``samples`` (list<list<float>> [S][C]); or an array (n_rows, C) / (n_rows, S, C) in store order.
        Every unlabelled row needs one; rows of labelled ids are ignored.
    budget : int
        Rows to acquire (>= 1, at most the candidates).
    labelled : path, optional
        A parquet / jsonl / csv file with ``id`` and ``label``: the labelled rows (never acquired;
        AnchorAL's anchors). Integer labels are column indices; other labels map onto the columns in sorted order.
    method, sampling, beta
        As :class:`thresher.selectors.acquisition.Acquisition` (``method``: the uncertainty score, default ``'bald'``).
    anchoral : bool
        Restrict the candidates to the AnchorAL sub-pool (``n_anchors``, ``n_neighbors``, ``subpool_size``);
        needs ``labelled`` with rows of every class.
    index : path, optional
        A thresher FAISS index over the store, for AnchorAL's neighbour search (default: exact search).
    round : int
        Written in the ``round`` column and the manifest.
    seed : int
        Seeds the anchors and the stochastic sampling; derive it per round (e.g. ``seed + round``) so anchors change.
    labeled, score
        Deprecated spellings of ``labelled`` and ``method`` (a DeprecationWarning names the new one).

    Returns
    -------
    thresher.stores.CuratedShards
        Rows in pick order, with ``rank``, ``score``, ``raw_score``, ``in_subpool`` (the row came from an
        AnchorAL sub-pool), ``anchor_hits`` (anchors that retrieved it; 0 without AnchorAL) and ``round``.
    """
    from thresher.fingerprint import fingerprint_of
    from thresher.rng import as_generator
    from thresher.params import Interval, check_param
    from thresher.selectors.acquisition import Acquisition
    from thresher.selectors.anchoral import anchoral_subpool
    from thresher.stores.curated import write_curated
    from thresher.stores.embedding_store import open_embedding_store
    from thresher.stores.subset import StoreSubset

    from thresher.stores.output_guard import artefact_inputs, check_output

    # the old names stay the local ones: the manifest's params and inputs keep their keys (and cached outputs their fingerprints)
    labeled = renamed_argument("select_acquire", "labelled", labelled, "labeled", labeled, None)
    score = renamed_argument("select_acquire", "method", method, "score", score, "bald")
    check_output(out, "curated", inputs={"pool_embeddings": pool_embeddings, "predictions": predictions, "labeled": labeled, "index": index,
                                       "pool_files": artefact_inputs(pool_embeddings)}, overwrite=overwrite)
    Acquisition(method=score, sampling=sampling, beta=beta, seed=seed).validate_params()
    check_param("select_acquire", "budget", budget, [Interval(int, 1, None)])
    check_param("select_acquire", "round", round, [Interval(int, 0, None)])
    if anchoral and labeled is None:
        raise ParameterError("AnchorAL (anchoral=True) needs the labelled rows (labelled=PATH with id and label columns) to pick anchors.")
    store = open_embedding_store(pool_embeddings)
    pool = store.reopen_pool()  # refuses pool files changed since they were embedded, before any work or output
    ids = store.ids()
    values, pred_positions, pred_fp = read_predictions(predictions, store, ids)
    n_classes = values.shape[2]
    if score == "bald" and values.shape[1] < 2:
        raise InputDataError("BALD needs several predictions per row (a 'samples' column [S][C] with S >= 2); "
                             "the predictions give one. Use method='entropy', or give MC-dropout / ensemble samples.")
    if labeled is not None:
        lab_positions, lab_labels, lab_fp = read_labeled(labeled, store, ids)
    else:
        lab_positions, lab_labels, lab_fp = np.empty(0, dtype=np.int64), np.empty(0), None
    is_labelled = np.zeros(store.n_rows, dtype=bool)
    is_labelled[lab_positions] = True
    row_of = np.full(store.n_rows, -1, dtype=np.int64)
    row_of[pred_positions] = np.arange(len(pred_positions))
    lacking = np.flatnonzero((row_of < 0) & ~is_labelled)
    if len(lacking):
        raise InputDataError(f"The predictions {predictions if not isinstance(predictions, np.ndarray) else 'array'} have no row for "
                             f"{len(lacking)} unlabelled pool rows, e.g. id {ids[lacking[0]]!r}; every unlabelled row needs a prediction.")

    rng = as_generator(seed, "select_acquire")
    hits_of = None
    anchors = np.empty(0, dtype=np.int64)
    if anchoral:
        classes = label_classes(lab_labels, n_classes, f"the labeled rows {labeled}")
        neighbors = _open_index(index, store)
        sub = anchoral_subpool(store, lab_positions, lab_labels, classes=classes, n_anchors=n_anchors, n_neighbors=n_neighbors,
                               subpool_size=subpool_size, neighbors=neighbors, seed=rng)
        candidates, hits_of, anchors = sub.positions, sub.n_anchor_hits, sub.anchors
    else:
        candidates = np.flatnonzero(~is_labelled).astype(np.int64)
    if len(candidates) == 0:
        raise InputDataError("Every pool row is labelled; there is nothing left to acquire.")
    if budget > len(candidates):
        raise ParameterError(f"The 'budget' parameter of select_acquire asks for {budget} rows but only {len(candidates)} are candidates "
                             f"({'the AnchorAL sub-pool' if anchoral else 'the unlabelled rows'}); lower it" + (" or raise subpool_size." if anchoral else "."))
    # the candidates as the pool the selector sees, in their order (AnchorAL's sub-pool order: it orders the random draws);
    # the selector continues the generator AnchorAL drew from
    selection = Acquisition(method=score, sampling=sampling, beta=beta, seed=rng).select(
        StoreSubset(store, candidates), budget=int(budget), probs=values[row_of[candidates]])
    local = selection.positions
    picked = candidates[local]

    params = {"score": score, "sampling": sampling, "beta": float(beta), "budget": int(budget), "anchoral": bool(anchoral),
              "n_anchors": n_anchors, "n_neighbors": n_neighbors, "subpool_size": subpool_size, "round": int(round)}
    inputs = {"pool_embeddings": store.fingerprint, "predictions": pred_fp, **({"labeled": lab_fp} if lab_fp else {})}
    fingerprint = fingerprint_of("acquire", ACQUIRE_STAGE_VERSION, {**params, "seed": seed}, list(inputs.values()))
    columns = {
        "score": selection.score,
        "raw_score": selection.columns["raw_score"],
        "in_subpool": np.full(len(picked), bool(anchoral)),
        "anchor_hits": (hits_of[local] if hits_of is not None else np.zeros(len(picked))).astype(np.int64),
        "round": np.full(len(picked), int(round), dtype=np.int64),
    }
    labelled_counts = {}
    if len(lab_labels):
        values_, counts = np.unique(lab_labels, return_counts=True)
        labelled_counts = {str(v.item() if isinstance(v, np.generic) else v): int(c) for v, c in zip(values_, counts)}
    summary = {
        "n_pool": int(store.n_rows), "n_labelled": int(len(lab_positions)), "n_candidates": int(len(candidates)),
        "n_selected": int(len(picked)), "n_classes": int(n_classes), "n_samples": int(values.shape[1]),
        "n_nonfinite": selection.summary["n_nonfinite"], "n_anchors": int(len(anchors)), "anchors": [ids[a].item() if isinstance(ids[a], np.generic) else ids[a] for a in anchors],
        "labelled_class_counts": labelled_counts, "round": int(round),
        "whole_pool": bool(not anchoral or len(candidates) == int((~is_labelled).sum())),
        "score_mean_selected": float(np.nanmean(selection.score)) if np.isfinite(selection.score).any() else None,
        "score_mean_candidates": selection.summary["score_mean_candidates"],
    }
    return write_curated(
        out, pool=pool, positions=picked, columns=columns, expected_ids=ids[picked],
        selector="acquisition", params=params, fingerprint=fingerprint, seed=seed, inputs=inputs, summary=summary, overwrite=overwrite,
    )


def _open_index(index: str | Path | None, store: Any) -> Any:
    if index is None:
        return None
    from thresher.exceptions import ArtifactError
    from thresher.stores.index import open_index

    if not Path(index).exists():
        raise ArtifactError(f"The index {index} does not exist: build it with `thresher index --embeddings {store.path} --out {index}`.")
    return open_index(index, store=store)
