"""The decision of record of a top-k search: float32 BLAS products find candidates, float64 decides (issue 19).

A float32 matrix product through OpenBLAS changes in its last bits with the
BLAS thread count, so neighbours whose scores tie within float32 rounding can
swap order, or membership at the k-th place, from one machine or worker to
the next. The searches here keep the fast product to find candidates and
decide which rows are the ``k`` nearest, and in what order, from keys
recomputed in float64 with a fixed summation order (as
:func:`thresher.selectors.rds.exact_dot_rows`), ties to the lower position:
the exact top ``k`` of those keys, the same bits for any thread count, block
size or order in which the rows are scanned.

Keys are "smaller is nearer": minus the inner product (``"ip"``) or the
squared Euclidean distance (``"l2"``). A float32 key of a query ``q`` and a row
``x`` is within ``delta`` of its float64 key of record, with
``delta = 2 (dim + 4) u |q| max|x|`` (ip) or ``2 (dim + 4) u (|q| + max|x|)^2``
(l2), ``u = 2^-24``: the standard bound ``dim u`` of a dot product in any
summation order (Higham, *Accuracy and Stability of Numerical Algorithms*,
2002, §3.1), plus the norms and additions of the l2 key, with a factor 2 to
spare (the bound of :func:`thresher.selectors.spherical_kmeans.assign_exact_l2`).

So, scanning a tile of rows for a query whose running top ``k`` of record has
``k``-th key ``K`` (``+inf`` until ``k`` rows are known), a row can enter only
if its float32 key is at most ``K + delta``; and only the tile's own ``k``
best can enter, which all have float32 keys at most ``t + 2 delta`` with ``t``
the tile's ``k``-th smallest float32 key. Rows above both ceilings are left
out for sure; the others (``k`` plus near-ties, per tile) are rescored in
float64 and merged into the running top ``k`` (:func:`record_tile`: what
:func:`~thresher.search.exact_search` does, as it returns the scores too).
A search that returns positions only needs float64 keys for near-ties alone
(:func:`decide_sorted_top_k`: what :class:`~thresher.search.GroupedIVFSearch` does).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from thresher.search.checks import Metric

#: Float64 elements of one rescoring step (the gathered (pairs, dim) queries, 16 MiB, and rows, in float32).
RESCORE_ELEMENTS = 1 << 21
_UNIT_ROUNDOFF = 2.0**-24


def error_bounds(query_norms: np.ndarray, max_row_norm: float, dim: int, metric: Metric) -> np.ndarray:
    """Per query, ``delta``: how far a float32 key (one BLAS product) can be from the float64 key of record.

    ``query_norms`` are the queries' Euclidean norms (float64, shape (n_queries,)); ``max_row_norm`` the
    largest norm among the rows scored.
    """
    scale = query_norms * max_row_norm if metric == "ip" else (query_norms + max_row_norm) ** 2
    return 2 * (dim + 4) * _UNIT_ROUNDOFF * scale


def norms(vectors: np.ndarray) -> np.ndarray:
    """Euclidean norms of float32 rows, float64 (n,); only used to size error bounds."""
    return np.sqrt(np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64))


def candidates(keys: np.ndarray, k: int, kth_of_record: np.ndarray, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (row, column) pairs of a float32 key tile that may enter the top ``k`` of record, row-major.

    Parameters
    ----------
    keys : ndarray of shape (n_queries, n_cols), float32
        Float32 keys of one tile (smaller is nearer).
    k : int
        Neighbours kept per query.
    kth_of_record : ndarray of shape (n_queries,), float64
        Each query's ``k``-th float64 key so far (``+inf`` while fewer than ``k`` are known).
    delta : ndarray of shape (n_queries,), float64
        Each query's error bound (:func:`error_bounds`).
    """
    n_cols = keys.shape[1]
    ceiling = kth_of_record + delta
    if n_cols > k:
        tile_kth = np.partition(keys, k - 1, axis=1)[:, k - 1].astype(np.float64)
        ceiling = np.minimum(ceiling, tile_kth + 2 * delta)
    return np.nonzero(keys <= round_up(ceiling)[:, None])


def round_up(ceiling: np.ndarray) -> np.ndarray:
    """Float64 ceilings rounded up to float32, so that comparisons stay in float32 and never drop a row to keep."""
    ceiling32 = ceiling.astype(np.float32)
    return np.where(ceiling32.astype(np.float64) < ceiling, np.nextafter(ceiling32, np.float32(np.inf)), ceiling32)


