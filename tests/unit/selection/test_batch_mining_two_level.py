"""B3 in two levels (coarse k-means regions, METIS inside each) against one level and against set computations.

The reference for batch quality is one-level METIS over the whole graph,
computed here on the same teacher windows; quality is measured independently
of the selector's own figures: the mean cosine between members of a community,
and the share of a community's pairs that are edges of the full reciprocal
window graph.
"""

from __future__ import annotations

import numpy as np
import pytest

from thresher.exceptions import ParameterError
from thresher.selectors import b3_partition
from thresher.selectors._base import ArrayPool
from thresher.selectors.batch_mining import BatchMiner, reciprocal_graph, window_neighbors

K = 32
WINDOW = (30, 130)


@pytest.fixture(scope="module")
def pool(topics):
    """20,000 rows, 150 topics, and their exact teacher windows at the reference ranks 30:130."""
    x = topics(20_000, 32, 150, seed=0, noise=0.8)
    return x, window_neighbors(ArrayPool(x), None, WINDOW[0], WINDOW[1] - WINDOW[0])


def check_whole(sel, n_rows: int, batch_size: int) -> np.ndarray:
    """Batches of whole communities of exactly K, no row twice; the communities as an array (n, K)."""
    assert len(np.unique(sel.positions)) == len(sel.positions) and sel.positions.min() >= 0 and sel.positions.max() < n_rows
    batch, community, position = (np.asarray(sel.columns[c]) for c in ("batch", "community", "position"))
    assert np.all(np.bincount(batch) == batch_size) and np.all(np.diff(batch) >= 0)
    assert np.all(np.bincount(community)[np.unique(community)] == K)
    for c in np.unique(community):
        assert len(np.unique(batch[community == c])) == 1
    for b in np.unique(batch):
        assert position[batch == b].tolist() == list(range(batch_size))
    order = np.argsort(community, kind="stable")
    return sel.positions[order].reshape(-1, K)


def quality(x: np.ndarray, graph, communities: np.ndarray) -> tuple[float, float]:
    """Mean in-community cosine, and the share of community pairs that are edges of the full reciprocal window graph."""
    sims, edges = [], 0
    for c in communities:
        v = x[c].astype(np.float64)
        s = v @ v.T
        sims.append((s.sum() - np.trace(s)) / (K * (K - 1)))
        edges += graph[c][:, c].nnz // 2
    return float(np.mean(sims)), edges / (len(communities) * K * (K - 1) / 2)


