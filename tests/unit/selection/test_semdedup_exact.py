"""SemDeDup's exact mode against a brute-force numpy greedy over the full similarity matrix, and its two guarantees."""

from __future__ import annotations

import numpy as np
import pytest

from thresher.exceptions import ParameterError
from thresher.selectors.semdedup import SemDeDup
from thresher.selectors.semdedup import Rows
from thresher.selectors.semdedup_exact import Edges, greedy_keep, near_clusters, sketch_basis, sketch_rows
from thresher.stores import finalize_embedding_store, open_embedding_store, write_embedding_shard


def planted(seed=0, n=600, dim=24, n_near=100, n_exact=40):
    """Random rows, then near-copies (cosine about 0.995) and exact copies of random earlier rows (shuffled in)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim))
    near = x[rng.integers(0, n, n_near)] + 0.1 * rng.normal(size=(n_near, dim))
    exact = x[rng.integers(0, n, n_exact)] * rng.choice([0.5, 1.0, 4.0], size=(n_exact, 1))
    x = np.concatenate([x, near, exact]).astype(np.float32)
    return x[rng.permutation(len(x))]


def noisy_copies(seed=7, n=150, dim=8, copies=3, noise=0.2):
    """``n`` random points, each with ``copies`` noisy copies (cosine about 0.96 in 8 dims), shuffled."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, dim))
    x = np.concatenate([base, np.repeat(base, copies, 0) + noise * rng.normal(size=(n * copies, dim))]).astype(np.float32)
    return x[rng.permutation(len(x))]


def write_store(path, vectors, n_shards=3):
    path.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, len(vectors), n_shards + 1).astype(int)
    shards = [write_embedding_shard(path, i, [f"r{j}" for j in range(a, b)], vectors[a:b]) for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]
    finalize_embedding_store(path, shards=shards, fingerprint="f", dim=vectors.shape[1], dtype="float32", encoder={"normalize": False}, pool={})
    return open_embedding_store(path)


