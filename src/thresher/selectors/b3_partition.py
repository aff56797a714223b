"""B3 at pool scale: a two-level partition, coarse parts first, then METIS inside each part.

B3 (Thirukovalluru et al. 2025, arXiv 2505.11293) cuts the teacher's
reciprocal rank-window graph into ``floor(N / K)`` METIS parts. One METIS call
needs the whole graph, and every row's rank window, in one process: at 1M rows
about 100 s of METIS and 1.8 GiB of graph on the driver (BENCHMARKS.md, issue 7). A community
holds K = 32 rows whose rank windows (ranks 30 to 130) point at each other, so
it lies inside one small region of the embedding space; cutting the pool into
regions first loses only the edges between regions:

1. **Coarse parts.** ``ceil(N / part_rows)`` regions, each a union of fine
   lists: the IVF lists of the pool's index when it has them (free: every row
   already belongs to one), else lists of a seeded k-means on a sample
   (thread-invariant, :mod:`thresher.search.kmeans`; each row joins its
   nearest list centroid). The list centroids, weighted by
   their rows, are grouped into regions by a spherical k-means (seeded, numpy,
   float64). A region made directly of a k-means over rows cuts clusters
   apart: at 1M generated rows (2,000 clusters) 37% of window entries left
   their region against 0.07% with regions of IVF lists, and communities were
   8% less similar (BENCHMARKS.md). A part is a (source group, region) pair.
2. **METIS inside each part**, an independent task: the teacher windows of its
   rows (ranks among the whole pool, as one level has them), window entries
   that leave the part dropped, the reciprocal graph of what remains, METIS
   into ``floor(n_part / K)`` parts (seeded per part), whole communities of K.
3. **Leftovers.** Each part's rows that fill no community (fewer than K) are
   regrouped across parts, in part order, into further communities; fewer
   than K rows per group are left out, as with one level.

The fraction of window entries that cross parts (and so of edges that cannot be
used) is reported with the selection. :data:`ONE_LEVEL_MAX_ROWS` decides where
``partition="auto"`` switches to two levels.

``rank_scope="part"`` goes one step further: a part ranks its rows among its
own rows only (:func:`part_rank_windows`: exact for small parts, else an
IVF-Flat search trained on the part, :func:`balanced_ivf`), so B3 needs no
index over the pool and every step's cost is linear in the pool; ranks differ
from the pool's near the borders of parts. Measured against one level in
``bench/bench_b3.py`` (BENCHMARKS.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from thresher.rng import as_generator, derive_seed

#: ``partition="auto"`` runs one METIS call over the whole graph up to this many rows (the rank windows, 400 B a row
#: at m = 100, and the graph then fit the driver easily and METIS takes seconds), and two levels above it.
ONE_LEVEL_MAX_ROWS = 250_000
#: Default rows per coarse part: METIS on 100k rows takes seconds and a few hundred MiB on a worker.
DEFAULT_PART_ROWS = 100_000
#: The coarse k-means sees this many sample rows per centroid (at least KMEANS_MIN_SAMPLE, at most the pool).
KMEANS_SAMPLE_PER_PART = 512
KMEANS_MIN_SAMPLE = 20_000
KMEANS_MAX_ITER = 25


def n_coarse_parts(n_rows: int, part_rows: int) -> int:
    """Regions the coarse k-means makes: ``ceil(n_rows / part_rows)``, at least 1."""
    return max(1, math.ceil(n_rows / part_rows))


def coarse_sample(n_rows: int, n_parts: int, seed: int) -> np.ndarray:
    """Sorted positions of the rows the coarse k-means trains on (seeded; the whole pool when it is small)."""
    size = min(n_rows, max(KMEANS_MIN_SAMPLE, KMEANS_SAMPLE_PER_PART * n_parts))
    if size == n_rows:
        return np.arange(n_rows, dtype=np.int64)
    return np.sort(as_generator(derive_seed(seed, "b3-coarse-sample")).choice(n_rows, size=size, replace=False))


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def coarse_centroids(sample: np.ndarray, n_parts: int, seed: int, *, max_iter: int = KMEANS_MAX_ITER) -> np.ndarray:
    """Unit centroids of a spherical k-means (cosine) over ``sample`` (n, dim): shape (min(n_parts, n), dim), float32.

    Seeded k-means++ start (Arthur & Vassilvitskii 2007, on cosine distance),
    then Lloyd iterations until no row changes region or ``max_iter``; a region
    left empty takes the sample row farthest from its own centroid. All in
    float64 numpy, region sums in a fixed row order, ties to the lower index:
    the regions decide every part, so they are computed the same way in any process.
    """
    x = _unit(np.asarray(sample, dtype=np.float64))
    n = len(x)
    k = min(n_parts, n)
    rng = as_generator(derive_seed(seed, "b3-coarse-kmeans"))
    chosen = [int(rng.integers(n))]
    nearest = 1.0 - x @ x[chosen[0]]
    for _ in range(1, k):
        weights = np.clip(nearest, 0.0, None)
        total = weights.sum()
        pick = int(rng.choice(n, p=weights / total)) if total > 0 else int(rng.integers(n))
        chosen.append(pick)
        np.minimum(nearest, 1.0 - x @ x[pick], out=nearest)
    centroids = x[chosen]
    labels = None
    for _ in range(max_iter):
        sims = x @ centroids.T
        new = np.argmax(sims, axis=1)
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        centroids = _unit(_region_sums(x, labels, k))
        for empty in np.flatnonzero(np.bincount(labels, minlength=k) == 0):
            far = int(np.argmin(sims[np.arange(n), labels]))  # the row worst served by its region starts the empty one
            centroids[empty], labels[far] = x[far], empty
    return centroids.astype(np.float32)


def _region_sums(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per region, the sum of its rows (sorted, then summed in row order: the same bits on any machine)."""
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    sums = np.zeros((k, x.shape[1]), dtype=np.float64)
    sums[sorted_labels[starts]] = np.add.reduceat(x[order], starts, axis=0)
    return sums


