"""The search package against independent oracles: numpy brute force and FAISS's own IndexIVFFlat."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from thresher.exceptions import InputDataError, ParameterError
from thresher.search import GroupedIVFSearch, RecallSample, drop_excluded, drop_self, exact_search, recall_excluding_self


def clustered(n: int, dim: int, n_clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim)) * 4
    return (centres[rng.integers(0, n_clusters, size=n)] + rng.normal(size=(n, dim))).astype(np.float32)


def brute_force(x: np.ndarray, queries: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Top-k in float64, ties to the lower position: the independent oracle."""
    x64, q64 = x.astype(np.float64), queries.astype(np.float64)
    keys = -(q64 @ x64.T) if metric == "ip" else ((q64[:, None, :] - x64[None, :, :]) ** 2).sum(-1)
    order = np.lexsort((np.broadcast_to(np.arange(len(x)), keys.shape), keys), axis=1)[:, :k]
    scores = np.take_along_axis(keys, order, axis=1)
    return (-scores if metric == "ip" else scores), order


# -- exact search ------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("block_rows", [1, 37, 10_000])
def test_exact_search_equals_numpy_brute_force_whatever_the_block_size(metric, block_rows):
    x = np.random.default_rng(0).normal(size=(500, 12)).astype(np.float32)
    queries = np.random.default_rng(1).normal(size=(40, 12)).astype(np.float32)
    scores, positions = exact_search(x, queries, 9, metric=metric, block_rows=block_rows)
    ref_scores, ref_positions = brute_force(x, queries, 9, metric)
    np.testing.assert_array_equal(positions, ref_positions)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-4, atol=1e-4)
    assert positions.dtype == np.int64 and scores.dtype == np.float32


def test_exact_search_breaks_ties_by_lower_position_and_pads_missing_rows():
    x = np.repeat(np.eye(3, dtype=np.float32), 4, axis=0)  # rows 0-3, 4-7, 8-11 equal
    scores, positions = exact_search(x, x[[5]], 14, metric="ip", block_rows=3)
    assert positions[0].tolist() == [4, 5, 6, 7] + [0, 1, 2, 3, 8, 9, 10, 11] + [-1, -1]
    assert np.isneginf(scores[0, -2:]).all()
    _, positions = exact_search(x, x[[5]], 14, metric="l2")
    assert positions[0, :4].tolist() == [4, 5, 6, 7] and positions[0, -1] == -1


def test_exact_search_refuses_bad_arguments():
    x = np.zeros((4, 3), np.float32)
    with pytest.raises(ParameterError, match="'metric'"):
        exact_search(x, x, 2, metric="cosine")
    with pytest.raises(ParameterError, match="'k'"):
        exact_search(x, x, 0, metric="ip")
    with pytest.raises(InputDataError, match="not finite"):
        exact_search(x, np.full((1, 3), np.nan, np.float32), 2, metric="ip")


# -- grouped IVF search ------------------------------------------------------------------------------


@pytest.mark.parametrize("metric,nprobe", [("ip", 1), ("ip", 4), ("l2", 1), ("l2", 3)])
def test_grouped_ivf_search_of_a_faiss_index_finds_what_faiss_finds(metric, nprobe):
    x = clustered(3000, 16, 25, seed=2)
    if metric == "ip":
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
    index = faiss.index_factory(16, "IVF32,Flat", faiss_metric)
    index.train(x)
    index.add(x)
    faiss.extract_index_ivf(index).nprobe = nprobe
    grouped = GroupedIVFSearch.from_index(index)
    assert grouped.metric == metric and grouped.nprobe == nprobe and grouped.nlist == 32
    queries = x[::11]
    _, expected = index.search(queries, 30)
    found = grouped.search(queries, 30)
    assert found.shape == expected.shape == (len(queries), 30)
    # the same neighbours, up to rows whose float32 scores tie: their true scores, in order, are FAISS's
    np.testing.assert_allclose(true_scores(x, queries, found, metric), true_scores(x, queries, expected, metric), rtol=1e-5)
    assert np.mean([len(set(a) & set(b)) for a, b in zip(found.tolist(), expected.tolist())]) > 29.5


