"""SemDeDup's exact mode: the threshold graph of the whole pool, found cluster by cluster, and a greedy keep in the paper's order.

The paper's rule (:mod:`thresher.selectors.semdedup`) compares a row only with
rows of its own k-means cluster, and with every earlier row, kept or removed:
two kept rows in neighbouring clusters can be near-duplicates, and a removed
row's only near-duplicates can all have been removed (a chain). Exact mode
follows the plain definition instead, with t = 1 - eps:

- an *edge* joins two rows whose cosine is >= t, wherever their clusters are;
- rows are visited in the paper's keep order made global: farthest from their
  own centroid first (cosine to it ascending), ties by lower position; a row is
  kept iff no edge joins it to a row kept before it (a greedy maximal
  independent set of the threshold graph);
- so every removed row has a kept row at cosine >= t (its ``duplicate_of``:
  the kept row of largest cosine to it, ties to the earliest in the order) and
  no two kept rows have cosine >= t.

Finding every edge without an N x N pass. For unit vectors, cos(x, y) >= t
iff |x - y| <= s = sqrt(2 eps). Let x be in cluster a and y in cluster b != a
(each row's cluster is its centroid of largest cosine, so y.c_b >= y.c_a).
Then (x - y).(c_a - c_b) <= |x - y| |c_a - c_b| gives

    x.c_a - x.c_b <= s |c_a - c_b|    and, the same way,    y.c_b - y.c_a <= s |c_a - c_b|:

x lies within s of the bisector of c_a and c_b, and so does y (the bound of
Voronoi-cell search). While assigning rows, each row records as a bit per
cluster the clusters b whose bisector it is that close to
(:func:`near_clusters`); an edge between clusters a and b can only join a row
of a marked b and a row of b marked a, so cluster a is compared only with
the rows of later clusters marked a (:func:`cluster_edges`), plus every pair
inside a cluster. On 200k real-text vectors with 1,000 clusters the marks
leave 1 % of all pairs at eps = 0.01, 11 % at 0.05 and 49 % at 0.10 (measured;
the bound loosens as s grows).

Those pairs are screened first on sketches: with an orthonormal basis V of
the m = 64 leading principal directions (of the k-means sample), a unit row x
is p = V^T x plus a residual of norm r = sqrt(1 - |p|^2), and for two rows

    cos(x, y) = p_x . p_y + res_x . res_y <= p_x . p_y + r_x r_y     (Cauchy-Schwarz),

a product of (m + 1)-wide sketches [p, r] (:func:`sketch_rows`). Only the rows
of other clusters that pass this bound with some row of the cluster are read
from the store and compared in full: 1 % of them at eps = 0.05, 10 % at 0.10
on the same vectors. Any basis gives a valid bound; a good one only prunes more.

Exactness. The bits are set from float32 products with margins larger than
their rounding error (a row is marked whenever the exact inequality could
hold), pairs are screened in float32 within 2 delta of t, and every edge is
decided by the float64 cosine of record
(:func:`thresher.selectors.semdedup.exact_cosines`). So the edges, the keep
order and every decision are the same for any block size, task split, number
of workers or threads.

Memory. The driver holds the marks (rows x n_clusters / 8 bytes) and sketches
(rows x 260 bytes): 77 MB for 200k rows and 1,000 clusters, and each worker a
copy; and the edges (24 bytes each: about the number of near-duplicate
pairs). A task holds its clusters' rows and the candidate rows it reads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from thresher.selectors.semdedup import Rows, exact_cosines, float32_error_bound
from thresher.threads import one_blas_thread

#: rows of other clusters screened at once
OTHER_ROWS = 16_384
#: clusters of fewer rows run their (small) products on one BLAS thread (:func:`thresher.threads.one_blas_thread`)
SMALL_CLUSTER = 1024
#: principal directions in a sketch
SKETCH_DIM = 64
#: slack of the sketch bound, beyond its float32 rounding (a looser bound only reads more rows)
SKETCH_SLACK = 1e-4
#: slack added to every float32 bound, beyond the rounding bound delta (a looser bound only compares more pairs)
BOUND_SLACK = 1e-5


def chord_radius(eps: float) -> float:
    """s = sqrt(2 eps): for unit vectors, cos(x, y) >= 1 - eps iff |x - y| <= s (rounded up a hair)."""
    return float(np.sqrt(2.0 * float(eps)) * (1 + 1e-12))


def near_clusters(s32: np.ndarray, cluster: np.ndarray, centroids32: np.ndarray, eps: float, delta: float) -> np.ndarray:
    """For each row, the clusters other than its own whose bisector with its own it lies within s of, as packed bits.

    Parameters
    ----------
    s32 : ndarray of float32, shape (n_rows, n_clusters)
        Float32 cosines of the rows to the centroids (``unit32 @ centroids32.T``), within ``delta`` of the exact ones.
    cluster : ndarray of int, shape (n_rows,)
        Each row's own cluster (the exact one).
    centroids32 : ndarray of float32, shape (n_clusters, dim)
        The unit centroids.

    Returns
    -------
    ndarray of uint8, shape (n_rows, ceil(n_clusters / 8))
        ``np.packbits`` of the (n_rows, n_clusters) marks: bit b set when
        x.c_own - x.c_b <= s |c_own - c_b| may hold.
    """
    n, k = s32.shape
    if n == 0:
        return np.zeros((0, (k + 7) // 8), dtype=np.uint8)
    own_clusters, inverse = np.unique(cluster, return_inverse=True)
    gram = centroids32[own_clusters] @ centroids32.T  # (distinct own clusters, k), each within delta
    distance = np.sqrt(np.maximum(np.float32(0), np.float32(2) - np.float32(2) * (gram - np.float32(delta))))  # >= |c_a - c_b|
    reach = np.float32(chord_radius(eps)) * distance + np.float32(2 * delta + BOUND_SLACK)
    own = s32[np.arange(n), cluster]
    near = (own[:, None] - s32) <= reach[inverse]
    near[np.arange(n), cluster] = False
    return np.packbits(near, axis=1)


def sketch_basis(sample: Rows, m: int = SKETCH_DIM) -> np.ndarray:
    """The ``min(m, dim)`` leading principal directions (uncentred) of the unit rows of ``sample``, float64 (dim, m), orthonormal."""
    dim = sample.x.shape[1]
    gram = np.zeros((dim, dim))
    for lo in range(0, len(sample), 8192):
        part = sample.unit32[lo : lo + 8192].astype(np.float64)
        gram += part.T @ part
    values, vectors = np.linalg.eigh(gram)
    top = vectors[:, ::-1][:, : min(m, dim)]
    q, _ = np.linalg.qr(top)  # orthonormal to float64 rounding, whatever eigh returned
    return np.ascontiguousarray(q)


def sketch_rows(x: Rows, basis: np.ndarray) -> np.ndarray:
    """[p, r] of each row (module docstring), float32 (n, m + 1): p = V^T x of the float64 unit row, r its residual norm,
    rounded up so the bound p_x . p_y + r_x r_y stays above the cosine after rounding."""
    out = np.empty((len(x), basis.shape[1] + 1), dtype=np.float32)
    for lo in range(0, len(x), 8192):
        chunk = x[lo : lo + 8192]
        unit = chunk.x.astype(np.float64) / np.sqrt(chunk.sq)[:, None]
        p = unit @ basis
        out[lo : lo + 8192, :-1] = p
        out[lo : lo + 8192, -1] = np.sqrt(np.maximum(0.0, 1.0 - np.einsum("ij,ij->i", p, p))) + 1e-6
    return out


def has_bit(packed: np.ndarray, bit: int) -> np.ndarray:
    """Rows of ``packed`` (``np.packbits`` rows, big-endian bit order) whose bit ``bit`` is set."""
    return ((packed[:, bit >> 3] >> (7 - (bit & 7))) & 1).astype(bool)


@dataclass(frozen=True)
class ExactContext:
    """What every edge task needs (sent to each worker once): the rows grouped by cluster and their marks.

    ``members`` are the positions sorted by (cluster, position); cluster c holds
    ``members[starts[c]:starts[c + 1]]``; ``near`` holds their packed marks and ``sketch`` their sketches,
    aligned with ``members``.
    """

    members: np.ndarray
    starts: np.ndarray
    near: np.ndarray
    sketch: np.ndarray

    def rows_of(self, c: int) -> slice:
        return slice(int(self.starts[c]), int(self.starts[c + 1]))


@dataclass(frozen=True)
class Edges:
    """Pairs of rows (pool positions ``a`` < ``b``) at cosine ``cos`` >= 1 - eps, found by one task."""

    a: np.ndarray
    b: np.ndarray
    cos: np.ndarray

    @classmethod
    def empty(cls) -> Edges:
        return cls(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0))

    @classmethod
    def concat(cls, parts: Sequence[Edges]) -> Edges:
        parts = [p for p in parts if len(p.a)]
        if not parts:
            return cls.empty()
        return cls(np.concatenate([p.a for p in parts]), np.concatenate([p.b for p in parts]), np.concatenate([p.cos for p in parts]))

    def __len__(self) -> int:
        return len(self.a)


def cluster_edges(clusters: Sequence[int], take: Callable[[np.ndarray], np.ndarray], context: ExactContext, *, eps: float,
                  block_rows: int | None = None, score_bytes: int = 32 << 20) -> Edges:
    """Every edge with an end in one of ``clusters`` whose other end is in the same cluster or a later one.

    Each edge of the pool is found by exactly one cluster (the lower of its two),
    so the tasks' results are disjoint. ``take(positions)`` reads rows' vectors;
    no more than ``score_bytes`` of float32 products (``block_rows``: rows of a
    cluster compared at once instead), and ``OTHER_ROWS`` rows of other
    clusters, are held at once.

    A cluster a is screened, in one sketch product per chunk, against every
    row of a later cluster that is marked a (a superset of the pairs the marks
    leave, since a row of a need not be marked b: about 1.5x as many on real
    text, in products large enough for BLAS to run at full speed); the rows
    that pass are read and compared in full, in float32 and then float64.
    """
    threshold = 1.0 - float(eps)
    parts: list[Edges] = []
    for a in clusters:
        a = int(a)
        here = context.rows_of(a)
        pos_a = context.members[here]
        if len(pos_a) == 0:
            continue
        with one_blas_thread(len(pos_a) < SMALL_CLUSTER):  # every product of this cluster has a side of len(pos_a) rows
            parts.extend(_cluster_edges(a, here, pos_a, take, context, threshold, block_rows, score_bytes))
    return Edges.concat(parts)


def _cluster_edges(a: int, here: slice, pos_a: np.ndarray, take: Callable[[np.ndarray], np.ndarray], context: ExactContext,
                   threshold: float, block_rows: int | None, score_bytes: int) -> list[Edges]:
    """:func:`cluster_edges` for cluster ``a`` alone."""
    parts: list[Edges] = []
    x = Rows.of(take(pos_a), positions=pos_a)
    delta = float32_error_bound(x.x.shape[1])
    # inside the cluster: every pair (i, j), j earlier in the cluster's list than i
    rows_i: list[np.ndarray] = []
    cols_j: list[np.ndarray] = []
    floor = np.float32(threshold - 2 * delta)
    block = block_rows or max(1, score_bytes // (4 * len(pos_a)))
    for lo in range(0, len(pos_a), block):
        hi = min(lo + block, len(pos_a))
        s32 = x.unit32[lo:hi] @ x.unit32[:hi].T
        np.copyto(s32[:, lo:], -np.inf, where=~np.tri(hi - lo, k=-1, dtype=bool))
        i, j = np.nonzero(s32 >= floor)
        rows_i.append(i + lo)
        cols_j.append(j)
    parts.append(_edges(pos_a, pos_a, *_confirmed(x, x, np.concatenate(rows_i), np.concatenate(cols_j), threshold)))
    # across clusters: the rows of later clusters marked a (an edge's other end always is), screened on sketches,
    # then those that pass read and compared in full
    after = int(context.starts[a + 1])
    marked = after + np.flatnonzero(has_bit(context.near[after:], a))
    sketch_a = context.sketch[here]
    bound = np.float32(threshold - SKETCH_SLACK)
    for lo in range(0, len(marked), OTHER_ROWS):
        chunk = marked[lo : lo + OTHER_ROWS]
        step = max(1, score_bytes // (4 * len(chunk)))
        hit = np.zeros(len(chunk), dtype=bool)
        for xl in range(0, len(pos_a), step):
            hit |= (sketch_a[xl : xl + step] @ context.sketch[chunk].T >= bound).any(axis=0)
        if not hit.any():
            continue
        y_pos = context.members[chunk[hit]]
        y = Rows.of(take(y_pos), positions=y_pos)
        step = block_rows or max(1, score_bytes // (4 * len(y_pos)))
        rows_i, cols_j = [], []
        for xl in range(0, len(pos_a), step):
            i, j = np.nonzero(x.unit32[xl : xl + step] @ y.unit32.T >= floor)
            rows_i.append(i + xl)
            cols_j.append(j)
        parts.append(_edges(pos_a, y_pos, *_confirmed(x, y, np.concatenate(rows_i), np.concatenate(cols_j), threshold)))
    return parts


def _confirmed(q: Rows, r: Rows, rows: np.ndarray, cols: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The screened pairs whose float64 cosine of record is >= ``threshold``: (rows, cols, cosines)."""
    cos = exact_cosines(q, r, rows, cols)
    keep = cos >= threshold
    return rows[keep], cols[keep], cos[keep]


