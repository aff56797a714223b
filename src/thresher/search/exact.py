"""Exact top-k search, streamed block by block: the oracle every approximate search is measured against.

Each block of searched rows is scored against a bounded number of queries at a
time, its top ``k`` kept and merged into the running top ``k`` (as
``faiss.contrib.exhaustive_search``), so no (n_queries, n_rows) matrix is ever
formed and memory stays bounded by the block size.

The float32 BLAS product only finds candidates: which rows are the ``k``
nearest, and their order, is decided from float64 keys with a fixed summation
order, ties to the lower position (:mod:`thresher.search.of_record`), so the
answer is the same bits whatever the block size and the BLAS thread count
(issue 19). The scores returned are those float64 scores rounded to float32.

Scores follow FAISS: for ``metric="ip"`` the inner product (higher is nearer),
for ``metric="l2"`` the *squared* Euclidean distance (lower is nearer). A
missing neighbour (``k`` larger than the rows searched) has position ``-1`` and
score ``-inf`` (ip) or ``+inf`` (l2).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from thresher.exceptions import InputDataError
from thresher.search import of_record
from thresher.search.checks import Metric, as_queries, check_int, check_k, check_metric

#: Query rows times searched rows scored at once (float32: 64 MiB).
EXACT_SCORE_ELEMENTS = 1 << 24


def exact_search(
    store: Any,
    queries: np.ndarray,
    k: int,
    *,
    metric: Metric,
    block_rows: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` neighbours of ``queries`` in ``store``, streamed block by block.

    Parameters
    ----------
    store : embedding store or ndarray of shape (n_rows, dim)
        The vectors searched: an array, or an object with ``dim`` and
        ``iter_blocks(block_rows, dtype=...)`` (an embedding store or a subset of one).
    queries : ndarray of shape (n_queries, dim)
        Query vectors (finite).
    k : int
        Neighbours per query (>= 1).
    metric : {"ip", "l2"}
        Inner product (higher is nearer) or squared Euclidean distance (lower is nearer).
    block_rows : int, optional
        Rows read at once (default: the runtime setting ``THRESHER_BLOCK_ROWS``).

    Returns
    -------
    scores : ndarray of shape (n_queries, k), float32
        Inner products (descending) or squared distances (ascending); ``-inf``/``+inf`` where missing.
    positions : ndarray of shape (n_queries, k), int64
        Positions of the neighbours in ``store``; ``-1`` where ``k`` exceeds the row count.
    """
    owner = "exact_search"
    check_metric(metric, owner)
    check_k(k, owner)
    if block_rows is not None:
        check_int(block_rows, "block_rows", owner, minimum=1)
    if not isinstance(store, np.ndarray) and hasattr(store, "iter_blocks") and hasattr(store, "dim"):
        dim, where, blocks = store.dim, f"the embedding store {getattr(store, 'path', '')}".rstrip(), _store_blocks(store, block_rows)
    else:
        data = np.asarray(store)
        if data.ndim != 2:
            raise InputDataError(f"The vectors searched by exact_search must be 2-D (n_rows, dim); got shape {data.shape}.")
        dim, where, blocks = data.shape[1], "the searched array", _array_blocks(data, block_rows)
    queries = as_queries(queries, dim, where)
    n_queries = queries.shape[0]
    best_keys = np.full((n_queries, k), np.inf, dtype=np.float64)
    best_pos = np.full((n_queries, k), -1, dtype=np.int64)
    query_norms = (queries * queries).sum(axis=1) if metric == "l2" else None
    query_lengths = of_record.norms(queries)
    for start, vectors in blocks:
        vector_norms = (vectors * vectors).sum(axis=1) if metric == "l2" else None
        max_length = float(of_record.norms(vectors).max()) if len(vectors) else 0.0
        chunk = max(1, EXACT_SCORE_ELEMENTS // max(1, len(vectors)))
        for lo in range(0, n_queries, chunk):
            hi = min(lo + chunk, n_queries)
            keys = _block_keys(queries[lo:hi], vectors, metric, query_norms, vector_norms, lo, hi)
            delta = of_record.error_bounds(query_lengths[lo:hi], max_length, dim, metric)
            best_keys[lo:hi], best_pos[lo:hi] = of_record.record_tile(best_keys[lo:hi], best_pos[lo:hi], keys, delta,
                                                                      queries[lo:hi], vectors, start, metric)
    return of_record.as_scores(best_keys, metric), best_pos


def _store_blocks(store: Any, block_rows: int | None) -> Iterator[tuple[int, np.ndarray]]:
    for block in store.iter_blocks(block_rows, dtype=np.float32):
        yield block.start, block.vectors


def _array_blocks(data: np.ndarray, block_rows: int | None) -> Iterator[tuple[int, np.ndarray]]:
    if block_rows is None:
        from thresher.config import runtime_config

        block_rows = runtime_config().block_rows
    for lo in range(0, data.shape[0], block_rows):
        yield lo, np.asarray(data[lo : lo + block_rows], dtype=np.float32)


def _block_keys(queries, vectors, metric, query_norms, vector_norms, lo, hi) -> np.ndarray:
    """Sort keys of one (queries x block) tile: smaller is nearer."""
    keys = queries @ vectors.T
    if metric == "ip":
        np.negative(keys, out=keys)
        return keys
    keys *= -2.0
    keys += vector_norms[None, :]
    keys += query_norms[lo:hi, None]
    np.maximum(keys, 0.0, out=keys)
    return keys