def true_scores(x: np.ndarray, queries: np.ndarray, found: np.ndarray, metric: str) -> np.ndarray:
    """Float64 scores of the found rows, best first."""
    x64, q64 = x.astype(np.float64)[found], queries.astype(np.float64)[:, None, :]
    scores = -(x64 * q64).sum(-1) if metric == "ip" else ((x64 - q64) ** 2).sum(-1)
    return np.sort(scores, axis=1)


def test_grouped_ivf_search_probing_every_list_is_exact_search():
    x = clustered(2000, 8, 10, seed=3)
    grouped = GroupedIVFSearch.train(x, 16, seed=5, n_train=2000, assign_block_rows=300)
    grouped.nprobe = 16
    queries = x[::17]
    _, exact = brute_force(x, queries, 12, "l2")
    found = grouped(queries, 12)
    assert [set(a) for a in found.tolist()] == [set(b) for b in exact.tolist()]


@pytest.mark.parametrize("nprobe", [1, 3])
def test_trained_grouped_ivf_search_equals_faiss_ivf_flat_over_the_same_centroids(nprobe):
    x = clustered(4000, 24, 40, seed=8)
    grouped = GroupedIVFSearch.train(x, 32, seed=1, n_train=3000, assign_block_rows=1000)
    grouped.nprobe = nprobe
    quantizer = faiss.IndexFlatL2(24)
    quantizer.add(grouped.centroids)
    reference = faiss.IndexIVFFlat(quantizer, 24, 32)
    reference.add(x)
    reference.nprobe = nprobe
    # every row sits in the list FAISS assigns it to
    assigned = quantizer.search(x, 1)[1][:, 0]
    for lst in range(32):
        assert set(grouped.list_positions[lst].tolist()) == set(np.flatnonzero(assigned == lst).tolist())
    _, expected = reference.search(x[::37], 7)
    assert [set(a) for a in grouped(x[::37], 7).tolist()] == [set(b) for b in expected.tolist()]


def test_grouped_ivf_search_marks_missing_neighbours_and_knows_which_indexes_it_applies_to():
    x = clustered(400, 8, 4, seed=9)
    index = faiss.index_factory(8, "IVF8,Flat", faiss.METRIC_L2)
    index.train(x)
    index.add(x)
    grouped = GroupedIVFSearch.from_index(index)  # nprobe 1: one list, fewer rows than asked for
    found = grouped.search(x[:5], 300)
    _, expected = index.search(x[:5], 300)
    np.testing.assert_array_equal(found < 0, expected < 0)
    assert (found < 0).any()
    assert grouped.search(x[:0], 3).shape == (0, 3)

    class Wrapped:
        faiss_index = index

    assert GroupedIVFSearch.applies(Wrapped(), 400) and not GroupedIVFSearch.applies(Wrapped(), 401)
    assert GroupedIVFSearch.of(np.zeros(3), 3) is None
    from thresher.search.grouped_ivf import MAX_NPROBE

    index.nprobe = MAX_NPROBE
    assert GroupedIVFSearch.applies(Wrapped(), 400)
    index.nprobe = MAX_NPROBE + 1  # deeper searches are left to FAISS (faster there)
    assert not GroupedIVFSearch.applies(Wrapped(), 400) and GroupedIVFSearch.of(Wrapped(), 400) is None


# -- dropping rows from neighbour lists --------------------------------------------------------------


def test_drop_self_removes_the_query_or_the_last_entry_and_keeps_missing_entries_last():
    found = np.array([[3, 1, 2, 7], [4, 9, 8, 6], [5, 5, -1, -1], [2, -1, -1, -1]])
    out = drop_self(found, np.array([1, 0, 5, 2]))
    assert out.tolist() == [[3, 2, 7], [4, 9, 8], [5, -1, -1], [-1, -1, -1]]


