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


def test_graph_handles_missing_self_and_repeated_entries_like_a_set_computation():
    rng = np.random.default_rng(3)
    n, m = 400, 12
    window = rng.integers(-1, n, size=(n, m))  # -1 = missing (an approximate index found fewer)
    window[:, 0] = np.arange(n)  # self entries
    window[::7, 2] = window[::7, 1]  # repeated entries
    window[rng.integers(0, n, 300), rng.integers(0, m, 300)] = -1
    directed = {(i, int(j)) for i, row in enumerate(window) for j in row if j >= 0 and j != i}
    expected = {(i, j) for i, j in directed if (j, i) in directed}
    graph = reciprocal_graph(window)
    coo = graph.tocoo()
    assert set(zip(coo.row.tolist(), coo.col.tolist())) == expected and graph.nnz == len(expected)
    assert set(graph.data.tolist()) <= {1} and graph.has_sorted_indices


@pytest.mark.parametrize("metric,nprobe", [("ip", 1), ("ip", 3), ("l2", 2)])
def test_grouped_ivf_search_finds_what_the_faiss_index_finds(tmp_path, metric, nprobe):
    from thresher.selectors.batch_mining import GroupedIVFSearch
    from thresher.stores import build_index, finalize_embedding_store, open_embedding_store, write_embedding_shard

    x = clustered(n=3000, dim=16, n_clusters=30, seed=4)
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    shards = [write_embedding_shard(store_dir, i, np.arange(lo, lo + 1500), x[lo : lo + 1500]) for i, lo in enumerate((0, 1500))]
    finalize_embedding_store(store_dir, shards=shards, fingerprint="g", dim=16, dtype="float32", encoder={"normalize": True}, pool={})
    store = open_embedding_store(store_dir)
    index = build_index(store, tmp_path / "index", index_type="IVF32,Flat", metric=metric, nprobe=nprobe, recall_sample=0)
    grouped = GroupedIVFSearch.of(index, store.n_rows)
    assert grouped is not None and GroupedIVFSearch.of(index, store.n_rows + 1) is None
    queries = x[::13]
    _, expected = index.search_positions(queries, 40)
    found = grouped.search(queries, 40)
    assert [set(a) for a in found.tolist()] == [set(b) for b in expected.tolist()]
    assert GroupedIVFSearch.of(np.zeros(3), 3) is None  # not an index: the caller's own search
    # B3's rank windows through the index: the grouped search (used by window_neighbors) gives FAISS's windows
    windows = window_neighbors(store, index, 5, 20)
    for q in range(0, 3000, 97):
        _, ref = index.search_positions(x[q : q + 1], 26)
        ref = [j for j in ref[0].tolist() if j != q][:25]
        assert set(windows[q].tolist()) == set(ref[5:25])
