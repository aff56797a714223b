"""Recall@k of an approximate search, measured against exact search on sampled rows.

The queries are rows of the searched set, so both lists would start with the
query itself: it is dropped from both, and recall measures how well the
approximate search finds the query's ``k`` nearest *other* rows. The measure is
tie-aware: a found row also counts when its true score equals that of the
k-th exact neighbour (within 1e-5), so a set with duplicate rows does not lower
the recall of an exact search that ordered equal scores differently.

Used for the recall@10 an index's manifest records, and by SMOTE to tune the
``nprobe`` of a class's IVF search.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from thresher.search.checks import Metric
from thresher.search.exact import exact_search


def _rows(vectors: Any, positions: np.ndarray) -> np.ndarray:
    """Float32 rows of an array or of an embedding store."""
    if isinstance(vectors, np.ndarray):
        return np.ascontiguousarray(vectors[positions], dtype=np.float32)
    return vectors.take(positions, dtype=np.float32)


@dataclass(frozen=True)
class RecallSample:
    """Sampled rows of a searched set and their exact neighbours: the reference approximate searches are scored on.

    Build it once with :meth:`of` (one exact search), then score any number of
    approximate searches of :attr:`queries` with :meth:`recall`.

    Attributes
    ----------
    vectors : ndarray of shape (n_rows, dim) or an embedding store
        The searched rows.
    query_positions : ndarray of int64, shape (n_queries,)
        The sampled rows.
    queries : ndarray of shape (n_queries, dim), float32
        Their vectors.
    k : int
    metric : {"ip", "l2"}
    exact_scores, exact_positions : ndarray of shape (n_queries, k + 1)
        Exact search of the queries (their own row included).
    """

    vectors: Any
    query_positions: np.ndarray
    queries: np.ndarray
    k: int
    metric: Metric
    exact_scores: np.ndarray
    exact_positions: np.ndarray

    @classmethod
    def of(cls, vectors: Any, query_positions: np.ndarray, k: int, *, metric: Metric, block_rows: int | None = None) -> RecallSample:
        """Search the rows ``query_positions`` of ``vectors`` exactly (``k + 1`` neighbours each, for their own row)."""
        query_positions = np.asarray(query_positions, dtype=np.int64)
        queries = _rows(vectors, query_positions)
        scores, positions = exact_search(vectors, queries, k + 1, metric=metric, block_rows=block_rows)
        return cls(vectors, query_positions, queries, k, metric, scores, positions)

    def recall(self, approx: np.ndarray) -> float:
        """Recall@k of ``approx`` (n_queries, >= k + 1 positions of :attr:`queries`' neighbours, own row included)."""
        return recall_excluding_self(approx, self.exact_positions, self.query_positions, self.k, store=self.vectors,
                                     queries=self.queries, exact_scores=self.exact_scores, metric=self.metric)


def recall_excluding_self(
    approx: np.ndarray,
    exact: np.ndarray,
    query_positions: np.ndarray,
    k: int,
    *,
    store: Any = None,
    queries: np.ndarray | None = None,
    exact_scores: np.ndarray | None = None,
    metric: Metric = "ip",
) -> float:
    """Mean of ``|A ∩ E| / k`` over queries, where A and E are the first ``k`` positions other than the query's own.

    With ``store``, ``queries`` and ``exact_scores`` given, the measure is
    tie-aware: a found neighbour also counts when its true score equals that of
    the k-th exact neighbour (within 1e-5).

    Parameters
    ----------
    approx, exact : ndarray of shape (n_queries, >= k + 1), int64
        Positions returned by the search under test and by exact search.
    query_positions : ndarray of shape (n_queries,)
        The position of each query among the searched rows.
    k : int
    store : ndarray of shape (n_rows, dim) or an embedding store, optional
    queries : ndarray of shape (n_queries, dim), optional
    exact_scores : ndarray of shape (n_queries, >= k + 1), optional
    metric : {"ip", "l2"}, default "ip"
    """
    hits = 0.0
    for q, (own, found, truth) in enumerate(zip(np.asarray(query_positions).tolist(), np.asarray(approx).tolist(), np.asarray(exact).tolist())):
        found_k = [p for p in found if p != own and p >= 0][:k]
        keep = [j for j, p in enumerate(truth) if p != own and p >= 0][:k]
        truth_k = [truth[j] for j in keep]
        if not truth_k:
            continue
        matched = set(found_k) & set(truth_k)
        if store is not None and queries is not None and exact_scores is not None and len(matched) < len(truth_k):
            kth = float(exact_scores[q][keep[-1]])
            others = [p for p in found_k if p not in matched]
            vectors = _rows(store, np.asarray(others, dtype=np.int64))
            if metric == "ip":
                good = vectors @ queries[q] >= kth - 1e-5
            else:
                good = ((vectors - queries[q]) ** 2).sum(1) <= kth + 1e-5 * max(1.0, abs(kth))
            hits += (len(matched) + int(good.sum())) / len(truth_k)
        else:
            hits += len(matched) / len(truth_k)
    return hits / len(query_positions)