def assign_coarse(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Region of each row: its nearest centroid by cosine (the row's length does not change the argmax), int32."""
    sims = np.asarray(vectors, dtype=np.float64) @ centroids.astype(np.float64).T
    return np.argmax(sims, axis=1).astype(np.int32)


#: Fine lists of the k-means regions (when the index has no IVF lists): 16 per region, between 256 and 512;
#: each row is assigned to its nearest list centroid (N x n_lists x dim flops, in shard tasks).
FINE_LISTS_PER_REGION = 16
MIN_FINE_LISTS = 256
MAX_FINE_LISTS = 512


@dataclass(frozen=True)
class Regions:
    """Coarse regions as unions of fine lists: a row's region is ``region_of[its nearest list centroid]``.

    Attributes
    ----------
    centroids : ndarray of shape (n_lists, dim), float32
        The fine lists' centroids (L2 k-means, :func:`fine_lists`).
    region_of : ndarray of int64, shape (n_lists,)
    """

    centroids: np.ndarray
    region_of: np.ndarray

    def assign(self, vectors: np.ndarray) -> np.ndarray:
        """Region of each row (int32)."""
        return self.region_of[_nearest(np.asarray(vectors, dtype=np.float32), self.centroids)].astype(np.int32)


def fine_lists(sample: np.ndarray, n_lists: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Centroids of an L2 k-means (seeded, 10 iterations, thread-invariant: :func:`thresher.search.kmeans.train_centroids`)
    with ``n_lists`` lists over ``sample``, and the sample rows each list got."""
    from thresher.search.kmeans import train_centroids

    x = np.ascontiguousarray(sample, dtype=np.float32)
    n_lists = min(n_lists, len(x))
    centroids = train_centroids(x, n_lists, metric="l2", seed=derive_seed(seed, "b3-fine-lists"), max_points_per_centroid=None)
    return centroids, np.bincount(_nearest(x, centroids), minlength=n_lists)


def regions_of_lists(centroids: np.ndarray, sizes: np.ndarray, n_regions: int, seed: int) -> np.ndarray:
    """Group fine lists into regions: a spherical k-means over the list centroids, each weighted by its rows (``sizes``).

    The weighting is a seeded sample of lists drawn in proportion to their
    rows; the region of a list is then its nearest region centroid.
    """
    sizes = np.asarray(sizes, dtype=np.float64)
    total = sizes.sum()
    if total <= 0 or n_regions <= 1:
        return np.zeros(len(centroids), dtype=np.int64)
    size = int(min(total, max(KMEANS_MIN_SAMPLE, KMEANS_SAMPLE_PER_PART * n_regions)))
    drawn = np.sort(as_generator(derive_seed(seed, "b3-region-sample")).choice(len(centroids), size=size, p=sizes / total))
    region_centroids = coarse_centroids(centroids[drawn], n_regions, seed)
    return assign_coarse(centroids, region_centroids).astype(np.int64)


def ivf_lists(index: Any) -> tuple[np.ndarray, list[np.ndarray]] | None:
    """The coarse centroids and, per list, the positions of an IVF index (any IVF: Flat, PQ, SQ); None for another index."""
    import faiss

    raw = getattr(index, "faiss_index", None)
    if raw is None:
        return None
    try:
        ivf = faiss.extract_index_ivf(raw)
    except RuntimeError:
        return None
    invlists = ivf.invlists
    lists = [faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy() if invlists.list_size(i) else np.empty(0, np.int64)
             for i in range(ivf.nlist)]
    return np.ascontiguousarray(ivf.quantizer.reconstruct_n(0, ivf.nlist), dtype=np.float32), lists


@dataclass(frozen=True)
class PartPlan:
    """The parts of a two-level B3 run: their members and source group, in part order.

    Attributes
    ----------
    members : list of ndarray of int64
        Per part, the sorted pool positions of its rows.
    group : ndarray of int64, shape (n_parts,)
        Per part, its source group (0 when the pool has no groups).
    n_regions : int
        Regions of the coarse k-means.
    """

    members: list[np.ndarray]
    group: np.ndarray
    n_regions: int
    regions_from: str = "k-means lists"

    @property
    def n_parts(self) -> int:
        return len(self.members)


def plan_parts(region: np.ndarray, group: np.ndarray | None, n_regions: int, regions_from: str = "k-means lists") -> PartPlan:
    """Parts = the non-empty (group, region) pairs, in that order; each part's members sorted by position."""
    region = np.asarray(region, dtype=np.int64)
    group = np.zeros(len(region), dtype=np.int64) if group is None else np.asarray(group, dtype=np.int64)
    key = group * n_regions + region
    order = np.argsort(key, kind="stable")
    bounds = np.flatnonzero(np.diff(key[order])) + 1
    members = np.split(order, bounds) if len(order) else []
    return PartPlan(members=members, group=np.array([group[m[0]] for m in members], dtype=np.int64), n_regions=n_regions,
                    regions_from=regions_from)


def window_inside(members: np.ndarray, window: np.ndarray) -> tuple[np.ndarray, int]:
    """The rank windows of a part's rows as positions *within the part* (-1 where the entry leaves the part or is missing).

    ``members`` are the part's sorted pool positions, ``window`` their windows
    (pool positions, -1 where missing). Also returns how many valid entries left the part.
    """
    local = np.searchsorted(members, window)
    hit = (window >= 0) & (members[np.minimum(local, len(members) - 1)] == window)
    n_out = int(((window >= 0) & ~hit).sum())
    return np.where(hit, local, -1), n_out


@dataclass(frozen=True)
class PartCommunities:
    """What one part gives: whole communities, the rows left over, and figures.

    Attributes
    ----------
    part : int
    communities : ndarray of int64, shape (n_communities, K)
        Pool positions; each row one community.
    rest : ndarray of int64
        Rows of the part in no community (fewer than K), regrouped across parts later.
    similarity : ndarray of float64, shape (n_communities,)
        Mean cosine between distinct members of each community.
    hard_negatives : ndarray of int64, shape (n_rows, n_hard), or None
        Per row of ``communities.ravel()`` then ``rest``, pool positions from its rank window (-1 where missing).
    n_edges, n_isolated_rows : int
        Reciprocal edges inside the part; its rows with none.
    n_window_entries, n_window_entries_leaving : int
        Valid rank-window entries of its rows; those pointing outside the part.
    """

    part: int
    communities: np.ndarray
    rest: np.ndarray
    similarity: np.ndarray
    hard_negatives: np.ndarray | None
    n_edges: int
    n_isolated_rows: int
    n_window_entries: int
    n_window_entries_leaving: int

    @property
    def rows(self) -> np.ndarray:
        """The part's rows in the order of ``hard_negatives``."""
        return np.concatenate([self.communities.ravel(), self.rest])


def regroup_rests(results: list[PartCommunities], part_group: np.ndarray, community_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Communities cut from the parts' leftovers, per group in part order; returns (communities (n, K), their groups, left out)."""
    communities, groups, left = [], [], []
    for g in np.unique(part_group):
        rest = [r.rest for r, pg in zip(results, part_group) if pg == g]
        rows = np.concatenate(rest) if rest else np.empty(0, np.int64)
        n_whole = len(rows) // community_size
        communities.append(rows[: n_whole * community_size].reshape(n_whole, community_size))
        groups.append(np.full(n_whole, g, dtype=np.int64))
        left.append(rows[n_whole * community_size :])
    if not communities:
        return np.empty((0, community_size), np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(communities), np.concatenate(groups), np.concatenate(left)


#: ``rank_scope="part"``: a part of at most this many rows is searched exactly (its rows against its rows);
#: a larger one through an IVF-Flat search trained on the part, lists of about PART_LIST_ROWS rows, PART_NPROBE probed.
PART_EXACT_ROWS = 8192
PART_LIST_ROWS = 512
PART_NPROBE = 4


def part_rank_windows(vectors: np.ndarray, p: int, m: int, seed: int) -> np.ndarray:
    """The rank windows ``[p, p + m)`` of a part's rows among the part's rows only, by cosine: shape (n, m), part positions, -1 where missing.

    The teacher's ranking restricted to the part: no index over the pool is
    needed, and the cost is linear in the pool (each part's rows against each
    part's rows). A part of at most :data:`PART_EXACT_ROWS` rows is searched
    exactly; a larger one with a :class:`~thresher.search.GroupedIVFSearch`
    trained on it (thread-invariant k-means, seeded; lists of ~:data:`PART_LIST_ROWS`
    rows, :data:`PART_NPROBE` probed), searched list by list.
    """
    from thresher.search import drop_self, exact_search

    x = np.array(vectors, dtype=np.float32)  # a copy, normalised in place (a float64 copy of a 100k-row part is 300 MB)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    x /= np.where(norms > 0, norms, 1.0).astype(np.float32)[:, None]
    n = len(x)
    k = min(p + m + 1, n)
    if n <= PART_EXACT_ROWS:
        search = lambda q: exact_search(x, q, k, metric="ip")[1]  # noqa: E731
    else:
        grouped = balanced_ivf(x, PART_LIST_ROWS, seed)
        grouped.nprobe = PART_NPROBE
        search = lambda q: grouped.search(q, k)  # noqa: E731
    out = np.full((n, m), -1, dtype=np.int32)
    for lo in range(0, n, 16_384):
        rows = np.arange(lo, min(lo + 16_384, n))
        found = drop_self(search(x[rows]), rows)[:, p : p + m]
        out[rows, : found.shape[1]] = found
    return out


def balanced_ivf(x: np.ndarray, list_rows: int, seed: int) -> Any:
    """An IVF-Flat search over ``x`` (n, dim) float32 unit rows with lists of about ``list_rows`` rows.

    A k-means (seeded, thread-invariant, on a sample of 64 rows per list) makes ``n / list_rows``
    lists; then every list over twice ``list_rows`` is split by a k-means of its
    own rows. Without the split, rows whose natural cluster got no centroid pile
    into one list (at 1M generated rows, a 100k part's largest list held 16
    clusters, 8,000 rows), and the search's cost grows with the square of a list's size.
    """
    from thresher.search import GroupedIVFSearch
    from thresher.search.kmeans import train_centroids

    n = len(x)
    nlist = max(1, n // list_rows)
    sample = np.sort(as_generator(derive_seed(seed, "b3-ivf-sample")).choice(n, size=min(n, 64 * nlist), replace=False))
    first = train_centroids(x[sample], nlist, metric="l2", seed=derive_seed(seed, "b3-ivf"), max_points_per_centroid=None)
    centroids = [first]
    labels = _nearest(x, first)
    sizes = np.bincount(labels, minlength=nlist)
    for lst in np.flatnonzero(sizes > 2 * list_rows):
        rows = x[labels == lst]
        split = train_centroids(rows, math.ceil(len(rows) / list_rows), metric="l2", seed=derive_seed(seed, "b3-ivf-split", int(lst)),
                                max_points_per_centroid=None)
        centroids[0][lst] = split[0]
        centroids.append(split[1:])
    centroids = np.ascontiguousarray(np.concatenate(centroids), dtype=np.float32)
    labels = _nearest(x, centroids)
    members = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[members], np.arange(len(centroids) + 1))
    positions = [members[bounds[i] : bounds[i + 1]] for i in range(len(centroids))]
    ordered = x[members]
    chunks = [ordered[bounds[i] : bounds[i + 1]] if bounds[i + 1] > bounds[i] else None for i in range(len(centroids))]
    # squared L2 between unit rows ranks as cosine does; lists and probes both by L2 to the (unnormalised) k-means centroids
    return GroupedIVFSearch(centroids, positions, chunks, metric="l2", nprobe=1, probe_block_rows=None)


def _nearest(x: np.ndarray, centroids: np.ndarray, block_rows: int = 65_536) -> np.ndarray:
    """Each row's nearest centroid by squared L2 distance (as ``IndexIVFFlat.add`` assigns rows), computed in blocks;
    near-ties decided in float64 (:func:`thresher.search.kmeans.nearest_centroids`), so the same in any process."""
    from thresher.search.kmeans import nearest_centroids

    return np.concatenate([nearest_centroids(x[lo : lo + block_rows], centroids, metric="l2")
                           for lo in range(0, len(x), block_rows)]) if len(x) else np.empty(0, np.int64)