def keys_of_record(queries: np.ndarray, vectors: np.ndarray, query_rows: np.ndarray, vector_rows: np.ndarray,
                   metric: Metric) -> np.ndarray:
    """Float64 keys of the pairs (``queries[query_rows[i]]``, ``vectors[vector_rows[i]]``), fixed summation order.

    Minus the inner product, or the squared Euclidean distance summed from the float64 differences; each
    pair's key depends only on its two vectors (a contiguous float64 row sum), computed in bounded steps.
    """
    n_pairs, dim = len(query_rows), queries.shape[1]
    out = np.empty(n_pairs, dtype=np.float64)
    step = max(1, RESCORE_ELEMENTS // max(1, dim))
    for lo in range(0, n_pairs, step):
        hi = min(lo + step, n_pairs)
        q = queries[query_rows[lo:hi]].astype(np.float64)
        x = vectors[vector_rows[lo:hi]]  # float32: converted exactly to float64 inside the ufunc, without a copy
        if metric == "ip":
            np.multiply(q, x, out=q)
            np.negative(q.sum(axis=1), out=out[lo:hi])
        else:
            np.subtract(q, x, out=q)
            np.multiply(q, q, out=q)
            out[lo:hi] = q.sum(axis=1)
    return out


def merge(best_keys: np.ndarray, best_pos: np.ndarray, rows: np.ndarray, positions: np.ndarray, keys: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray]:
    """The running top ``k`` of record merged with new candidates: smallest float64 key first, ties to the lower position.

    Parameters
    ----------
    best_keys, best_pos : ndarray of shape (n_queries, k), float64 and int64
        The running top ``k`` (``+inf`` / ``-1`` where missing).
    rows : ndarray of int
        Per candidate, its query (row of ``best_keys``).
    positions : ndarray of int64
        Per candidate, its position among the rows searched (not already in the running top ``k``).
    keys : ndarray of float64
        Per candidate, its key of record.
    """
    n_queries, k = best_keys.shape
    if len(rows) == 0:
        return best_keys, best_pos
    all_rows = np.concatenate([np.repeat(np.arange(n_queries), k), rows])
    all_keys = np.concatenate([best_keys.ravel(), keys])
    all_pos = np.concatenate([best_pos.ravel(), positions])
    # padding (-1, +inf) sorts after every real candidate, whose key is finite
    order = np.lexsort((all_pos, all_keys, all_rows))
    counts = np.bincount(all_rows, minlength=n_queries)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    take = order[starts[:, None] + np.arange(k)[None, :]]
    return all_keys[take], all_pos[take]


def record_tile(best_keys: np.ndarray, best_pos: np.ndarray, keys32: np.ndarray, delta: np.ndarray,
                queries: np.ndarray, vectors: np.ndarray, vector_positions: np.ndarray | int, metric: Metric
                ) -> tuple[np.ndarray, np.ndarray]:
    """One float32 tile (queries x vectors) folded into the running top ``k`` of record of those queries.

    ``vector_positions`` maps the tile's columns to positions among the rows searched: an int64 array, or an
    int offset (column ``j`` is position ``offset + j``).
    """
    rows, cols = candidates(keys32, best_keys.shape[1], best_keys[:, -1], delta)
    keys = keys_of_record(queries, vectors, rows, cols, metric)
    positions = cols.astype(np.int64) + vector_positions if isinstance(vector_positions, (int, np.integer)) \
        else vector_positions[cols]
    return merge(best_keys, best_pos, rows, positions, keys)


def decide_sorted_top_k(keys32: np.ndarray, positions: np.ndarray, delta: np.ndarray, k: int,
                        rescore: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """Positions of each query's top ``k`` of record among its candidates, shape (n_queries, k), ``-1`` where fewer.

    When only positions are wanted, most candidates need no float64 key: two candidates whose float32
    keys are more than ``2 delta`` apart are in the same order in float64. So each query's candidates,
    sorted by float32 key, are cut into runs at every gap wider than ``2 delta``; only the candidates of
    runs of two or more (near-ties, including those across the ``k``-th place) are rescored and ordered
    within their run by float64 key, then position. Candidates more than ``2 delta`` beyond the ``k``-th
    float32 key cannot be among the ``k`` of record and are dropped first. Any such cut gives the float64
    order, so the answer does not depend on the float32 keys' last bits.

    Parameters
    ----------
    keys32 : ndarray of shape (n_queries, n_candidates), float32
        Each query's candidates' float32 keys, ascending (``+inf`` pads a query with fewer candidates).
    positions : ndarray of shape (n_queries, n_candidates), int64
        Their positions among the rows searched (each at most once per query).
    delta : ndarray of shape (n_queries,), float64
        Each query's error bound (:func:`error_bounds`, for the largest row norm searched).
    k : int
        Neighbours per query.
    rescore : callable
        ``rescore(query_rows, columns)``: float64 keys of record of the candidates at those (row, column) places.
    """
    n_queries, n_candidates = keys32.shape
    if n_candidates < k:
        pad = k - n_candidates
        keys32 = np.pad(keys32, ((0, 0), (0, pad)), constant_values=np.inf)
        positions = np.pad(positions, ((0, 0), (0, pad)), constant_values=-1)
    limit = round_up(keys32[:, k - 1].astype(np.float64) + 2 * delta)
    kept = (keys32 <= limit[:, None]) & np.isfinite(keys32)
    width = max(k, int(kept.sum(axis=1).max()) if n_queries else k)
    keys, kept, positions = keys32[:, :width].astype(np.float64), kept[:, :width], positions[:, :width].copy()
    with np.errstate(invalid="ignore"):  # inf - inf between padding, which is not kept anyway
        close = kept[:, 1:] & kept[:, :-1] & (keys[:, 1:] - keys[:, :-1] <= 2 * delta[:, None])
    tied = np.zeros_like(kept)
    tied[:, 1:] |= close
    tied[:, :-1] |= close
    rows, cols = np.nonzero(tied)
    if len(rows):
        run = np.cumsum(np.concatenate([np.ones((n_queries, 1), bool), ~close], axis=1).ravel())[rows * width + cols]
        ties = positions[rows, cols]
        within = np.lexsort((ties, rescore(rows, cols), run))  # runs are contiguous: each stays where it is
        positions[rows, cols] = ties[within]
    found = positions[:, :k]
    found[~kept[:, :k]] = -1
    return found


def as_scores(best_keys: np.ndarray, metric: Metric) -> np.ndarray:
    """Keys of record as the float32 scores FAISS reports: inner products (``-inf`` where missing) or squared distances."""
    return (-best_keys if metric == "ip" else best_keys).astype(np.float32)
