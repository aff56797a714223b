"""Spherical k-means whose result does not depend on the number of threads: SemDeDup's clustering.

Lloyd's iterations on unit vectors, as FAISS's ``Kmeans(spherical=True)``
runs them: k rows drawn with the seed start the centroids; each iteration
assigns every row to its centroid of largest cosine, sets each centroid to the
normalised sum of its rows, and splits a large cluster to refill an empty one.

Why not FAISS's own. Its centroids were measured to depend on the thread
count: on 100k real-text vectors (the demo's 8,000 x noisy copies, 1,000
clusters, 25 iterations) one thread and four gave the same centroids and two
gave others (``bench/bench_semdedup.py --threads-check``), so SemDeDup removed
other rows on a Dask cluster than in-process (issue 19). The float32 products
of a BLAS call change in their last bits with how the threads split them, and
an assignment that is a near-tie flips.

Here every decision is exact and every sum has a fixed order: a float32
screen finds each row's two best centroids (FAISS's blocked BLAS search, full
speed on any number of threads; its last bits may vary, which does not
matter), and each row whose two are within twice the float32 error bound is
re-decided in float64 among the centroids within that bound of its best (:func:`thresher.selectors.semdedup.exact_max`, ties to
the lower index), and each centroid's sum is accumulated in row order (one
sequential sparse product, as FAISS sums in float32). The centroids are the same bits for any thread count, process or
machine with IEEE arithmetic. Cost: about 1.4x FAISS's CPU time (10 iterations,
51,200 rows x 1,024 centroids x 384, one thread: 5.0 s against 3.4 s; the
screen keeps two scores per row, the sums run on one core).

:func:`l2_kmeans` is the same Lloyd's algorithm for squared L2 distance (as
FAISS's ``Kmeans(spherical=False)``: centroids are the means of their rows),
with the same rule: float32 products, each near-tie re-decided in float64
(:func:`assign_exact_l2`), sums in row order. IVF lists over L2 indexes and
B3's fine lists train with it; :mod:`thresher.search.kmeans` chooses between
the two by metric.
"""

from __future__ import annotations

import numpy as np

#: rows whose (rows x n_clusters) float32 products are held at once
CHUNK_BYTES = 32 << 20
#: FAISS's perturbation when it splits a cluster to refill an empty one
SPLIT_EPS = 1.0 / 1024


def spherical_kmeans(rows, n_clusters: int, n_iter: int, seed: int) -> np.ndarray:
    """Unit centroids, float32 (n_clusters, dim), of ``rows`` (a :class:`~thresher.selectors.semdedup.Rows`, at least
    ``n_clusters`` of them) after ``n_iter`` iterations, started from ``n_clusters`` rows drawn with ``seed``."""
    from thresher.selectors.semdedup import Rows

    rng = np.random.default_rng(seed)
    m, dim = rows.unit32.shape
    centroids = rows.unit32[np.sort(rng.choice(m, size=n_clusters, replace=False))].copy()
    for _ in range(n_iter):
        assign = assign_exact(rows, Rows.of(centroids, what="the k-means centroids"))
        sums, counts = _cluster_sums(rows.unit32, assign, n_clusters)
        _split_empty(sums, counts, rng, normalise=True)
        centroids = (sums / np.sqrt(np.einsum("ij,ij->i", sums, sums))[:, None]).astype(np.float32)
    return centroids


