"""Neighbours among a subset of the store's rows (issue 13): the three ways SubsetNeighbors searches give the subset's
true neighbours, checked against numpy brute force with an IVF index probed on every list (so its search is exact)."""

from __future__ import annotations

import numpy as np
import pytest

from thresher.stores import build_index, finalize_embedding_store, open_embedding_store, write_embedding_shard
from thresher.stores.subset import EXACT_MAX_SHARE, OVERFETCH_MIN_SHARE, SubsetNeighbors

K = 25


@pytest.fixture(scope="module")
def store_and_index(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("subset-neighbors")
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(12, 16))
    topic = rng.integers(0, 12, size=4000)
    x = centres[topic] + 0.7 * rng.normal(size=(4000, 16))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    store_dir = tmp / "store"
    store_dir.mkdir()
    shards = [write_embedding_shard(store_dir, i, np.arange(lo, lo + 2000), x[lo : lo + 2000]) for i, lo in enumerate((0, 2000))]
    finalize_embedding_store(store_dir, shards=shards, fingerprint="s", dim=16, dtype="float32", encoder={"normalize": True}, pool={})
    store = open_embedding_store(store_dir)
    index = build_index(store, tmp / "index", index_type="IVF16,Flat", nprobe=16, recall_sample=0)  # every list: exact
    return x, topic, store, index


def brute_force(x: np.ndarray, subset: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    scores = queries.astype(np.float64) @ x[subset].astype(np.float64).T
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("share", [0.9, 0.6, 0.35, 0.1])
def test_each_way_finds_the_subsets_true_neighbours(store_and_index, share):
    x, _, store, index = store_and_index
    subset = np.sort(np.random.default_rng(1).choice(len(x), size=int(share * len(x)), replace=False))
    searcher = SubsetNeighbors(store, subset, index)
    assert searcher.exact == (share <= EXACT_MAX_SHARE)
    queries = x[::40]
    scores, found = searcher.search_positions(queries, K)
    np.testing.assert_array_equal(found, brute_force(x, subset, queries, K))
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ x[subset].T, found, axis=1), rtol=1e-5, atol=1e-6)


def test_a_query_whose_neighbours_left_the_subset_is_searched_again_filtered(store_and_index):
    """Most of the store is kept but not the query's own topic: the plain search's extra neighbours all fall outside the
    subset, and the query must still get its K nearest subset rows."""
    x, topic, store, index = store_and_index
    subset = np.flatnonzero(topic != 0)
    assert len(subset) / len(x) >= OVERFETCH_MIN_SHARE
    queries = x[np.flatnonzero(topic == 0)[:30]]
    _, found = SubsetNeighbors(store, subset, index).search_positions(queries, K)
    np.testing.assert_array_equal(found, brute_force(x, subset, queries, K))
