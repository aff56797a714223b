"""SemDeDup against a brute-force numpy implementation of its definition, whatever the blocks, shards or seeds."""

from __future__ import annotations

import numpy as np
import pytest

from thresher.exceptions import InputDataError, ParameterError
from thresher.selectors.semdedup import SemDeDup, pack_clusters, sample_positions
from thresher.stores import finalize_embedding_store, open_embedding_store, write_embedding_shard


def planted(seed=0, n=600, dim=24, n_near=100, n_exact=40):
    """Random rows, then near-copies (cosine about 0.995) and exact copies of random earlier rows (shuffled in)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim))
    near = x[rng.integers(0, n, n_near)] + 0.1 * rng.normal(size=(n_near, dim))
    exact = x[rng.integers(0, n, n_exact)] * rng.choice([0.5, 1.0, 4.0], size=(n_exact, 1))  # exact in float32, any norm: cosine 1
    x = np.concatenate([x, near, exact]).astype(np.float32)
    return x[rng.permutation(len(x))]


def brute_force(x, centroids, eps):
    """The definition with full float64 numpy matrices (rounded to 1e-12 so equal values tie as in exact arithmetic)."""
    xn = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    c = centroids.astype(np.float64) / np.linalg.norm(centroids.astype(np.float64), axis=1, keepdims=True)
    to_centroid = np.round(xn @ c.T, 12)
    cluster = to_centroid.argmax(axis=1)  # first maximum: lower cluster index on ties
    cos = to_centroid[np.arange(len(x)), cluster]
    n = len(x)
    kept = np.zeros(n, bool)
    max_sim = np.full(n, -np.inf)
    dup = np.full(n, -1)
    sim = np.full(n, np.nan)
    for k in np.unique(cluster):
        members = np.flatnonzero(cluster == k)
        order = members[np.lexsort((members, cos[members]))]  # farthest first, then lower position
        s = np.round(xn[order] @ xn[order].T, 12)
        for j in range(len(order)):
            earlier = s[:j, j]
            m = earlier.max() if j else -np.inf
            max_sim[order[j]] = m
            kept[order[j]] = not m >= 1 - eps
        for j in range(len(order)):
            if not kept[order[j]]:
                earlier_kept = [i for i in range(j) if kept[order[i]]]
                best = earlier_kept[int(np.argmax(s[earlier_kept, j]))]  # first maximum: earliest in the order
                dup[order[j]], sim[order[j]] = order[best], s[best, j]
    return dict(cluster=cluster, cos=cos, kept=kept, max_sim=max_sim, dup=dup, sim=sim)


def check_against(sel, expected, n):
    kept = np.flatnonzero(expected["kept"])
    np.testing.assert_array_equal(sel.positions, kept)
    removed = np.flatnonzero(~expected["kept"])
    np.testing.assert_array_equal(sel.removed.positions, removed)
    np.testing.assert_array_equal(sel.removed.duplicate_of_positions, expected["dup"][removed])
    np.testing.assert_allclose(sel.removed.similarity, expected["sim"][removed], rtol=0, atol=1e-12)
    np.testing.assert_allclose(sel.removed.max_similarity, expected["max_sim"][removed], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(sel.removed.cluster, expected["cluster"][removed])
    np.testing.assert_array_equal(sel.columns["cluster"], expected["cluster"][kept])
    np.testing.assert_allclose(sel.columns["centroid_distance"], 1 - expected["cos"][kept], rtol=0, atol=1e-12)
    first = ~np.isfinite(expected["max_sim"][kept])
    np.testing.assert_array_equal(np.isnan(sel.columns["max_similarity"]), first)
    np.testing.assert_allclose(sel.columns["max_similarity"][~first], expected["max_sim"][kept][~first], rtol=0, atol=1e-12)
    assert sel.summary["kept"] + sel.summary["removed"] == n == sel.summary["rows_in"]


def write_store(path, vectors, n_shards=3):
    path.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, len(vectors), n_shards + 1).astype(int)
    shards = [write_embedding_shard(path, i, [f"r{j}" for j in range(a, b)], vectors[a:b]) for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]
    finalize_embedding_store(path, shards=shards, fingerprint="f", dim=vectors.shape[1], dtype="float32", encoder={"normalize": False}, pool={})
    return open_embedding_store(path)


@pytest.mark.parametrize("eps", [0.0, 0.01, 0.08])
def test_equals_brute_force_for_any_block_size(eps):
    x = planted()
    expected = None
    for block_rows in (None, 1 if eps == 0.01 else 7, 64):
        sel = SemDeDup(n_clusters=6, eps=eps, block_rows=block_rows, seed=1).select(x)
        if expected is None:
            expected = brute_force(x, sel.centroids, eps)
            n_removed = int((~expected["kept"]).sum())
            assert n_removed >= 40  # the exact copies at least, whatever eps
            if eps > 0:
                assert n_removed >= 100  # and the near-copies
        check_against(sel, expected, len(x))
        assert np.isin(sel.removed.duplicate_of_positions, sel.positions).all()  # always a kept row


def test_store_in_shards_equals_array_and_reports_ids(tmp_path):
    x = planted(seed=2, n=400)
    a = SemDeDup(n_clusters=5, eps=0.02, seed=4).select(x)
    store = write_store(tmp_path / "s", x)
    b = SemDeDup(n_clusters=5, eps=0.02, seed=4).select(store)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert b.ids.tolist() == [f"r{p}" for p in a.positions]
    assert b.removed.ids.tolist() == [f"r{p}" for p in a.removed.positions]
    assert b.removed.duplicate_of.tolist() == [f"r{p}" for p in a.removed.duplicate_of_positions]
    np.testing.assert_array_equal(a.removed.similarity, b.removed.similarity)


def test_eps_edge_is_inclusive():
    # cos(a, b) is exactly 0.5 (b / |b| = (0.5, 0.5, 0.5, 0.5)); a third, orthogonal-ish row stays apart
    x = np.array([[1, 0, 0, 0], [1, 1, 1, 1], [0, -1, 0, 1]], dtype=np.float32)
    at = SemDeDup(n_clusters=1, eps=0.5).select(x)
    assert len(at.removed) == 1 and at.removed.max_similarity[0] == 0.5 and at.removed.similarity[0] == 0.5
    assert set(at.removed.positions.tolist()) | {int(at.removed.duplicate_of_positions[0])} == {0, 1}
    below = SemDeDup(n_clusters=1, eps=0.5 - 1e-12).select(x)
    assert len(below.removed) == 0 and below.positions.tolist() == [0, 1, 2]


def test_eps_zero_removes_exact_copies_of_any_norm_only():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 16)).astype(np.float32)
    x = np.concatenate([x, 4 * x[:5], x[5:10] + np.float32(1e-3)])  # 4x is exact in float32; x + 1e-3 is not a copy
    sel = SemDeDup(n_clusters=2, eps=0.0).select(x)
    # a copy ties with its original on the distance to the centroid: the lower position is kept
    assert list(zip(sel.removed.positions.tolist(), sel.removed.duplicate_of_positions.tolist())) == [(50 + i, i) for i in range(5)]
    assert (sel.removed.similarity == 1.0).all()


def test_order_farthest_first_then_position_and_kept_representative():
    dedup = SemDeDup(eps=0.01)
    theta = 0.1  # cos 0.995 >= 0.99; two steps: cos 0.980 < 0.99
    angles = np.array([2 * theta, 0.0, theta, 0.0, 1.5])
    x = np.stack([np.cos(angles), np.sin(angles), np.zeros(5)], axis=1)
    x[4, 2] = 5.0  # far from everything
    positions = np.array([10, 11, 12, 13, 14])
    centroid_cos = np.array([0.1, 0.3, 0.2, 0.3, 0.9])  # order: 10, 12, 11, 13 (tie with 11: lower position first), 14
    r = dedup.dedup_cluster(7, x, positions, centroid_cos)
    assert r.positions.tolist() == [10, 12, 11, 13, 14] and r.cluster == 7
    assert r.kept.tolist() == [True, False, False, False, True]
    # 12 is next to 10; 11 is next to 12 (removed) but not to 10: named after the kept 10, below the threshold
    assert r.duplicate_of.tolist() == [-1, 10, 10, 10, -1]
    assert r.similarity[1] == pytest.approx(np.cos(theta)) and r.similarity[2] == pytest.approx(np.cos(2 * theta))
    assert r.max_similarity[2] == pytest.approx(np.cos(theta))  # the decision: its max over every earlier row
    assert r.max_similarity[3] == 1.0  # 13 is an exact copy of 11, which was removed; it too goes
    assert r.max_similarity[0] == -np.inf


def test_seeds_and_the_sampled_fit():
    x = planted(seed=3, n=600)
    a = SemDeDup(n_clusters=8, eps=0.02, seed=5).select(x)
    again = SemDeDup(n_clusters=8, eps=0.02, seed=5).select(x)
    other = SemDeDup(n_clusters=8, eps=0.02, seed=6).select(x)
    np.testing.assert_array_equal(a.centroids, again.centroids)
    np.testing.assert_array_equal(a.positions, again.positions)
    assert not np.array_equal(a.centroids, other.centroids)
    check_against(other, brute_force(x, other.centroids, 0.02), len(x))

    # only the sampled rows shape the centroids
    dedup = SemDeDup(n_clusters=8, eps=0.02, sample_size=100, seed=5)
    sample, _ = dedup.draw_sample(len(x), np.random.default_rng(5))
    assert len(sample) == 100 and (np.diff(sample) > 0).all()
    base = dedup.select(x)
    y = x.copy()
    outside = np.setdiff1d(np.arange(len(x)), sample)
    y[outside] = np.random.default_rng(9).normal(size=(len(outside), x.shape[1]))
    np.testing.assert_array_equal(dedup.select(y).centroids, base.centroids)
    y[sample[0]] += 1.0
    assert not np.array_equal(dedup.select(y).centroids, base.centroids)
    assert base.summary["sample_size"] == 100 and SemDeDup(n_clusters=8).check_rows(10_000) == 2048


@pytest.mark.parametrize("params, match", [
    ({"eps": 1.0}, "'eps' parameter of SemDeDup must be a float in \\[0, 1\\); got 1.0"),
    ({"eps": -0.1}, "'eps' parameter"),
    ({"eps": float("nan")}, "'eps' parameter"),
    ({"eps": True}, "'eps' parameter"),
    ({"n_clusters": 0}, "'n_clusters' parameter of SemDeDup must be an int >= 1; got 0"),
    ({"n_clusters": 2.5}, "'n_clusters' parameter"),
    ({"n_clusters": 31}, "'n_clusters' parameter of SemDeDup is 31 but there are only 30 rows"),
    ({"sample_size": 3}, "'sample_size' parameter of SemDeDup is 3, fewer than n_clusters=4"),
    ({"sample_size": 0}, "'sample_size' parameter"),
    ({"block_rows": 0}, "'block_rows' parameter"),
    ({"n_iter": 0}, "'n_iter' parameter"),
])
def test_bad_parameters_are_refused(params, match):
    x = np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32)
    with pytest.raises(ParameterError, match=match):
        SemDeDup(**{"n_clusters": 4, "eps": 0.1, **params}).select(x)


def test_bad_budget_and_zero_rows_are_refused():
    x = np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32)
    with pytest.raises(ParameterError, match="'budget' parameter of SemDeDup must be 1.0"):
        SemDeDup(n_clusters=2).select(x, budget=0.5)
    x[17] = 0
    with pytest.raises(InputDataError, match="Row 17 of the pool is a zero vector"):
        SemDeDup(n_clusters=2).select(x)


def test_helpers():
    assert pack_clusters([5, 5, 20, 1, 1, 1], 10) == [[0, 1], [2], [3, 4, 5]]
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(sample_positions(5, 10, rng), np.arange(5))


def test_kmeans_equals_a_plain_numpy_lloyd_and_ignores_the_thread_count():
    from threadpoolctl import threadpool_limits

    from thresher.selectors.semdedup import Rows
    from thresher.selectors.spherical_kmeans import spherical_kmeans

    x = planted(seed=11, n=900, dim=16, n_near=300)
    rows = Rows.of(x)
    with threadpool_limits(1):
        one = spherical_kmeans(rows, 12, 8, seed=5)
    with threadpool_limits(2):
        two = spherical_kmeans(rows, 12, 8, seed=5)
    assert one.tobytes() == two.tobytes()  # the same bits, whatever BLAS does with its threads

    # the oracle: Lloyd's iterations in float64 with full matrices, from the same start
    xn = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    c = rows.unit32[np.sort(np.random.default_rng(5).choice(len(x), 12, replace=False))].astype(np.float64)
    for _ in range(8):
        cn = c / np.linalg.norm(c, axis=1, keepdims=True)
        assign = (xn @ cn.T).argmax(axis=1)
        assert np.bincount(assign, minlength=12).min() > 0  # no empty cluster to refill on this data
        c = np.stack([xn[assign == j].sum(axis=0) for j in range(12)])
    np.testing.assert_allclose(one, c / np.linalg.norm(c, axis=1, keepdims=True), atol=1e-5)


def test_kmeans_refills_an_empty_cluster(monkeypatch):
    import thresher.selectors.spherical_kmeans as kmeans
    from thresher.selectors.semdedup import Rows

    # 3 points, each repeated 30 times, and 4 centroids: two start on the same point, the tie goes to the lower
    # index, the other empties and is refilled by splitting a cluster (FAISS's rule), every iteration
    x = np.repeat(np.eye(3, dtype=np.float32) + np.float32(0.1), 30, axis=0)
    emptied = []
    split = kmeans._split_empty
    monkeypatch.setattr(kmeans, "_split_empty", lambda sums, counts, rng, **kw: (emptied.append(int((counts == 0).sum())), split(sums, counts, rng, **kw)))
    c = kmeans.spherical_kmeans(Rows.of(x), 4, 5, seed=1)
    assert sum(emptied) >= 1
    assert np.isfinite(c).all() and len({tuple(r) for r in c.tolist()}) == 4
    assert np.array_equal(c, kmeans.spherical_kmeans(Rows.of(x), 4, 5, seed=1))
