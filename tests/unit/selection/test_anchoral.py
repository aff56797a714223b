"""AnchorAL sub-pools (Lesci & Vlachos 2024) on imbalanced clustered data, exact and FAISS paths."""

from __future__ import annotations

import numpy as np
import pytest

from thresher.exceptions import InputDataError, ParameterError
from thresher.fingerprint import fingerprint_of
from thresher.selectors.anchoral import anchoral_subpool
from thresher.stores.embedding_store import finalize_embedding_store, open_embedding_store, write_embedding_shard
from thresher.stores.index import build_index


def clustered(seed=0, dim=16, n_major=1500, n_minor=60):
    """Unit vectors: the majority class in 4 clusters, the minority class in 1; returns X, y."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(5, dim)) * 2.0
    sizes = [n_major // 4] * 4 + [n_minor]
    X = np.concatenate([c + rng.normal(size=(n, dim)) for c, n in zip(centers, sizes)])
    y = np.concatenate([np.zeros(n_major, int), np.ones(n_minor, int)])
    order = rng.permutation(len(y))
    X, y = X[order], y[order]
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32), y


X, Y = clustered()
LABELLED = np.concatenate([np.flatnonzero(Y == 0)[:40], np.flatnonzero(Y == 1)[:6]])
LABELS = Y[LABELLED]
SMALL = dict(n_anchors=4, n_neighbors=15, subpool_size=50)


def _brute_scores(anchors, picks):
    """Mean cosine of each picked row to the anchors whose k nearest unlabelled rows contain it."""
    unlabelled = np.setdiff1d(np.arange(len(X)), LABELLED)
    Xd = X.astype(np.float64)
    Xd /= np.linalg.norm(Xd, axis=1, keepdims=True)
    cos = Xd[anchors] @ Xd[unlabelled].T
    nearest = unlabelled[np.argsort(-cos, axis=1, kind="stable")[:, : SMALL["n_neighbors"]]]
    out = []
    for p in picks:
        hit = [j for j in range(len(anchors)) if p in nearest[j]]
        out.append(np.mean([Xd[p] @ Xd[anchors[j]] for j in hit]))
    return np.array(out)


def test_subpool_holds_more_minority_rows_than_a_random_subset_and_scores_are_mean_cosines():
    sub = anchoral_subpool(X, LABELLED, LABELS, seed=1, **SMALL)
    assert len(sub.positions) == 50 and not sub.whole_pool
    assert not set(sub.positions.tolist()) & set(LABELLED.tolist())
    assert len(sub.anchors) == 8 and (sub.anchor_labels == np.array([0] * 4 + [1] * 4)).all()
    assert set(sub.anchors.tolist()) <= set(LABELLED.tolist())
    minority_share = (Y[sub.positions] == 1).mean()
    random_share = (Y[np.random.default_rng(0).choice(np.setdiff1d(np.arange(len(X)), LABELLED), 50, replace=False)] == 1).mean()
    assert minority_share > 0.3 and minority_share > 3 * random_share
    np.testing.assert_allclose(sub.score, _brute_scores(sub.anchors, sub.positions), atol=1e-6)
    assert np.all(np.diff(sub.score) <= 0) and (sub.n_anchor_hits >= 1).all()


def test_exact_and_faiss_flat_paths_agree(tmp_path):
    (tmp_path / "store").mkdir()
    shard = write_embedding_shard(tmp_path / "store", 0, list(range(len(X))), X)
    finalize_embedding_store(
        tmp_path / "store", shards=[shard], fingerprint=fingerprint_of("embeddings", 1, {"test": "anchoral"}), dim=X.shape[1],
        dtype="float32", encoder={"model": "synthetic", "pooling": None, "layer": None, "normalize": True}, pool={"source": "synthetic"},
    )
    store = open_embedding_store(tmp_path / "store")
    index = build_index(store, tmp_path / "index", index_type="flat", metric="ip", recall_sample=10)
    exact = anchoral_subpool(X, LABELLED, LABELS, seed=2, block_rows=97, **SMALL)
    via_index = anchoral_subpool(store, LABELLED, LABELS, seed=2, neighbors=index, **SMALL)
    np.testing.assert_array_equal(exact.anchors, via_index.anchors)
    np.testing.assert_array_equal(exact.positions, via_index.positions)
    np.testing.assert_allclose(exact.score, via_index.score, atol=1e-6)
    np.testing.assert_array_equal(exact.n_anchor_hits, via_index.n_anchor_hits)


def test_deterministic_per_seed_and_anchors_change_as_the_generator_advances():
    a = anchoral_subpool(X, LABELLED, LABELS, seed=5, **SMALL)
    b = anchoral_subpool(X, LABELLED, LABELS, seed=5, **SMALL)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.anchors, b.anchors)
    rng = np.random.default_rng(7)
    rounds = [anchoral_subpool(X, LABELLED, LABELS, seed=rng, **SMALL).anchors for _ in range(2)]
    assert rounds[0].tolist() != rounds[1].tolist()


def test_small_classes_use_all_labelled_rows_and_small_pools_are_kept_whole():
    labelled = np.concatenate([np.flatnonzero(Y == 0)[:2], np.flatnonzero(Y == 1)[:1]])
    sub = anchoral_subpool(X, labelled, Y[labelled], n_anchors=10, n_neighbors=5, subpool_size=len(X))
    assert sorted(sub.anchors.tolist()) == sorted(labelled.tolist())
    assert sub.whole_pool and len(sub.positions) == len(X) - 3
    assert sorted(sub.positions.tolist()) == np.setdiff1d(np.arange(len(X)), labelled).tolist()
    retrieved = sub.n_anchor_hits > 0
    assert retrieved[: retrieved.sum()].all() and np.isnan(sub.score[~retrieved]).all()


def test_bad_input_is_refused():
    with pytest.raises(InputDataError, match="class 2 has none"):
        anchoral_subpool(X, LABELLED, LABELS, classes=[0, 1, 2], **SMALL)
    with pytest.raises(InputDataError, match="labels"):
        anchoral_subpool(X, LABELLED, LABELS[:-1], **SMALL)
    with pytest.raises(InputDataError, match="duplicates"):
        anchoral_subpool(X, [1, 1], [0, 0], **SMALL)
    with pytest.raises(InputDataError, match="must lie in"):
        anchoral_subpool(X, [len(X)], [0], **SMALL)
    for name in ("n_anchors", "n_neighbors", "subpool_size"):
        with pytest.raises(ParameterError, match=repr(name)):
            anchoral_subpool(X, LABELLED, LABELS, **{**SMALL, name: 0})
    with pytest.raises(ParameterError, match="'neighbors'"):
        anchoral_subpool(X, LABELLED, LABELS, neighbors=object(), **SMALL)
    with pytest.raises(InputDataError, match="every pool row is labelled"):
        anchoral_subpool(X[:3], [0, 1, 2], [0, 1, 1], **SMALL)


def test_anchors_and_subpool_ignore_the_thread_count(at_thread_counts):
    """Issue 19: the anchors (scikit-learn's k-means++ seeding, float64) and the sub-pool are the same for 1, 2 and 4
    threads, on rows made of near-copies (500 points x 4 copies, noise 1e-3), where float32 near-ties abound."""
    from thresher.selectors._base import ArrayPool
    from thresher.selectors.anchoral import choose_anchors

    rng = np.random.default_rng(0)
    x = np.repeat(rng.standard_normal((500, 32)), 4, axis=0) + 1e-3 * rng.standard_normal((2000, 32))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    y = rng.integers(0, 2, len(x))
    labelled = np.sort(rng.choice(len(x), 800, replace=False))

    def run():
        anchors, classes = choose_anchors(ArrayPool(x), labelled, y[labelled], [0, 1], 50, np.random.default_rng(7))
        sub = anchoral_subpool(x, labelled, y[labelled], n_anchors=50, n_neighbors=15, subpool_size=200, seed=7)
        return anchors.tolist(), classes.tolist(), sub.positions.tolist(), sub.anchors.tolist()

    runs = at_thread_counts(run)
    assert len(runs[0][0]) == 100
    assert all(r == runs[0] for r in runs[1:])
