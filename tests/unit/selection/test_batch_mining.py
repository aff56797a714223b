"""B3 batch mining against a brute-force construction of its graph, and the batch invariants."""

from __future__ import annotations

import numpy as np
import pytest

from thresher.exceptions import ParameterError
from thresher.selectors._base import ArrayPool
from thresher.selectors.batch_mining import BatchMiner, equal_communities, reciprocal_graph, window_neighbors


def clustered(n=640, dim=16, n_clusters=20, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_clusters, dim))
    x = centers[rng.integers(0, n_clusters, size=n)] + 0.3 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_graph_equals_brute_force_reciprocal_window():
    x = clustered(n=300)
    p, m = 3, 10
    sims = x.astype(np.float64) @ x.T.astype(np.float64)
    np.fill_diagonal(sims, -np.inf)
    ranked = np.argsort(-sims, axis=1, kind="stable")[:, : p + m]
    window_sets = [set(r[p:].tolist()) for r in ranked]
    expected = {(i, j) for i in range(300) for j in window_sets[i] if i in window_sets[j]}
    graph = reciprocal_graph(window_neighbors(ArrayPool(x), None, p, m))
    coo = graph.tocoo()
    got = set(zip(coo.row.tolist(), coo.col.tolist()))
    assert got == expected
    assert (graph != graph.T).nnz == 0 and graph.diagonal().sum() == 0 and set(graph.data.tolist()) == {1}


def test_batches_are_whole_communities_and_rows_appear_once():
    x = clustered()
    sel = BatchMiner(batch_size=64, community_size=16, rank_window=(2, 12), n_hard_negatives=3, seed=1).select(x, budget=1.0)
    assert len(np.unique(sel.positions)) == len(sel.positions)
    batch, community, position = (sel.columns[c] for c in ("batch", "community", "position"))
    sizes = np.bincount(batch)
    assert np.all(sizes == 64)
    for c in np.unique(community):
        rows = community == c
        assert rows.sum() == 16 and len(np.unique(batch[rows])) == 1
    for b in np.unique(batch):
        assert position[batch == b].tolist() == list(range(64))
    assert np.all(np.diff(batch) >= 0)  # stored in batch order
    window = window_neighbors(ArrayPool(x), None, 2, 10)
    for pos, negatives in zip(sel.positions[:50], sel.columns["hard_negatives"][:50]):
        assert len(negatives) == 3 and set(negatives) <= set(window[pos].tolist())
    s = sel.summary
    assert s["n_rows_batched"] + s["n_rows_left_out"] == len(x)
    assert s["mean_in_batch_similarity"] > s["mean_in_batch_similarity_random"] + 0.1


def test_seeded_and_grouped():
    x = clustered(seed=3)
    miner = BatchMiner(batch_size=32, community_size=8, rank_window=(1, 9), seed=5)
    a, b = miner.select(x, budget=1.0), miner.select(x, budget=1.0)
    np.testing.assert_array_equal(a.positions, b.positions)
    c = BatchMiner(batch_size=32, community_size=8, rank_window=(1, 9), seed=6).select(x, budget=1.0)
    assert not np.array_equal(a.positions, c.positions)
    groups = np.where(np.arange(len(x)) % 2 == 0, "even", "odd")
    g = miner.select(x, budget=1.0, groups=groups)
    for batch in np.unique(g.columns["batch"]):
        assert len(set(groups[g.positions[g.columns["batch"] == batch]])) == 1


def test_equal_communities_never_repeats_rows():
    parts = np.array([0] * 10 + [1] * 3 + [2] * 7)
    communities, rest = equal_communities(parts, 4)
    flat = np.concatenate(communities + [rest])
    assert sorted(flat.tolist()) == list(range(20)) and all(len(c) == 4 for c in communities) and len(rest) < 4


def test_bad_parameters_are_named():
    x = clustered(n=100)
    with pytest.raises(ParameterError, match="multiple of 'community_size'"):
        BatchMiner(batch_size=50, community_size=16).select(x, budget=1.0)
    with pytest.raises(ParameterError, match="fewer than one batch"):
        BatchMiner(batch_size=128, community_size=16).select(x, budget=1.0)
    with pytest.raises(ParameterError, match="p \\+ m must be < the pool size"):
        BatchMiner(batch_size=32, community_size=16, rank_window=(30, 130)).select(x, budget=1.0)
    with pytest.raises(ParameterError, match="'rank_window'"):
        BatchMiner(batch_size=32, community_size=16, rank_window=(5, 2)).select(x, budget=1.0)