def unit64(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact_oracle(x, centroids, eps):
    """The plain definition with full float64 matrices: visit rows by centroid cosine ascending (then position), keep a row
    unless a kept row has cosine >= 1 - eps to it; twin = the kept row of largest cosine (ties: earliest visited)."""
    xn, c = unit64(x), unit64(centroids)
    to_centroid = np.round(xn @ c.T, 12)
    cluster = to_centroid.argmax(axis=1)
    cos = to_centroid[np.arange(len(x)), cluster]
    s = np.round(xn @ xn.T, 12)
    np.fill_diagonal(s, -np.inf)
    t = 1 - eps
    order = np.lexsort((np.arange(len(x)), cos))
    rank = np.empty(len(x), int)
    rank[order] = np.arange(len(x))
    kept = np.zeros(len(x), bool)
    for r in order:
        kept[r] = not (s[r, kept] >= t).any()
    n = len(x)
    dup, sim, max_sim = np.full(n, -1), np.full(n, np.nan), np.full(n, np.nan)
    for r in range(n):
        earlier = (rank < rank[r]) & (s[r] >= t)
        if earlier.any():
            max_sim[r] = s[r, earlier].max()
        if not kept[r]:
            cand = np.flatnonzero(kept & (s[r] >= t))
            best = cand[np.lexsort((rank[cand], -s[r, cand]))[0]]
            dup[r], sim[r] = best, s[r, best]
    return dict(kept=kept, dup=dup, sim=sim, max_sim=max_sim, cluster=cluster, cos=cos, s=s)


def check_exact(sel, oracle, eps):
    kept, removed = np.flatnonzero(oracle["kept"]), np.flatnonzero(~oracle["kept"])
    np.testing.assert_array_equal(sel.positions, kept)
    np.testing.assert_array_equal(sel.removed.positions, removed)
    np.testing.assert_array_equal(sel.removed.duplicate_of_positions, oracle["dup"][removed])
    np.testing.assert_allclose(sel.removed.similarity, oracle["sim"][removed], rtol=0, atol=1e-12)
    np.testing.assert_allclose(sel.removed.max_similarity, oracle["max_sim"][removed], rtol=0, atol=1e-12)
    np.testing.assert_allclose(sel.columns["max_similarity"], oracle["max_sim"][kept], rtol=0, atol=1e-12)  # NaN where no earlier row is near
    np.testing.assert_array_equal(sel.columns["cluster"], oracle["cluster"][kept])
    np.testing.assert_array_equal(sel.removed.cluster, oracle["cluster"][removed])
    # the two guarantees, straight from the matrix
    s, t = oracle["s"], 1 - eps
    assert not (s[np.ix_(kept, kept)] >= t).any()  # no two kept rows are near-duplicates
    if len(removed):
        assert (s[np.ix_(removed, kept)] >= t).any(axis=1).all()  # every removed row has a kept twin
        assert (sel.removed.similarity >= t).all() and np.isin(sel.removed.duplicate_of_positions, kept).all()
    assert sel.summary["removed_with_similarity_below_threshold"] == 0 and sel.summary["mode"] == "exact"
    assert sel.summary["edges"] == int((np.triu(s, 1) >= t).sum())  # every pair at or above the threshold was found


@pytest.mark.parametrize("eps", [0.0, 0.01, 0.08])
def test_equals_the_brute_force_greedy_for_any_block_size(eps):
    x = planted(seed=4, n=500)
    expected = None
    for block_rows in (None, 3, 64):
        sel = SemDeDup(n_clusters=12, eps=eps, block_rows=block_rows, seed=2, mode="exact").select(x)
        if expected is None:
            expected = exact_oracle(x, sel.centroids, eps)
            assert (~expected["kept"]).sum() >= (40 if eps == 0 else 100)
        check_exact(sel, expected, eps)


def test_finds_what_the_paper_rule_misses_across_clusters_and_in_chains():
    # 150 points, each with 3 noisy copies, cut into 40 small clusters: copies fall on both sides of cluster borders
    x = noisy_copies()
    eps = 0.05
    paper = SemDeDup(n_clusters=40, eps=eps, seed=3).select(x)
    exact = SemDeDup(n_clusters=40, eps=eps, seed=3, mode="exact").select(x)
    np.testing.assert_array_equal(paper.centroids, exact.centroids)
    s = np.round(unit64(x) @ unit64(x).T, 12)
    np.fill_diagonal(s, -np.inf)
    # the case is adversarial: the paper's rule keeps near-duplicate pairs, and removes rows with no kept twin
    assert (np.triu(s[np.ix_(paper.positions, paper.positions)], 1) >= 1 - eps).sum() > 0
    assert (s[np.ix_(paper.removed.positions, paper.positions)].max(axis=1) < 1 - eps).sum() > 0
    assert paper.summary["removed_with_similarity_below_threshold"] > 0
    check_exact(exact, exact_oracle(x, exact.centroids, eps), eps)


def test_near_ties_at_the_threshold_are_decided_in_float64():
    # pairs whose cosine is within 1e-7 of the threshold on either side: float32 products cannot tell them apart, the decision must
    rng = np.random.default_rng(0)
    dim, eps = 32, 0.05
    base = unit64(rng.normal(size=(60, dim)))
    rows = [base]
    for gap in (-1e-7, -1e-8, 1e-8, 1e-7):
        d = unit64(rng.normal(size=(60, dim)))
        d = unit64(d - (d * base).sum(1, keepdims=True) * base)
        c = 1 - eps + gap
        rows.append(c * base + np.sqrt(1 - c * c) * d)  # cosine 1 - eps + gap to its base row, before rounding to float32
    x = np.concatenate(rows).astype(np.float32)
    cos = (unit64(x[60:]) * unit64(np.tile(x[:60], (4, 1)))).sum(1)  # as stored
    assert ((cos >= 1 - eps) & (cos < 1 - eps + 2e-7)).sum() > 20 and ((cos < 1 - eps) & (cos > 1 - eps - 2e-7)).sum() > 20
    sel = SemDeDup(n_clusters=5, eps=eps, seed=0, mode="exact").select(x)
    check_exact(sel, exact_oracle(x, sel.centroids, eps), eps)


def test_store_in_shards_equals_array(tmp_path):
    x = planted(seed=5, n=300)
    a = SemDeDup(n_clusters=7, eps=0.03, seed=1, mode="exact").select(x)
    b = SemDeDup(n_clusters=7, eps=0.03, seed=1, mode="exact").select(write_store(tmp_path / "s", x))
    np.testing.assert_array_equal(a.positions, b.positions)
    assert b.removed.duplicate_of.tolist() == [f"r{p}" for p in a.removed.duplicate_of_positions]
    np.testing.assert_array_equal(a.removed.similarity, b.removed.similarity)


def test_near_cluster_marks_cover_every_cross_cluster_edge():
    # the bound's promise, checked directly: an edge between clusters a != b joins a row marked b and a row marked a
    x = noisy_copies(seed=9)
    eps = 0.05
    dedup = SemDeDup(n_clusters=25, eps=eps, seed=0, mode="exact")
    sel = dedup.select(x)
    cluster, _, packed, _ = dedup.assign(x, sel.centroids, basis=np.eye(8)[:, :4])
    marks = np.unpackbits(packed, axis=1, count=25).astype(bool)
    s = unit64(x) @ unit64(x).T
    i, j = np.nonzero(np.triu(s >= 1 - eps, 1))
    cross = cluster[i] != cluster[j]
    assert cross.sum() > 10
    assert marks[i[cross], cluster[j[cross]]].all() and marks[j[cross], cluster[i[cross]]].all()
    assert marks.mean() < 0.9  # and it does prune


@pytest.mark.parametrize("m", [3, 24])
def test_sketch_bound_is_never_below_the_cosine(m):
    x = noisy_copies(seed=2, n=100, dim=24, noise=0.3)
    rows = Rows.of(x)
    basis = sketch_basis(rows, m)
    np.testing.assert_allclose(basis.T @ basis, np.eye(m), atol=1e-12)
    sketch = sketch_rows(rows, basis)
    bound = sketch.astype(np.float64) @ sketch.T.astype(np.float64)
    cos = unit64(x) @ unit64(x).T
    assert (bound >= cos - 1e-7).all()
    if m == 24:  # a full basis: the bound is the cosine itself (up to the rounding margin)
        np.testing.assert_allclose(bound, cos, atol=1e-5)
    else:
        assert (bound - cos).mean() > 0.01  # a real bound, not the cosine


def test_greedy_keep_on_a_chain():
    # a - b - c in the keep order 0, 1, 2: a kept, b removed (twin a), c kept (its only neighbour b was removed)
    edges = Edges(np.array([0, 1]), np.array([1, 2]), np.array([0.97, 0.99]))
    keep = greedy_keep(np.array([0, 1, 2]), edges)
    assert keep.kept.tolist() == [True, False, True]
    assert keep.duplicate_of.tolist() == [-1, 2, -1] and keep.similarity[1] == 0.99  # the kept neighbour of largest cosine
    np.testing.assert_array_equal(keep.max_similarity, [np.nan, 0.97, 0.99])


def test_near_clusters_marks_nothing_for_a_far_row():
    c = np.eye(3, dtype=np.float32)
    s32 = np.array([[1.0, 0.0, 0.0], [0.6, 0.55, 0.0]], dtype=np.float32)
    marks = np.unpackbits(near_clusters(s32, np.array([0, 0]), c, 0.01, 1e-6), axis=1, count=3).astype(bool)
    assert marks.tolist() == [[False, False, False], [False, True, False]]


def test_bad_mode_is_refused():
    x = np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32)
    with pytest.raises(ParameterError, match="The 'mode' parameter of SemDeDup must be 'paper' or 'exact'; got 'approximate'"):
        SemDeDup(n_clusters=2, mode="approximate").select(x)
