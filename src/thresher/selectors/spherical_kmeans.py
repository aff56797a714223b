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

Here every decision is exact and every sum has a fixed order: the products
are float32 BLAS calls (full speed on any number of threads), but each row's
assignment is re-decided in float64 among the centroids within the float32
error bound of its best (:func:`thresher.selectors.semdedup.exact_max`, ties to
the lower index), and each centroid's sum is accumulated in row order (one
sequential sparse product, as FAISS sums in float32). The centroids are the same bits for any thread count, process or
machine with IEEE arithmetic. Cost: about 1.2x FAISS's time (the extra pass to
find the near-ties).
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
        _split_empty(sums, counts, rng)
        centroids = (sums / np.sqrt(np.einsum("ij,ij->i", sums, sums))[:, None]).astype(np.float32)
    return centroids


def assign_exact(rows, centroids) -> np.ndarray:
    """Each row's centroid of largest cosine, decided in float64 (ties: lower index), int64 (n,).

    A row whose float32 best is more than 2 delta above every other centroid has that centroid for sure; only
    the others (near-ties) are re-decided in float64.
    """
    from thresher.selectors.semdedup import exact_max, float32_error_bound

    delta = np.float32(2 * float32_error_bound(rows.unit32.shape[1]))
    out = np.empty(len(rows.unit32), dtype=np.int64)
    step = max(1, CHUNK_BYTES // (4 * len(centroids.unit32)))
    for lo in range(0, len(out), step):
        s32 = rows.unit32[lo : lo + step] @ centroids.unit32.T
        best = s32.argmax(axis=1)
        floor = s32[np.arange(len(best)), best] - delta
        tied = np.flatnonzero(np.count_nonzero(s32 >= floor[:, None], axis=1) > 1)
        if len(tied):
            _, best[tied] = exact_max(s32[tied], rows[lo + tied], centroids, float(delta) / 2)
        out[lo : lo + step] = best
    return out


def _cluster_sums(unit32: np.ndarray, assign: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each cluster's sum of unit rows (float64 result of float32 sums accumulated in row order: a sparse one-hot
    product, one sequential loop, the same bits whatever the threads), and the counts."""
    from scipy import sparse

    n = len(assign)
    one_hot = sparse.csr_matrix((np.ones(n, dtype=np.float32), (assign, np.arange(n))), shape=(k, n))
    return np.asarray(one_hot @ unit32, dtype=np.float64), np.bincount(assign, minlength=k)


def _split_empty(sums: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> None:
    """Refill each empty cluster as FAISS does: copy a cluster drawn with probability growing with its size, and push
    the two copies apart (one coordinate up, the next down by ``SPLIT_EPS``); the drawn cluster's rows are shared."""
    for empty in np.flatnonzero(counts == 0).tolist():
        sizes = np.maximum(counts - 1, 0).astype(np.float64)
        donor = int(rng.choice(len(counts), p=sizes / sizes.sum()))
        direction = sums[donor] / np.linalg.norm(sums[donor])
        sign = np.where(np.arange(len(direction)) % 2 == 0, 1.0, -1.0)
        sums[empty] = direction * (1 + sign * SPLIT_EPS)
        sums[donor] = direction * (1 - sign * SPLIT_EPS)
        counts[empty] = counts[donor] // 2
        counts[donor] -= counts[empty]


__all__ = ["assign_exact", "spherical_kmeans"]
