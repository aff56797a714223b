"""Thread-invariant k-means (thresher.search.kmeans): the same centroids, lists and index for 1, 2 and 4 threads (issue 19).

Each invariance test first shows, on the same vectors, that FAISS's own k-means gives other centroids across those
thread counts (so the test fails with the code it replaced), then that thresher's does not.
"""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from thresher.search import GroupedIVFSearch
from thresher.search.kmeans import nearest_centroids, train_centroids, train_index
from thresher.selectors.spherical_kmeans import assign_exact_l2, l2_kmeans


def near_ties(seed: int = 0, n: int = 5000, dim: int = 64, copies: int = 10) -> np.ndarray:
    """``n / copies`` random points, each copied ``copies`` times with noise 1e-3: many rows all but equidistant
    from two centroids, where the last bits of a float32 product decide (FAISS's k-means differs with threads here)."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n // copies, dim)).astype(np.float32)
    return (np.repeat(base, copies, axis=0) + 1e-3 * rng.standard_normal((n, dim))).astype(np.float32)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def all_same(results) -> bool:
    return all(np.array_equal(results[0], r) for r in results[1:])


def faiss_kmeans(x: np.ndarray, k: int, *, spherical: bool, seed: int = 3):
    """The call thresher made before (10 iterations, no subsample)."""
    def fit():
        kmeans = faiss.Kmeans(x.shape[1], k, niter=10, seed=seed, spherical=spherical, max_points_per_centroid=len(x))
        kmeans.train(x)
        return kmeans.centroids.copy()
    return fit


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_centroids_ignore_the_thread_count_where_faiss_kmeans_does_not(at_thread_counts, metric):
    x = near_ties() if metric == "l2" else unit(near_ties())
    assert not all_same(at_thread_counts(faiss_kmeans(x, 64, spherical=metric == "ip")))  # the old trainer: thread-dependent
    ours = at_thread_counts(lambda: train_centroids(x, 64, metric=metric, seed=3))
    assert all(ours[0].tobytes() == r.tobytes() for r in ours[1:])
    assert ours[0].dtype == np.float32 and ours[0].shape == (64, 64)
    if metric == "ip":
        np.testing.assert_allclose(np.linalg.norm(ours[0], axis=1), 1.0, atol=1e-6)


def test_l2_kmeans_equals_a_plain_float64_lloyd():
    rng = np.random.default_rng(4)
    centers = 6 * rng.standard_normal((12, 16))
    x = (centers[rng.integers(0, 12, 900)] + rng.standard_normal((900, 16))).astype(np.float32)
    ours = l2_kmeans(x, 12, 8, seed=0)
    # the oracle: Lloyd's iterations on full float64 distance matrices, from the same start
    x64 = x.astype(np.float64)
    c = x64[np.sort(np.random.default_rng(0).choice(len(x), 12, replace=False))]
    for _ in range(8):
        assign = ((x64[:, None, :] - c[None, :, :]) ** 2).sum(axis=2).argmin(axis=1)
        assert np.bincount(assign, minlength=12).min() > 0  # no empty cluster to refill on this data
        c = np.stack([x64[assign == j].mean(axis=0) for j in range(12)])
    np.testing.assert_allclose(ours, c, atol=1e-4)


def test_l2_kmeans_refills_an_empty_cluster():
    # 3 points repeated, 4 centroids: two start on the same point, the tie goes to the lower index, the other empties
    x = np.repeat(3 * np.eye(3, dtype=np.float32) + 1, 30, axis=0)
    c = l2_kmeans(x, 4, 5, seed=1)
    assert np.isfinite(c).all() and len({tuple(r) for r in c.tolist()}) == 4
    assert np.array_equal(c, l2_kmeans(x, 4, 5, seed=1))


def test_exact_l2_assignment_decides_near_ties_as_float64_does():
    rng = np.random.default_rng(8)
    c = rng.standard_normal((8, 32)).astype(np.float32)
    # rows all but equidistant from centroids 0 and 1: their midpoint, moved along c1 - c0 by less than float32 can see
    mid = (c[0].astype(np.float64) + c[1]) / 2
    step = (c[1] - c[0].astype(np.float64)) * rng.uniform(-3e-7, 3e-7, 2000)[:, None]
    x = (mid + step).astype(np.float32)
    x = np.concatenate([x, rng.standard_normal((500, 32)).astype(np.float32)])
    x64, c64 = x.astype(np.float64), c.astype(np.float64)
    oracle = ((x64[:, None, :] - c64[None, :, :]) ** 2).sum(axis=2).argmin(axis=1)
    float32 = ((c * c).sum(axis=1)[None, :] - 2 * (x @ c.T)).argmin(axis=1)
    assert (float32 != oracle).any()  # the data is adversarial: float32 alone gets some rows wrong
    np.testing.assert_array_equal(assign_exact_l2(x, c), oracle)
    np.testing.assert_array_equal(nearest_centroids(x, c, metric="l2"), oracle)
    # in blocks of any size, the same answer
    np.testing.assert_array_equal(np.concatenate([assign_exact_l2(x[lo : lo + 7], c) for lo in range(0, len(x), 7)]), oracle)


def test_subsample_and_bad_k():
    x = near_ties(n=2000, dim=8)
    a = train_centroids(x, 4, metric="l2", seed=1, max_points_per_centroid=39)  # 156 of the 2,000 rows
    assert np.array_equal(a, train_centroids(x, 4, metric="l2", seed=1, max_points_per_centroid=39))
    assert not np.array_equal(a, train_centroids(x, 4, metric="l2", seed=1, max_points_per_centroid=None))
    from thresher.exceptions import ParameterError

    with pytest.raises(ParameterError, match=r"n_clusters=2001\); the training sample has 2000"):
        train_centroids(x, 2001, metric="l2", seed=1)


def test_grouped_ivf_lists_ignore_the_thread_count(at_thread_counts):
    x = near_ties()
    assert not all_same(at_thread_counts(faiss_kmeans(x, 64, spherical=False)))  # what GroupedIVFSearch.train ran before

    def build():
        search = GroupedIVFSearch.train(x, 64, seed=3, n_train=len(x), assign_block_rows=1000)
        return search.centroids.tobytes(), [p.tolist() for p in search.list_positions]

    runs = at_thread_counts(build)
    assert all(r == runs[0] for r in runs[1:])


@pytest.mark.parametrize(("factory", "metric"), [("IVF64,Flat", "l2"), ("IVF64,Flat", "ip"), ("IVF64,SQ8", "l2"), ("IVF64,PQ8x4", "l2")])
def test_faiss_index_trained_with_thresher_lists_is_the_same_for_any_thread_count(at_thread_counts, factory, metric):
    x = near_ties() if metric == "l2" else unit(near_ties())
    faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT

    def build(train):
        index = faiss.index_factory(x.shape[1], factory, faiss_metric)
        if hasattr(faiss.downcast_index(index), "do_polysemous_training"):
            faiss.downcast_index(index).do_polysemous_training = False
        train(index)
        index.add(x)
        return faiss.serialize_index(index).tobytes()

    if (factory, metric) == ("IVF64,Flat", "l2"):  # FAISS's own IVF training, on these rows, differs with the thread count
        assert not all_same(at_thread_counts(lambda: build(lambda index: index.train(x[:4000]))))
    runs = at_thread_counts(lambda: build(lambda index: train_index(index, x[:4000], 3)))
    assert all(r == runs[0] for r in runs[1:])
    # FAISS kept the quantiser it was given (it did not train its own)
    index = faiss.index_factory(x.shape[1], factory, faiss_metric)
    train_index(index, x[:4000], 3)
    quantizer = faiss.extract_index_ivf(index).quantizer
    np.testing.assert_array_equal(quantizer.reconstruct_n(0, 64), train_centroids(x[:4000], 64, metric=metric, seed=3))


def test_train_index_trains_the_transform_first_then_lists_in_its_space():
    x = near_ties(n=3000, dim=32)
    index = faiss.index_factory(32, "PCA16,IVF16,Flat", faiss.METRIC_L2)
    train_index(index, x, 5)
    assert index.is_trained
    pca = faiss.downcast_index(index).chain.at(0)
    xt = pca.apply(x)
    np.testing.assert_array_equal(faiss.extract_index_ivf(index).quantizer.reconstruct_n(0, 16), train_centroids(xt, 16, metric="l2", seed=5))
    index.add(x)
    assert index.ntotal == len(x)