def test_drop_self_over_exact_search_gives_the_nearest_other_rows_even_with_duplicates():
    x = np.random.default_rng(4).normal(size=(300, 6)).astype(np.float32)
    x[120] = x[30]  # a duplicate pair: each is the other's nearest, at distance 0
    rows = np.array([0, 30, 120, 299])
    _, found = exact_search(x, x[rows], 6, metric="l2")
    d = ((x[rows, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1)
    d[np.arange(len(rows)), rows] = np.inf
    np.testing.assert_array_equal(drop_self(found, rows), np.argsort(d, axis=1, kind="stable")[:, :5])


def test_drop_excluded_keeps_the_first_k_allowed_rows():
    found = np.array([[4, 1, 7, 2, 9], [1, 2, -1, -1, -1], [0, 1, 2, 3, 4]])
    out = drop_excluded(found, np.array([1, 2]), 3)
    assert out.tolist() == [[4, 7, 9], [-1, -1, -1], [0, 3, 4]]
    assert drop_excluded(found[:, :2], np.array([], dtype=np.int64), 4).tolist() == [[4, 1, -1, -1], [1, 2, -1, -1], [0, 1, -1, -1]]


# -- recall ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_recall_of_an_ivf_search_equals_a_numpy_count_and_exact_search_scores_one(metric):
    x = clustered(3000, 16, 30, seed=6)
    if metric == "ip":
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    rows = np.sort(np.random.default_rng(0).choice(len(x), 200, replace=False))
    k = 10
    sample = RecallSample.of(x, rows, k, metric=metric, block_rows=700)
    exact_found = exact_search(x, x[rows], k + 1, metric=metric)[1]
    assert sample.recall(exact_found) == 1.0
    grouped = GroupedIVFSearch.train(x, 64, seed=2, n_train=3000, assign_block_rows=3000)
    if metric == "ip":  # an L2 quantiser over unit vectors ranks lists as inner products do
        grouped.metric = "ip"
    approx = grouped(x[rows], k + 1)
    # independent count: brute force without the query itself, set overlap of the k nearest
    _, truth = brute_force(x, x[rows], k + 1, metric)
    expected = np.mean([len(set([p for p in a if p != r][:k]) & set([p for p in t if p != r][:k])) / k
                        for a, t, r in zip(approx.tolist(), truth.tolist(), rows.tolist())])
    assert 0.3 < expected < 1.0  # the search is approximate, so the measure is tested on misses too
    assert sample.recall(approx) == pytest.approx(expected, abs=1e-12)


def test_recall_counts_a_found_row_tied_with_the_kth_exact_neighbour():
    x = np.array([[0.0], [1.0], [2.0], [-1.0], [3.0]], dtype=np.float32)  # rows 1 and 3 both at distance 1 from row 0
    sample = RecallSample.of(x, np.array([0]), 1, metric="l2")
    assert sample.exact_positions[0, :2].tolist() == [0, 1]
    assert sample.recall(np.array([[0, 3]])) == 1.0  # the other row at the same distance counts
    assert sample.recall(np.array([[0, 2]])) == 0.0
    # without the scores, only the exact list's own rows count
    assert recall_excluding_self(np.array([[0, 3]]), sample.exact_positions, np.array([0]), 1) == 0.0



def test_grouped_ivf_search_in_chunks_bounded_by_candidate_memory_finds_the_same_rows():
    """A search whose candidate lists (queries x nprobe x k) exceed CANDIDATE_BYTES runs in chunks, with the same result."""
    from thresher.search import grouped_ivf

    x = clustered(3000, 16, 25, seed=4)
    grouped = GroupedIVFSearch.train(x, 32, seed=3, n_train=2000, assign_block_rows=1000)
    grouped.nprobe = 6
    whole = grouped.search(x[::7], 20)
    old = grouped_ivf.CANDIDATE_BYTES
    grouped_ivf.CANDIDATE_BYTES = 6 * 20 * 12 * 9  # nine queries a chunk
    try:
        chunked = grouped.search(x[::7], 20)
    finally:
        grouped_ivf.CANDIDATE_BYTES = old
    np.testing.assert_array_equal(chunked, whole)