def _edges(pos_q: np.ndarray, pos_r: np.ndarray, rows: np.ndarray, cols: np.ndarray, cos: np.ndarray) -> Edges:
    a, b = pos_q[rows], pos_r[cols]
    return Edges(np.minimum(a, b), np.maximum(a, b), cos)


@dataclass(frozen=True)
class GreedyKeep:
    """The exact mode's decisions, indexed by position: ``kept``; for removed rows ``duplicate_of`` (a kept row's
    position, else -1) and ``similarity`` (its cosine, else NaN); ``max_similarity``: the largest cosine >= t
    to a row earlier in the keep order (NaN when there is none)."""

    kept: np.ndarray
    duplicate_of: np.ndarray
    similarity: np.ndarray
    max_similarity: np.ndarray


def greedy_keep(order: np.ndarray, edges: Edges) -> GreedyKeep:
    """Visit positions in ``order`` (the keep order, every position once); keep a row iff no kept row before it shares an edge.

    The kept rows are a maximal independent set of the threshold graph: every removed row has an edge to a
    kept row, and no edge joins two kept rows.
    """
    n = len(order)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    early = np.where(rank[edges.a] < rank[edges.b], edges.a, edges.b)
    late = np.where(rank[edges.a] < rank[edges.b], edges.b, edges.a)
    by_late = np.argsort(rank[late], kind="stable")
    early_sorted, late_sorted = early[by_late], late[by_late]
    kept = np.ones(n, dtype=bool)
    if len(late_sorted):
        cuts = np.flatnonzero(np.r_[True, late_sorted[1:] != late_sorted[:-1], True])
        kept_list = bytearray(np.ones(n, dtype=np.uint8).tobytes())
        early_list = early_sorted.tolist()
        for r, lo, hi in zip(late_sorted[cuts[:-1]].tolist(), cuts[:-1].tolist(), cuts[1:].tolist()):
            for e in early_list[lo:hi]:  # rows earlier in the order: their decision is final
                if kept_list[e]:
                    kept_list[r] = 0
                    break
        kept = np.frombuffer(bytes(kept_list), dtype=np.uint8).astype(bool)
    max_similarity = np.full(n, -np.inf)
    np.maximum.at(max_similarity, late, edges.cos)
    max_similarity[~np.isfinite(max_similarity)] = np.nan
    duplicate_of = np.full(n, -1, dtype=np.int64)
    similarity = np.full(n, np.nan)
    # a removed row's twin: the kept row of largest cosine to it, ties to the earliest in the order
    removed_end = np.r_[edges.a, edges.b]
    kept_end = np.r_[edges.b, edges.a]
    cos = np.r_[edges.cos, edges.cos]
    pair = ~kept[removed_end] & kept[kept_end]
    removed_end, kept_end, cos = removed_end[pair], kept_end[pair], cos[pair]
    best = np.lexsort((rank[kept_end], -cos, removed_end))
    removed_end, kept_end, cos = removed_end[best], kept_end[best], cos[best]
    first = np.flatnonzero(np.r_[True, removed_end[1:] != removed_end[:-1]]) if len(removed_end) else np.empty(0, np.int64)
    duplicate_of[removed_end[first]] = kept_end[first]
    similarity[removed_end[first]] = cos[first]
    return GreedyKeep(kept, duplicate_of, similarity, max_similarity)


__all__ = ["BOUND_SLACK", "SKETCH_DIM", "Edges", "ExactContext", "GreedyKeep", "chord_radius", "cluster_edges", "greedy_keep", "has_bit", "near_clusters", "sketch_basis", "sketch_rows"]