def l2_kmeans(x: np.ndarray, n_clusters: int, n_iter: int, seed: int) -> np.ndarray:
    """Centroids, float32 (n_clusters, dim), of Lloyd's k-means for squared L2 distance over ``x`` (m, dim), m >= n_clusters,
    after ``n_iter`` iterations, started from ``n_clusters`` rows drawn with ``seed``; the same bits for any thread count.

    Each iteration assigns every row to its nearest centroid (:func:`assign_exact_l2`), sets each centroid to the
    mean of its rows (summed in row order), and splits a large cluster to refill an empty one, as FAISS does.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    rng = np.random.default_rng(seed)
    centroids = x[np.sort(rng.choice(len(x), size=n_clusters, replace=False))].copy()
    for _ in range(n_iter):
        assign = assign_exact_l2(x, centroids)
        sums, counts = _cluster_sums(x, assign, n_clusters)
        means = sums / np.maximum(counts, 1)[:, None]
        _split_empty(means, counts, rng, normalise=False)
        centroids = means.astype(np.float32)
    return centroids


def assign_exact_l2(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Each row's nearest centroid by squared L2 distance, decided in float64 (ties: lower index), int64 (n,).

    The key of record is |c|^2 - 2 x.c (|x|^2 is the same for every centroid) in float64 with a fixed summation
    order. Float32 distances (FAISS's, or one numpy BLAS product) are within delta_i = (dim + 4) u (|x_i| + max |c|)^2
    of it up to the same constant |x_i|^2 (u = 2^-24; the products, the norms and the additions, with a factor 2 to
    spare that also covers the float32 rounding of the ceiling). A row whose float32 best is more than 2 delta_i
    below its second best has that centroid for sure; the others (near-ties) are re-decided in float64 among the
    candidates within 2 delta_i.
    """
    from thresher.selectors.rds import exact_dot_rows

    x = np.ascontiguousarray(x, dtype=np.float32)
    c32 = np.ascontiguousarray(centroids, dtype=np.float32)
    c64 = c32.astype(np.float64)
    c_sq = exact_dot_rows(c64, c64)
    c_sq32 = c_sq.astype(np.float32)
    c_max = float(np.sqrt(c_sq.max())) if len(c_sq) else 0.0
    delta = 2 * (x.shape[1] + 4) * 2.0**-24 * (np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64)) + c_max) ** 2
    distances, best = _two_nearest(x, c32, "l2")
    tied = np.flatnonzero(distances[:, 1] <= distances[:, 0] + 2 * delta)
    step = max(1, CHUNK_BYTES // (4 * max(1, len(c32))))
    for lo in range(0, len(tied), step):
        rows = tied[lo : lo + step]
        keys = x[rows] @ c32.T
        keys *= -2
        keys += c_sq32[None, :]
        ceiling = (keys.min(axis=1) + 2 * delta[rows]).astype(np.float32)
        r, cols = np.nonzero(keys <= ceiling[:, None])
        exact = c_sq[cols] - 2 * exact_dot_rows(x[rows[r]].astype(np.float64), c64[cols])
        order = np.lexsort((cols, exact, r))  # per row: smallest key first, then lowest index
        r, cols = r[order], cols[order]
        first = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
        best[rows[r[first]]] = cols[first]
    return best


def _two_nearest(x: np.ndarray, centroids: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """FAISS's float32 scores of each row's two nearest centroids (distances ascending for ``"l2"``, inner products
    descending for ``"ip"``; the second is +-3.4e38 with one centroid) and the nearest one (int64).

    Only a screen: its last bits may change with the thread count, and the callers re-decide in float64 every row
    whose two scores lie within the float32 error bound of each other. FAISS's blocked search costs less CPU than a
    numpy product over all centroids followed by the passes that find the near-ties (one thread, 51,200 x 1,024 x 384:
    0.44 s against 0.61 s).
    """
    import faiss

    scores, labels = faiss.knn(x, centroids, 2, metric=faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT)
    return scores, labels[:, 0].astype(np.int64)


def assign_exact(rows, centroids) -> np.ndarray:
    """Each row's centroid of largest cosine, decided in float64 (ties: lower index), int64 (n,).

    A row whose float32 best is more than 2 delta above every other centroid has that centroid for sure; only
    the others (near-ties) are re-decided in float64.
    """
    from thresher.selectors.semdedup import exact_max, float32_error_bound

    delta = np.float32(2 * float32_error_bound(rows.unit32.shape[1]))
    scores, out = _two_nearest(rows.unit32, centroids.unit32, "ip")
    tied = np.flatnonzero(scores[:, 1] >= scores[:, 0] - delta)
    step = max(1, CHUNK_BYTES // (4 * len(centroids.unit32)))
    for lo in range(0, len(tied), step):
        chunk = tied[lo : lo + step]
        s32 = rows.unit32[chunk] @ centroids.unit32.T
        _, out[chunk] = exact_max(s32, rows[chunk], centroids, float(delta) / 2)
    return out


def _cluster_sums(unit32: np.ndarray, assign: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each cluster's sum of unit rows (float64 result of float32 sums accumulated in row order: a sparse one-hot
    product, one sequential loop, the same bits whatever the threads), and the counts."""
    from scipy import sparse

    n = len(assign)
    one_hot = sparse.csr_matrix((np.ones(n, dtype=np.float32), (assign, np.arange(n))), shape=(k, n))
    return np.asarray(one_hot @ unit32, dtype=np.float64), np.bincount(assign, minlength=k)


def _split_empty(centers: np.ndarray, counts: np.ndarray, rng: np.random.Generator, *, normalise: bool) -> None:
    """Refill each empty cluster as FAISS does: copy a cluster drawn with probability growing with its size, and push
    the two copies apart (one coordinate up, the next down by ``SPLIT_EPS``); the drawn cluster's rows are shared.

    ``centers`` are the clusters' sums (``normalise``: spherical, the copy is of the unit direction) or their means."""
    for empty in np.flatnonzero(counts == 0).tolist():
        sizes = np.maximum(counts - 1, 0).astype(np.float64)
        donor = int(rng.choice(len(counts), p=sizes / sizes.sum()))
        direction = centers[donor] / np.linalg.norm(centers[donor]) if normalise else centers[donor].copy()
        sign = np.where(np.arange(len(direction)) % 2 == 0, 1.0, -1.0)
        centers[empty] = direction * (1 + sign * SPLIT_EPS)
        centers[donor] = direction * (1 - sign * SPLIT_EPS)
        counts[empty] = counts[donor] // 2
        counts[donor] -= counts[empty]


__all__ = ["assign_exact", "assign_exact_l2", "l2_kmeans", "spherical_kmeans"]
