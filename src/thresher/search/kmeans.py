"""k-means centroids, and the nearest centroid of each row, that are the same bits whatever the thread count.

FAISS's k-means (``faiss.Kmeans``, and ``IndexIVF.train``, which runs it for
the coarse quantiser) was measured to give other centroids with 2 OpenMP
threads than with 1 or 4 (issue 19; at small sizes too, see
``tests/unit/search/test_kmeans.py``): an assignment that is a near-tie flips
with the last bits of a float32 product. Every IVF list, fine list and region
thresher trains (the pool index, SMOTE's and B3's grouped IVF searches, B3's
regions) is therefore trained here, on the numpy k-means of
:mod:`thresher.selectors.spherical_kmeans`: float32 BLAS products at full
speed, every near-tie re-decided in float64, sums in row order.

The objective follows the metric, as FAISS's IVF training does: for inner
product the spherical k-means (unit centroids, ``IndexIVF`` sets
``cp.spherical`` for an inner-product index), for L2 Lloyd's k-means over
means. Like FAISS, training sees at most ``max_points_per_centroid`` rows per
centroid (a seeded subsample above that).

:func:`train_index` hands a FAISS index's IVF quantiser these centroids, then
lets FAISS train what remains (PQ and SQ codebooks, OPQ and PCA transforms:
FAISS trains those, see the function's notes).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from thresher.exceptions import ParameterError

Metric = Literal["ip", "l2"]
#: Lloyd iterations: FAISS's default for IVF quantisers (``IndexIVF.cp.niter``).
N_ITER = 10
#: Training rows per centroid above which a seeded subsample is drawn (FAISS's ``max_points_per_centroid``).
MAX_POINTS_PER_CENTROID = 256


def train_centroids(x: np.ndarray, n_clusters: int, *, metric: Metric, seed: int, n_iter: int = N_ITER,
                    max_points_per_centroid: int | None = MAX_POINTS_PER_CENTROID, what: str = "the training sample",
                    positions: np.ndarray | None = None) -> np.ndarray:
    """Centroids, float32 (n_clusters, dim), of a seeded k-means over ``x`` (m, dim): the same bits for any thread count.

    Parameters
    ----------
    x : ndarray of shape (m, dim)
        Training rows, m >= n_clusters (any float dtype; used as float32).
    n_clusters : int
        k.
    metric : {"ip", "l2"}
        ``"ip"``: spherical k-means (unit centroids, rows assigned by cosine); ``"l2"``: Lloyd's k-means (means,
        rows assigned by squared L2 distance).
    seed : int
        Drives the subsample, the start (``n_clusters`` rows) and the refill of empty clusters; any int >= 0.
    n_iter : int, default 10
    max_points_per_centroid : int or None, default 256
        At most this many rows per centroid are used (a seeded subsample); None uses every row.
    what, positions
        Name the rows in errors (``"ip"`` refuses a non-finite row, naming ``positions[row]``, and leaves zero rows out).
    """
    from thresher.selectors.spherical_kmeans import l2_kmeans, spherical_kmeans

    if metric not in ("ip", "l2"):
        raise ParameterError(f"The 'metric' parameter of train_centroids must be 'ip' or 'l2'; got {metric!r}.")
    if metric == "ip":  # a zero row has no direction: it takes no part (it adds nothing to FAISS's spherical sums either)
        x32 = np.asarray(x, dtype=np.float32)
        nonzero = np.flatnonzero(np.einsum("ij,ij->i", x32, x32, dtype=np.float64) != 0)
        if len(nonzero) < len(x):
            x, positions = x[nonzero], (nonzero if positions is None else np.asarray(positions)[nonzero])
    n_clusters, m = int(n_clusters), len(x)
    if not 1 <= n_clusters <= m:
        raise ParameterError(f"k-means needs at least as many training rows as clusters (n_clusters={n_clusters}); {what} has {m}.")
    rng = np.random.default_rng(seed)
    if max_points_per_centroid is not None and m > max_points_per_centroid * n_clusters:
        keep = np.sort(rng.choice(m, size=max_points_per_centroid * n_clusters, replace=False))
        x, positions = x[keep], (keep if positions is None else np.asarray(positions)[keep])
    start = int(rng.integers(0, 2**63 - 1))
    if metric == "ip":
        from thresher.selectors.semdedup import Rows

        return spherical_kmeans(Rows.of(x, what=what, positions=positions), n_clusters, int(n_iter), start)
    return l2_kmeans(np.asarray(x, dtype=np.float32), n_clusters, int(n_iter), start)


def nearest_centroids(x: np.ndarray, centroids: np.ndarray, *, metric: Metric) -> np.ndarray:
    """Each row's nearest centroid, int64 (n,): largest cosine (``"ip"``) or smallest squared L2 distance (``"l2"``),
    decided in float64 for near-ties (ties: lower index), so the same for any thread count or block of rows."""
    from thresher.selectors.spherical_kmeans import assign_exact, assign_exact_l2

    if metric == "l2":
        return assign_exact_l2(x, centroids)
    from thresher.selectors.semdedup import Rows

    return assign_exact(Rows.of(x), Rows.of(centroids, what="the centroids"))


def train_index(index: Any, sample: np.ndarray, seed: int, *, what: str = "the training sample", positions: np.ndarray | None = None) -> None:
    """Train a FAISS index on ``sample`` (n, dim) float32 with its IVF coarse quantiser trained by :func:`train_centroids`.

    For an index with IVF lists over a flat quantiser (``IVF<n>,...``, also behind an ``OPQ``/``PCA`` transform), the
    transforms are trained first (by FAISS) and applied to the sample, the quantiser gets the centroids of
    :func:`train_centroids` (metric and iterations of the index's own ``cp``), and FAISS then sees a trained
    quantiser and trains only the rest (PQ/SQ codebooks). Any other index (HNSW, a non-flat quantiser such as
    ``IVF<n>_HNSW32``) is trained by FAISS as it is. ``what`` and ``positions`` name a row in errors.

    Notes
    -----
    What FAISS still trains was measured in ``tests/unit/search/test_kmeans.py``: SQ training (min/max per
    dimension) cannot depend on threads; PQ codebooks are trained with FAISS's k-means per sub-space, and OPQ
    alternates PQ training with rotations, so an ``IVF,PQ`` or ``OPQ`` index keeps FAISS's thread dependence in
    its codebooks (its lists, which decide what a query probes, no longer have it).
    """
    import faiss

    sample = np.ascontiguousarray(sample, dtype=np.float32)
    outer = faiss.downcast_index(index)
    target, x = outer, sample
    if isinstance(outer, faiss.IndexPreTransform):
        for i in range(outer.chain.size()):
            transform = outer.chain.at(i)
            if not transform.is_trained:
                transform.train(x)
            x = np.ascontiguousarray(transform.apply(x), dtype=np.float32)
        target = faiss.downcast_index(outer.index)
    ivf = faiss.try_extract_index_ivf(target)
    quantizer = None if ivf is None else faiss.downcast_index(ivf.quantizer)
    if ivf is not None and isinstance(quantizer, faiss.IndexFlat) and quantizer.ntotal == 0:
        metric: Metric = "ip" if (ivf.metric_type == faiss.METRIC_INNER_PRODUCT or ivf.cp.spherical) else "l2"
        centroids = train_centroids(x, ivf.nlist, metric=metric, seed=seed, n_iter=ivf.cp.niter,
                                    max_points_per_centroid=ivf.cp.max_points_per_centroid, what=what, positions=positions)
        quantizer.add(centroids)
    if target is outer:
        index.train(sample)
        return
    if not target.is_trained:
        target.train(x)
    outer.is_trained = True


__all__ = ["MAX_POINTS_PER_CENTROID", "N_ITER", "nearest_centroids", "train_centroids", "train_index"]
