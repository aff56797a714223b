"""Exact search and the grouped IVF search give the same bits for any BLAS thread count (issue 19).

The data are built so that the float32 BLAS product really changes with the
thread count: groups of near-duplicate rows and queries, whose scores tie
within float32 rounding. Each test first shows that the raw float32 top k
differs between 1, 2 and 4 threads on that data, then that the searches do
not, and that they equal a float64 brute force (no BLAS) with ties to the
lower position.
"""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from thresher.search import GroupedIVFSearch, exact_search

THREADS = (1, 2, 4)


def near_duplicates(n: int, n_queries: int, dim: int, n_groups: int, seed: int, noise: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """Rows and queries scattered ``noise`` around a few centres: many scores tie within float32 rounding."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_groups, dim))
    x = (centres[rng.integers(0, n_groups, n)] + rng.normal(size=(n, dim)) * noise).astype(np.float32)
    queries = (centres[rng.integers(0, n_groups, n_queries)] + rng.normal(size=(n_queries, dim)) * noise).astype(np.float32)
    return x, queries


def float32_keys(x: np.ndarray, queries: np.ndarray, metric: str) -> np.ndarray:
    """Keys (smaller is nearer) from one float32 BLAS product, as the searches compute them before their re-decision."""
    dots = queries @ x.T
    if metric == "ip":
        return -dots
    return (queries * queries).sum(axis=1)[:, None] - 2 * dots + (x * x).sum(axis=1)[None, :]


def float64_keys(x: np.ndarray, queries: np.ndarray, metric: str) -> np.ndarray:
    """Keys in float64 by broadcasting (no BLAS): the independent oracle."""
    q64, x64 = queries.astype(np.float64)[:, None, :], x.astype(np.float64)[None, :, :]
    return -(q64 * x64).sum(-1) if metric == "ip" else ((q64 - x64) ** 2).sum(-1)


def top_k(keys: np.ndarray, k: int, positions: np.ndarray | None = None) -> np.ndarray:
    """Per row, the ``k`` smallest keys' positions, ties to the lower position (lexicographic (key, position))."""
    positions = np.broadcast_to(np.arange(keys.shape[1]) if positions is None else positions, keys.shape)
    order = np.lexsort((positions, keys), axis=1)[:, :k]
    return np.take_along_axis(positions, order, axis=1)


def differs_somewhere(found: dict[int, np.ndarray]) -> bool:
    """Whether the neighbour sets (membership, not just order) differ between some two thread counts."""
    as_sets = {t: [frozenset(row) for row in f.tolist()] for t, f in found.items()}
    return any(as_sets[t] != as_sets[THREADS[0]] for t in THREADS[1:])


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_exact_search_is_the_same_for_any_blas_thread_count_where_float32_products_are_not(metric):
    x, queries = near_duplicates(2000, 64, 64, 4, seed=0)
    k = 10
    raw = {}
    for threads in THREADS:
        with threadpool_limits(threads):
            raw[threads] = top_k(float32_keys(x, queries, metric), k)
    assert differs_somewhere(raw), "the data must make the raw float32 top k depend on the thread count"

    keys64 = float64_keys(x, queries, metric)
    expected = top_k(keys64, k)
    expected_scores = np.take_along_axis(keys64, expected, axis=1) * (-1 if metric == "ip" else 1)
    for threads in THREADS:
        with threadpool_limits(threads):
            for block_rows in (2000, 333):
                scores, found = exact_search(x, queries, k, metric=metric, block_rows=block_rows)
                np.testing.assert_array_equal(found, expected)
                np.testing.assert_array_equal(scores, expected_scores.astype(np.float32))


def probed_lists(grouped: GroupedIVFSearch, queries: np.ndarray, nprobe: int) -> np.ndarray:
    """The oracle's probes: the ``nprobe`` nearest centroids by float64 keys, ties to the lower list."""
    return top_k(float64_keys(grouped.centroids, queries, grouped.metric), nprobe)


def raw_grouped_search(grouped: GroupedIVFSearch, queries: np.ndarray, probes: np.ndarray, k: int) -> np.ndarray:
    """What the grouped search found before its float64 re-decision: one float32 product per list, the k smallest keys."""
    n_queries = len(queries)
    keys = np.full((n_queries, sum(map(len, grouped.list_positions))), np.inf, np.float32)
    columns = np.concatenate(grouped.list_positions)
    starts = np.concatenate([[0], np.cumsum([len(p) for p in grouped.list_positions])])
    for lst in range(grouped.nlist):
        qs = np.flatnonzero((probes == lst).any(axis=1))
        if len(qs) and starts[lst + 1] > starts[lst]:
            tile = float32_keys(grouped.list_vectors[lst], queries[qs], grouped.metric)
            keys[qs[:, None], np.arange(starts[lst], starts[lst + 1])[None, :]] = tile
    return top_k(keys, k, columns)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_grouped_ivf_search_is_the_same_for_any_blas_thread_count_and_equals_a_float64_brute_force(metric):
    # lists of ~500 rows and ~50 queries each: OpenBLAS runs smaller products on one thread whatever the limit
    x, queries = near_duplicates(4000, 200, 64, 4, seed=1, noise=3e-5)
    grouped = GroupedIVFSearch.train(x, 8, seed=3, n_train=4000, assign_block_rows=1000)
    grouped.metric = metric  # the lists stay the trained ones; only the score of a query changes
    nprobe, k = 2, 10
    grouped.nprobe = nprobe
    probes = probed_lists(grouped, queries, nprobe)
    raw = {}
    for threads in THREADS:
        with threadpool_limits(threads):
            raw[threads] = raw_grouped_search(grouped, queries, probes, k)
    assert differs_somewhere(raw), "the data must make the raw float32 top k depend on the thread count"

    # oracle: float64 brute force over the rows of the probed lists
    keys64 = float64_keys(x, queries, metric)
    lists_of_rows = np.empty(len(x), np.int64)
    for lst, rows in enumerate(grouped.list_positions):
        lists_of_rows[rows] = lst
    reachable = (lists_of_rows[None, :] == probes[:, :, None]).any(axis=1)
    expected = top_k(np.where(reachable, keys64, np.inf), k)
    for threads in THREADS:
        with threadpool_limits(threads):
            np.testing.assert_array_equal(grouped.probes(queries, nprobe), probes)
            np.testing.assert_array_equal(grouped.search(queries, k), expected)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_exact_duplicates_across_the_kth_place_go_to_the_lowest_positions(metric):
    # 21 copies of one row: more ties past the k-th place in one list than the grouped search keeps per list
    # (TIE_MARGIN), so it decides that list in float64 row by row; exact_search decides them across blocks
    x = np.random.default_rng(7).normal(size=(600, 16))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    copies = np.sort(np.random.default_rng(8).choice(np.arange(8, 600), 20, replace=False))
    x[copies] = x[7]
    queries = x[[7, 3, 500]]
    k = 5
    expected = top_k(float64_keys(x, queries, metric), k)
    assert expected[0].tolist() == [7, *copies[:4].tolist()]  # row 7 and its copies tie: the lowest positions win
    _, found = exact_search(x, queries, k, metric=metric, block_rows=97)
    np.testing.assert_array_equal(found, expected)
    grouped = GroupedIVFSearch.train(x, 4, seed=0, n_train=600, assign_block_rows=200)
    grouped.metric = metric
    grouped.nprobe = 4  # every list: the exact top k
    np.testing.assert_array_equal(grouped.search(queries, k), expected)