def test_two_levels_give_batches_as_good_as_one_level(pool):
    x, window = pool
    graph = reciprocal_graph(window)
    settings = dict(batch_size=K, community_size=K, rank_window=WINDOW, seed=0)  # a batch per community: every community is output
    one = BatchMiner(partition="one_level", **settings).select(x, budget=1.0, window=window)
    two = BatchMiner(partition="two_level", part_rows=4000, **settings).select(x, budget=1.0, window=window)
    one_sim, one_edges = quality(x, graph, check_whole(one, len(x), K))
    two_sim, two_edges = quality(x, graph, check_whole(two, len(x), K))
    s = two.summary
    assert s["partition"] == "two_level" and s["n_parts"] == s["n_regions"] == 5
    # within a few percent of one-level METIS (or better): the quality check issue 13 asks for
    assert two_sim >= 0.97 * one_sim, (two_sim, one_sim)
    assert two_edges >= 0.95 * one_edges, (two_edges, one_edges)
    # and far above random groups of the same size
    rng = np.random.default_rng(1)
    random_sim, _ = quality(x, graph, rng.permutation(len(x))[: len(x) // K * K].reshape(-1, K)[:200])
    assert two_sim > random_sim + 0.2
    # the selector's own figure is the same computation
    assert s["mean_in_community_similarity"] == pytest.approx(two_sim, abs=1e-9)
    # the edges METIS saw are the full graph's edges inside parts: fewer, and the entries that left a part are counted
    assert 0 < s["n_edges"] < graph.nnz // 2 and 0 < s["window_entries_leaving_parts"] < 0.5
    assert s["n_rows_batched"] + s["n_rows_left_out"] == len(x) and s["n_rows_left_out_by_equalising"] < K


def test_a_part_sees_exactly_the_full_graph_inside_it(pool):
    """mine_part drops the window entries that leave the part, and only those: its graph is the full graph's sub-graph."""
    x, window = pool
    miner = BatchMiner(batch_size=K, community_size=K, rank_window=WINDOW, partition="two_level", part_rows=4000, n_hard_negatives=3)
    state = miner.prepare(ArrayPool(x), budget=len(x))
    plan = miner.plan_parts(miner.assign_regions(miner.region_model(ArrayPool(x)), ArrayPool(x).iter_blocks(5000)))
    full = reciprocal_graph(window)
    assert sorted(np.concatenate(plan.members).tolist()) == list(range(len(x)))
    inside = 0
    for part, members in enumerate(plan.members):
        got = miner.mine_part(state, part, members, ArrayPool(x), window=window[members])
        assert got.n_edges == full[members][:, members].nnz // 2
        inside += got.n_edges
        in_part = np.isin(window[members], members)
        assert got.n_window_entries == (window[members] >= 0).sum() and got.n_window_entries_leaving == ((window[members] >= 0) & ~in_part).sum()
        rows = got.rows
        assert sorted(rows.tolist()) == members.tolist() and len(got.rest) < K  # every row once: a community or the rest
        for row, negatives in zip(rows[:200], got.hard_negatives[:200]):
            assert set(negatives.tolist()) <= set(window[row].tolist()) and len(set(negatives.tolist())) == 3
    # an edge is inside a part or crosses two: the crossing ones are exactly what two levels lose
    region = np.empty(len(x), np.int64)
    for part, members in enumerate(plan.members):
        region[members] = part
    coo = full.tocoo()
    crossing = (region[coo.row] != region[coo.col]).sum() // 2
    assert inside + crossing == full.nnz // 2


def test_two_levels_keep_sources_apart_and_draw_hard_negatives_from_the_window(topics):
    x = topics(3000, 16, 40, seed=2, noise=0.6)
    window = window_neighbors(ArrayPool(x), None, 2, 10)
    groups = np.where(np.arange(len(x)) % 3 == 0, "a", "b")
    sel = BatchMiner(batch_size=64, community_size=16, rank_window=(2, 12), n_hard_negatives=2, partition="two_level", part_rows=700,
                     seed=4).select(x, budget=1.0, groups=groups, window=window)
    batch = np.asarray(sel.columns["batch"])
    assert len(np.unique(sel.positions)) == len(sel.positions) and np.all(np.bincount(batch) == 64)
    for b in np.unique(batch):
        assert len(set(groups[sel.positions[batch == b]])) == 1
    assert sel.summary["n_parts"] == 2 * sel.summary["n_regions"]  # (source, region) pairs
    for pos, negatives in zip(sel.positions, sel.columns["hard_negatives"]):
        assert len(negatives) == 2 and set(negatives) <= set(window[pos].tolist())
    # seeded: the same again, another seed differs
    again = BatchMiner(batch_size=64, community_size=16, rank_window=(2, 12), n_hard_negatives=2, partition="two_level", part_rows=700,
                       seed=4).select(x, budget=1.0, groups=groups, window=window)
    np.testing.assert_array_equal(sel.positions, again.positions)
    assert sel.columns["hard_negatives"] == again.columns["hard_negatives"]
    other = BatchMiner(batch_size=64, community_size=16, rank_window=(2, 12), partition="two_level", part_rows=700,
                       seed=5).select(x, budget=1.0, groups=groups, window=window)
    assert not np.array_equal(sel.positions, other.positions)


def test_searching_per_part_equals_the_given_windows(topics):
    """Two levels that search each part's rows themselves give what they give on the windows of a whole-pool search."""
    x = topics(2500, 16, 30, seed=3, noise=0.6)
    miner = BatchMiner(batch_size=32, community_size=16, rank_window=(3, 19), partition="two_level", part_rows=600, seed=1)
    searched = miner.select(x, budget=1.0)
    given = miner.select(x, budget=1.0, window=window_neighbors(ArrayPool(x), None, 3, 16))
    np.testing.assert_array_equal(searched.positions, given.positions)
    assert searched.summary == given.summary


def test_coarse_kmeans_is_seeded_and_splits_the_pool_into_regions_of_similar_rows(topics):
    x = topics(6000, 16, 12, seed=5, noise=0.3)
    a = b3_partition.coarse_centroids(x, 6, seed=0)
    np.testing.assert_array_equal(a, b3_partition.coarse_centroids(x, 6, seed=0))
    assert not np.array_equal(a, b3_partition.coarse_centroids(x, 6, seed=1))
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-6)
    labels = b3_partition.assign_coarse(x, a)
    # each row joins its nearest centroid (numpy float64 argmax, the oracle)
    np.testing.assert_array_equal(labels, np.argmax(x.astype(np.float64) @ a.astype(np.float64).T, axis=1))
    # rows of a region are more alike than rows of the pool
    same = np.mean([(x[labels == r][:50] @ x[labels == r][:50].T).mean() for r in np.unique(labels)])
    assert same > (x[:300] @ x[:300].T).mean() + 0.2
    assert b3_partition.n_coarse_parts(6000, 1000) == 6 and b3_partition.n_coarse_parts(6001, 1000) == 7
    sample = b3_partition.coarse_sample(10**6, 10, seed=0)
    assert len(sample) == max(b3_partition.KMEANS_MIN_SAMPLE, 10 * b3_partition.KMEANS_SAMPLE_PER_PART) and np.all(np.diff(sample) > 0)


def test_leftovers_are_regrouped_per_group_in_part_order():
    rests = [np.array([1, 2, 3]), np.array([10, 11]), np.array([20, 21, 22]), np.array([30])]

    def part(i):
        return b3_partition.PartCommunities(part=i, communities=np.empty((0, 4), np.int64), rest=rests[i], similarity=np.empty(0),
                                            hard_negatives=None, n_edges=0, n_isolated_rows=0, n_window_entries=0, n_window_entries_leaving=0)

    communities, groups, left = b3_partition.regroup_rests([part(i) for i in range(4)], np.array([0, 0, 1, 1]), 4)
    assert communities.tolist() == [[1, 2, 3, 10], [20, 21, 22, 30]] and groups.tolist() == [0, 1] and left.tolist() == [11]


def test_partition_settings_are_checked_and_auto_switches_at_the_documented_size():
    with pytest.raises(ParameterError, match="'partition' parameter of BatchMiner"):
        BatchMiner(partition="three_level").validate_params()
    with pytest.raises(ParameterError, match="'part_rows' parameter of BatchMiner \\(16\\) must be at least 'community_size' \\(32\\)"):
        BatchMiner(part_rows=16).validate_params()
    miner = BatchMiner()
    assert not miner.two_levels(b3_partition.ONE_LEVEL_MAX_ROWS) and miner.two_levels(b3_partition.ONE_LEVEL_MAX_ROWS + 1)
    assert BatchMiner(partition="two_level").two_levels(100) and not BatchMiner(partition="one_level").two_levels(10**7)


def test_part_ranks_are_the_exact_ranks_among_the_part_or_close_to_them(topics):
    """rank_scope="part": a small part is searched exactly among its own rows; a large one through an IVF trained on it."""
    from thresher.search import drop_self, exact_search

    small = topics(3000, 16, 20, seed=6, noise=0.6)
    got = b3_partition.part_rank_windows(small, 3, 10, seed=0)
    _, want = exact_search(small, small, 14, metric="ip")
    np.testing.assert_array_equal(got, drop_self(want, np.arange(3000))[:, 3:13])
    large = topics(b3_partition.PART_EXACT_ROWS + 2000, 32, 60, seed=7, noise=0.7)
    got = b3_partition.part_rank_windows(large, 5, 20, seed=0)
    sample = np.arange(0, len(large), 97)
    _, want = exact_search(large, large[sample], 26, metric="ip")
    want = drop_self(want, sample)[:, 5:25]
    recall = np.mean([len(set(a) & set(b)) / 20 for a, b in zip(got[sample].tolist(), want.tolist())])
    assert recall > 0.9, recall
    np.testing.assert_array_equal(got, b3_partition.part_rank_windows(large, 5, 20, seed=0))  # seeded


def test_part_ranks_need_no_index_and_give_batches_as_good_as_one_level(pool):
    x, window = pool
    graph = reciprocal_graph(window)
    settings = dict(batch_size=K, community_size=K, rank_window=WINDOW, seed=0)
    one = BatchMiner(partition="one_level", **settings).select(x, budget=1.0, window=window)
    part = BatchMiner(rank_scope="part", part_rows=4000, **settings).select(x, budget=1.0)  # partition auto: two levels
    one_sim, one_edges = quality(x, graph, check_whole(one, len(x), K))
    part_sim, part_edges = quality(x, graph, check_whole(part, len(x), K))
    assert part.summary["partition"] == "two_level" and part.summary["rank_scope"] == "part"
    assert part_sim >= 0.97 * one_sim and part_edges >= 0.95 * one_edges, (part_sim, one_sim, part_edges, one_edges)
    with pytest.raises(ParameterError, match="'rank_scope' parameter of BatchMiner is 'part'.*not 'one_level'"):
        BatchMiner(rank_scope="part", partition="one_level").validate_params()
    with pytest.raises(ParameterError, match="'window'.*rank_scope='pool' only"):
        BatchMiner(rank_scope="part", **settings).select(x, budget=1.0, window=window)


def test_the_step_needs_an_index_only_for_pool_ranks():
    from thresher.pipeline.steps import STEPS

    kind = STEPS["batches"]
    pool_ranks = kind.Config(step="batches")
    part_ranks = kind.Config(step="batches", rank_scope="part")
    assert kind.uses_index(pool_ranks) and not kind.uses_index(part_ranks)
    assert "needs the teacher's ranks from an index" in kind.check(pool_ranks, has_index=False)
    assert kind.check(part_ranks, has_index=False) is None
    assert "use partition two_level or auto" in kind.check(kind.Config(step="batches", rank_scope="part", partition="one_level"), has_index=True)
    assert "each worker" in kind.memory(part_ranks, 1000) and "each worker" in kind.memory(pool_ranks, 10**6)
    assert "each worker" not in kind.memory(pool_ranks, 1000)  # small pools: one level, on the driver


def test_regions_are_unions_of_the_index_ivf_lists(topics, tmp_path):
    """With an IVF index, a region is a union of whole IVF lists (no list is cut), grouped into ceil(n / part_rows) regions."""
    from thresher.stores import build_index, finalize_embedding_store, open_embedding_store, write_embedding_shard

    x = topics(4000, 16, 30, seed=8, noise=0.5)
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    shards = [write_embedding_shard(store_dir, i, np.arange(lo, lo + 2000), x[lo : lo + 2000]) for i, lo in enumerate((0, 2000))]
    finalize_embedding_store(store_dir, shards=shards, fingerprint="r", dim=16, dtype="float32", encoder={"normalize": True}, pool={})
    store = open_embedding_store(store_dir)
    index = build_index(store, tmp_path / "index", index_type="IVF40,Flat", recall_sample=0)
    miner = BatchMiner(batch_size=32, community_size=16, rank_window=(3, 19), partition="two_level", part_rows=1000)
    region = miner.index_regions(index, store.n_rows)
    _, lists = b3_partition.ivf_lists(index)
    assert sorted(np.concatenate(lists).tolist()) == list(range(4000))
    assert all(len(np.unique(region[rows])) == 1 for rows in lists if len(rows))
    assert len(np.unique(region)) == 4 and np.bincount(region).max() < 2500
    # a subset: regions of its rows only, lists weighted by the subset's rows
    subset = np.arange(0, 4000, 3)
    sub = miner.index_regions(index, len(subset), subset)
    assert len(sub) == len(subset) and len(np.unique(sub)) == 2
    assert miner.index_regions(None, 4000) is None and miner.index_regions(index, 3999) is None  # no lists, or not this pool's index
    sel = miner.select(store, budget=1.0, neighbors=index)
    assert sel.summary["regions_from"] == "index IVF lists" and sel.summary["window_entries_leaving_parts"] < 0.2
    assert miner.select(store, budget=1.0).summary["regions_from"] == "k-means lists"  # exact search: no lists


def test_fine_lists_regions_and_part_lists_ignore_the_thread_count(at_thread_counts):
    """Issue 19: B3's k-means lists (fine lists, regions, a part's IVF lists) are the same bits for 1, 2 and 4 threads."""
    import faiss

    from thresher.rng import derive_seed

    # 500 points x 10 copies with noise 1e-3: assignments near ties, where FAISS's k-means differs with the thread count
    rng = np.random.default_rng(0)
    x = (np.repeat(rng.standard_normal((500, 64)).astype(np.float32), 10, axis=0) + 1e-3 * rng.standard_normal((5000, 64))).astype(np.float32)

    def faiss_fine_lists():  # what fine_lists ran before
        kmeans = faiss.Kmeans(64, 64, niter=10, seed=derive_seed(1, "b3-fine-lists") % (1 << 31), max_points_per_centroid=len(x))
        kmeans.train(x)
        return kmeans.centroids.copy()

    runs = at_thread_counts(faiss_fine_lists)
    assert not all(np.array_equal(runs[0], r) for r in runs[1:])

    unit = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    def build():
        centroids, sizes = b3_partition.fine_lists(x, 64, seed=1)
        regions = b3_partition.Regions(centroids, b3_partition.regions_of_lists(centroids, sizes, 4, seed=1))
        part = b3_partition.balanced_ivf(unit, 100, seed=1)
        return (centroids.tobytes(), sizes.tolist(), regions.assign(x).tolist(), part.centroids.tobytes(),
                [p.tolist() for p in part.list_positions])

    runs = at_thread_counts(build)
    assert all(r == runs[0] for r in runs[1:])
