"""Exact top-k search, streamed block by block: the oracle every approximate search is measured against.

Each block of searched rows is scored against a bounded number of queries at a
time, its top ``k`` kept and merged into the running top ``k`` (as
``faiss.contrib.exhaustive_search``), so no (n_queries, n_rows) matrix is ever
formed and memory stays bounded by the block size. Ties go to the lower
position, whatever the block size.

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
    best_keys = np.full((n_queries, k), np.inf, dtype=np.float32)
    best_pos = np.full((n_queries, k), -1, dtype=np.int64)
    query_norms = (queries * queries).sum(axis=1) if metric == "l2" else None
    for start, vectors in blocks:
        vector_norms = (vectors * vectors).sum(axis=1) if metric == "l2" else None
        chunk = max(1, EXACT_SCORE_ELEMENTS // max(1, len(vectors)))
        for lo in range(0, n_queries, chunk):
            hi = min(lo + chunk, n_queries)
            keys = _block_keys(queries[lo:hi], vectors, metric, query_norms, vector_norms, lo, hi)
            block_keys, block_cols = _topk_smallest(keys, k)
            best_keys[lo:hi], best_pos[lo:hi] = _merge_topk(best_keys[lo:hi], best_pos[lo:hi], block_keys, block_cols + start, k)
    scores = -best_keys if metric == "ip" else best_keys
    return scores, best_pos


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


def _topk_smallest(keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``min(k, n_cols)`` smallest keys and their columns, ties to the lower column."""
    n_rows, n_cols = keys.shape
    if n_cols <= k:
        cols = np.broadcast_to(np.arange(n_cols, dtype=np.int64), keys.shape)
        order = np.lexsort((cols, keys), axis=1)
        return np.take_along_axis(keys, order, axis=1), np.take_along_axis(cols, order, axis=1)
    kth = np.partition(keys, k - 1, axis=1)[:, k - 1 : k]
    # every key <= the k-th smallest is a candidate, so ties at the boundary can go to the lower column
    rows, cols = np.nonzero(keys <= kth)
    values = keys[rows, cols]
    order = np.lexsort((cols, values, rows))
    counts = np.bincount(rows, minlength=n_rows)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    take = order[starts[:, None] + np.arange(k)[None, :]]
    return values[take], cols[take].astype(np.int64)


def _merge_topk(keys_a, pos_a, keys_b, pos_b, k) -> tuple[np.ndarray, np.ndarray]:
    keys = np.concatenate([keys_a, keys_b], axis=1)
    pos = np.concatenate([pos_a, pos_b], axis=1)
    order = np.lexsort((pos, keys), axis=1)[:, :k]
    return np.take_along_axis(keys, order, axis=1), np.take_along_axis(pos, order, axis=1)
