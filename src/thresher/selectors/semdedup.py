"""SemDeDup: semantic deduplication by clustering (Abbas et al. 2023, arXiv 2303.09540), as NeMo Curator runs it.

Definition, for vectors x (any norm; cosines are taken):

1. Spherical k-means (seeded, fitted on a sample of the pool; thread-invariant,
   :mod:`thresher.selectors.spherical_kmeans`) gives
   ``n_clusters`` unit centroids c_k. Each row joins the centroid of largest
   cosine (ties: lower cluster index); its ``centroid_distance`` is
   1 - cos(x, c).
2. Inside a cluster, rows are ordered by distance to the centroid, farthest
   first (cosine ascending; ties: lower pool position first).
3. A row is removed iff its largest cosine to any *earlier* row of that order
   is >= 1 - eps. "Any earlier row" means every earlier row, kept or removed:
   the upper-triangular column maximum of the cluster's similarity matrix,
   as the SemDeDup reference code and NeMo Curator compute it. The first row
   of each order is always kept. So the decision of a row never depends on
   other decisions, and a chain a ~ b ~ c can remove both b and c even when
   cos(a, c) < 1 - eps.
4. Every removed row names the row it duplicates (``duplicate_of``): the
   earlier *kept* row of that order with the largest cosine to it (ties: the
   earliest in the order), and ``similarity`` is that cosine. It is always a
   kept row (the first row of the order is kept). Its similarity is >= 1 - eps
   unless the row's near-duplicates at the threshold were all themselves
   removed (a chain); ``max_similarity`` keeps the decision's value, the
   largest cosine to any earlier row, which is always >= 1 - eps for a
   removed row.

Two modes. ``mode="paper"`` (the default) is the rule above, the paper's.
``mode="exact"`` follows the plain definition of a duplicate instead: a row
is removed iff a row kept before it in the keep order made global (centroid
cosine ascending, then position) has cosine >= 1 - eps to it, wherever its
cluster is; every removed row then names a kept row at cosine >= 1 - eps and
no two kept rows are that close (:mod:`thresher.selectors.semdedup_exact`).

Exactness. Similarities are first computed in float32 with a BLAS matrix
product of one block of a cluster against the cluster's earlier rows (never
more than block x cluster), whose result depends on block shape and threads.
Every maximum of record (cluster assignment, the decision's maximum, the
representative) is then re-computed in float64 with a fixed summation order
(cos = x.y / sqrt(|x|^2 |y|^2) on the stored vectors, so two identical
vectors have cosine exactly 1 and eps = 0 removes exact copies) over the
candidates whose float32 value lies within 2 delta of the float32
maximum (delta a bound on the float32 error); the true maximum, and all rows
tied with it, are always among them. So every decision, tie-break and
reported number equals the float64 definition and is the same for any block
size, number of partitions, workers or threads. The k-means fit runs on the
driver with the same exact assignments and fixed-order float64 sums, so its
centroids are the same bits for any thread count (FAISS's own k-means was
measured to differ between 1 and 2 threads on real text, issue 19).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from thresher.exceptions import InputDataError, ParameterError, parameter_error
from thresher.params import Interval, StrOptions
from thresher.selectors._base import BLOCK_ROWS, SEED, BlockwiseSelector, PoolLike, Selection
from thresher.selectors.rds import exact_dot_rows

#: bytes of float32 similarities (block rows x cluster rows) held at once when the block size is automatic
SCORE_BLOCK_BYTES = 32 << 20
#: candidate pairs re-scored in float64 at once (bounds the gathered (pairs, dim) copies)
PAIR_CHUNK = 16_384
#: rows converted to float64 at once
ROW_CHUNK = 8_192
#: k-means training rows per centroid when ``sample_size`` is not given (FAISS's own default cap)
SAMPLE_PER_CLUSTER = 256
#: the rules a row is removed by (module docstring)
MODES = ("paper", "exact")
_OWNER = "SemDeDup"


def float32_error_bound(dim: int) -> float:
    """delta: a bound on |float32 dot of unit vectors rounded to float32 - float64 dot| for width ``dim``.

    Rounding each unit vector to float32 moves their dot product by at most
    (2 + u) u; a length-``dim`` float32 sum adds at most ``dim`` u (u = 2^-24);
    doubled for safety.
    """
    return float(2 * (dim + 4) * 2.0**-24)


@dataclass(frozen=True)
class Rows:
    """Vectors of record as given (``x``, float32 or float64), their float64 squared norms (``sq``) and
    float32 unit rows (``unit32``). Float64 copies are only made a chunk at a time."""

    x: np.ndarray
    sq: np.ndarray
    unit32: np.ndarray

    @classmethod
    def of(cls, vectors: np.ndarray, *, what: str = "the pool", positions: np.ndarray | None = None) -> Rows:
        """Refuses a non-finite or zero row, naming its position."""
        x = np.asarray(vectors)
        if x.dtype not in (np.float32, np.float64):
            x = x.astype(np.float32)  # float16 and the like: exact
        sq = np.empty(len(x))
        unit32 = np.empty(x.shape, dtype=np.float32)
        for lo in range(0, len(x), ROW_CHUNK):
            x64 = x[lo : lo + ROW_CHUNK].astype(np.float64)
            sq[lo : lo + ROW_CHUNK] = exact_dot_rows(x64, x64)
            with np.errstate(divide="ignore", invalid="ignore"):
                unit32[lo : lo + ROW_CHUNK] = x64 / np.sqrt(sq[lo : lo + ROW_CHUNK])[:, None]
        bad = ~np.isfinite(sq) | (sq == 0)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            where = row if positions is None else int(positions[row])
            kind = "a zero vector" if np.isfinite(sq[row]) else "not finite (NaN or inf)"
            raise InputDataError(f"Row {where} of {what} is {kind}: cosine similarity is undefined for it.")
        return cls(x, sq, unit32)

    def __len__(self) -> int:
        return len(self.sq)

    def __getitem__(self, index: Any) -> Rows:
        return Rows(self.x[index], self.sq[index], self.unit32[index])


def exact_cosines(q: Rows, r: Rows, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """cos(q[rows[i]], r[cols[i]]) = (q . r) / sqrt(|q|^2 |r|^2) in float64, fixed summation order, in chunks.

    Symmetric, and exactly 1 for two identical vectors (sqrt(d * d) == d in IEEE arithmetic).
    """
    out = np.empty(len(rows))
    for lo in range(0, len(rows), PAIR_CHUNK):
        a, b = rows[lo : lo + PAIR_CHUNK], cols[lo : lo + PAIR_CHUNK]
        dot = exact_dot_rows(q.x[a].astype(np.float64), r.x[b].astype(np.float64))
        out[lo : lo + PAIR_CHUNK] = dot / np.sqrt(q.sq[a] * r.sq[b])
    return out


def exact_max(s32: np.ndarray, q: Rows, r: Rows, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact float64 maximum and argmax of cos(q[i], r[j]) over the columns j that ``s32`` does not mask.

    Parameters
    ----------
    s32 : ndarray of float32, shape (n_queries, n_refs)
        Float32 approximations of the cosines (``q.unit32 @ r.unit32.T``),
        within ``delta`` of the exact ones; -inf marks a pair that does not take part.
    q, r : Rows
        Query and reference rows of record.

    Returns
    -------
    best : ndarray of float64, shape (n_queries,)
        -inf for a query without any pair.
    arg : ndarray of int64, shape (n_queries,)
        Column of the maximum (the lowest one on ties); -1 without any pair.
    """
    n = s32.shape[0]
    best = np.full(n, -np.inf)
    arg = np.full(n, -1, dtype=np.int64)
    if n == 0 or s32.shape[1] == 0:
        return best, arg
    approx = s32.max(axis=1)
    if not (approx > -np.inf).any():
        return best, arg
    floor = np.where(approx > -np.inf, approx - np.float32(2 * delta), np.float32(np.inf))
    rows, cols = np.nonzero(s32 >= floor[:, None])
    exact = exact_cosines(q, r, rows, cols)
    order = np.lexsort((cols, -exact, rows))  # per query: largest value first, then lowest column
    rows, cols, exact = rows[order], cols[order], exact[order]
    first = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    best[rows[first]] = exact[first]
    arg[rows[first]] = cols[first]
    return best, arg


def sample_positions(n_rows: int, sample_size: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted row offsets of the k-means training sample: every row, or ``sample_size`` drawn without replacement."""
    if sample_size >= n_rows:
        return np.arange(n_rows, dtype=np.int64)
    return np.sort(rng.choice(n_rows, size=sample_size, replace=False)).astype(np.int64)


@dataclass(frozen=True)
class ClusterDedup:
    """One cluster's result, in the cluster's order (farthest from the centroid first).

    ``duplicate_of`` holds pool positions (-1 for kept rows); ``similarity`` is NaN for kept rows;
    ``max_similarity`` is -inf for the first row.
    """

    cluster: int
    positions: np.ndarray
    centroid_cos: np.ndarray
    kept: np.ndarray
    max_similarity: np.ndarray
    duplicate_of: np.ndarray
    similarity: np.ndarray


@dataclass(frozen=True)
class RemovedRows:
    """The removed rows, in pool order: what each duplicates (a kept row), and how similar they are."""

    positions: np.ndarray
    ids: np.ndarray
    duplicate_of_positions: np.ndarray
    duplicate_of: np.ndarray
    similarity: np.ndarray
    max_similarity: np.ndarray
    cluster: np.ndarray

    def __len__(self) -> int:
        return len(self.positions)


@dataclass(frozen=True)
class SemDeDupSelection(Selection):
    """The kept rows (in pool order, with ``cluster``, ``centroid_distance`` and ``max_similarity``, the largest
    cosine to an earlier row of the cluster's order, NaN for a cluster's first row), plus :attr:`removed` and the
    fitted :attr:`centroids` (float32 (n_clusters, dim))."""

    removed: RemovedRows | None = None
    centroids: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True)
class SemDeDupState:
    """What every block of SemDeDup needs: the fitted ``centroids`` (float32 (n_clusters, dim)), in exact mode
    the sketches' ``basis``; and for ``finish``, the training ``sample_size`` and the pool's ``n_rows``."""

    centroids: np.ndarray
    sample_size: int
    n_rows: int
    basis: np.ndarray | None = None  # exact mode: the sketches' orthonormal basis (:func:`~thresher.selectors.semdedup_exact.sketch_basis`)


@dataclass(frozen=True)
class Assignment:
    """Each row's nearest centroid: ``positions`` (ascending), ``cluster`` and ``cos`` (the exact cosine to it);
    in exact mode ``near``, the packed marks of the clusters each row may have a near-duplicate in
    (:func:`thresher.selectors.semdedup_exact.near_clusters`), and each row's ``sketch``
    (:func:`thresher.selectors.semdedup_exact.sketch_rows`)."""

    positions: np.ndarray
    cluster: np.ndarray
    cos: np.ndarray
    near: np.ndarray | None = None
    sketch: np.ndarray | None = None

    def groups(self) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """(cluster, its positions ascending, their centroid cosines) for every non-empty cluster, by cluster index."""
        order = np.lexsort((self.positions, self.cluster))
        positions, cluster, cos = self.positions[order], self.cluster[order], self.cos[order]
        cuts = np.flatnonzero(np.r_[True, cluster[1:] != cluster[:-1], True]) if len(cluster) else np.zeros(1, dtype=np.int64)
        return [(int(cluster[a]), positions[a:b], cos[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]


class SemDeDup(BlockwiseSelector):
    """Semantic deduplication: k-means, then within each cluster drop rows too close to an earlier one (Abbas et al. 2023).

    Parameters
    ----------
    n_clusters : int, default 1000
        k of the k-means; at most the number of rows (and of the training sample).
    eps : float in [0, 1), default 0.01
        A row is removed when its cosine to an earlier row of its cluster's order is >= 1 - eps.
    sample_size : int or None, default None
        Rows the k-means is fitted on, drawn uniformly without replacement with
        ``seed`` (default: min(rows, 256 x n_clusters); all rows when larger).
    n_iter : int, default 25
        k-means iterations.
    block_rows : int or None
        Rows of a cluster compared at once against its earlier rows (default:
        sized so a block's float32 similarities take 32 MiB).
    seed : int, default 0
        Drives the sample and the k-means initialisation.
    mode : {"paper", "exact"}, default "paper"
        ``"paper"``: the paper's within-cluster rule (a row goes when any
        earlier row of its cluster's order is within eps, kept or not).
        ``"exact"``: a row goes when a row kept before it, in any cluster, is
        within eps; so every removed row has a kept twin at cosine >= 1 - eps
        and no two kept rows are within eps (module docstring).

    Distributed protocol (:class:`~thresher.selectors._base.BlockwiseSelector`):
    ``prepare`` draws the sample and fits the centroids (:class:`SemDeDupState`);
    ``partial`` assigns a block's rows to them; ``merge`` gathers the
    :class:`Assignment` in position order; ``finish`` deduplicates cluster by
    cluster (``run_tasks=`` lets a job spread the clusters over workers).

    Examples
    --------
    >>> sel = SemDeDup(n_clusters=100, eps=0.05).select(x)        # doctest: +SKIP
    >>> sel.positions, sel.removed.duplicate_of, sel.removed.similarity   # doctest: +SKIP
    """

    name = "semdedup"
    _parameter_constraints = {
        "n_clusters": [Interval(int, 1, None)],
        "eps": [Interval(float, 0, 1, closed="left")],
        "sample_size": [None, Interval(int, 1, None)],
        "n_iter": [Interval(int, 1, None)],
        "block_rows": BLOCK_ROWS,
        "seed": SEED,
        "mode": [StrOptions(*MODES)],
    }

    def __init__(self, *, n_clusters: int = 1000, eps: float = 0.01, sample_size: int | None = None, n_iter: int = 25,
                 block_rows: int | None = None, seed: int = 0, mode: Literal["paper", "exact"] = "paper"):
        self.n_clusters = n_clusters
        self.eps = eps
        self.sample_size = sample_size
        self.n_iter = n_iter
        self.block_rows = block_rows
        self.seed = seed
        self.mode = mode

    @property
    def threshold(self) -> float:
        """1 - eps: a cosine at or above it to an earlier row removes a row."""
        return 1.0 - float(self.eps)

    def check_rows(self, n_rows: int) -> int:
        """Validate ``n_clusters`` against ``n_rows`` and return the sample size to fit on."""
        self.validate_params()
        if self.n_clusters > n_rows:
            raise ParameterError(f"The 'n_clusters' parameter of {_OWNER} is {self.n_clusters} but there are only {n_rows} rows; "
                                 "it must be <= the number of rows.")
        size = min(n_rows, self.sample_size if self.sample_size is not None else SAMPLE_PER_CLUSTER * self.n_clusters)
        if size < self.n_clusters:
            raise ParameterError(f"The 'sample_size' parameter of {_OWNER} is {self.sample_size}, fewer than n_clusters={self.n_clusters}: "
                                 "k-means needs at least one row per centroid.")
        return size

    def draw_sample(self, n_rows: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """(sorted row offsets of the training sample, the k-means seed), both from ``rng``."""
        size = self.check_rows(n_rows)
        kmeans_seed = int(rng.integers(0, 2**31 - 1))
        return sample_positions(n_rows, size, rng), kmeans_seed

    def fit_centroids(self, sample: np.ndarray, *, kmeans_seed: int, positions: np.ndarray | None = None) -> np.ndarray:
        """Spherical k-means on the (normalised) sample, the same bits whatever the thread count
        (:mod:`thresher.selectors.spherical_kmeans`); returns the centroids, float32 (n_clusters, dim)."""
        from thresher.selectors.spherical_kmeans import spherical_kmeans

        rows = Rows.of(sample, positions=positions)
        m = rows.x.shape[0]
        if m < self.n_clusters:
            raise ParameterError(f"{_OWNER} cannot fit {self.n_clusters} clusters on a sample of {m} rows.")
        centroids = spherical_kmeans(rows, int(self.n_clusters), int(self.n_iter), int(kmeans_seed))
        Rows.of(centroids, what="the k-means centroids")
        return centroids

    def assign(self, vectors: np.ndarray, centroids: np.ndarray, positions: np.ndarray | None = None, *,
               basis: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """Nearest centroid by cosine (ties: lower index) and that cosine, exact in float64.

        Returns (cluster int64 (n,), cosine float64 (n,)), and with ``basis`` (exact mode) the packed marks
        (uint8 (n, ceil(n_clusters / 8))) and the sketches (float32 (n, m + 1)) of
        :mod:`thresher.selectors.semdedup_exact`. Rows are taken in chunks of at most 32 MiB of float32 products.
        """
        from thresher.selectors.semdedup_exact import near_clusters, sketch_rows

        x = Rows.of(vectors, positions=positions)
        c = Rows.of(centroids, what="the k-means centroids")
        delta = float32_error_bound(x.x.shape[1])
        n, k = len(x), len(c)
        cluster, cos = np.empty(n, dtype=np.int64), np.empty(n)
        marks = np.empty((n, (k + 7) // 8), dtype=np.uint8) if basis is not None else None
        step = max(1, SCORE_BLOCK_BYTES // (4 * k))
        for lo in range(0, n, step):
            part = x[lo : lo + step]
            s32 = part.unit32 @ c.unit32.T
            cos[lo : lo + step], cluster[lo : lo + step] = exact_max(s32, part, c, delta)
            if marks is not None:
                marks[lo : lo + step] = near_clusters(s32, cluster[lo : lo + step], c.unit32, self.eps, delta)
        if basis is None:
            return cluster, cos
        return cluster, cos, marks, sketch_rows(x, basis)

    def dedup_cluster(self, cluster: int, vectors: np.ndarray, positions: np.ndarray, centroid_cos: np.ndarray) -> ClusterDedup:
        """The SemDeDup decisions inside one cluster (module docstring, steps 2-4), blocked.

        Parameters
        ----------
        vectors : ndarray of shape (n, dim)
            The cluster's rows, in any order, aligned with ``positions`` and ``centroid_cos``.
        """
        positions = np.asarray(positions, dtype=np.int64)
        order = np.lexsort((positions, centroid_cos))  # cosine ascending = farthest first; ties: lower position
        positions, centroid_cos = positions[order], np.asarray(centroid_cos, dtype=np.float64)[order]
        x = Rows.of(np.asarray(vectors)[order], positions=positions)
        x32 = x.unit32
        n = len(positions)
        delta = float32_error_bound(x.x.shape[1])
        kept = np.zeros(n, dtype=bool)
        max_sim = np.full(n, -np.inf)
        duplicate_of = np.full(n, -1, dtype=np.int64)
        similarity = np.full(n, np.nan)
        block = self.block_rows or max(1, min(n, SCORE_BLOCK_BYTES // (4 * max(1, n))))
        for a in range(0, n, block):
            b = min(a + block, n)
            s32 = x32[a:b] @ x32[:b].T  # this block against every earlier row (and itself)
            np.copyto(s32[:, a:], -np.inf, where=~np.tri(b - a, k=-1, dtype=bool))  # only rows earlier in the order
            best, _ = exact_max(s32, x[a:b], x[:b], delta)
            max_sim[a:b] = best
            kept[a:b] = ~(best >= self.threshold)
            removed = np.flatnonzero(~kept[a:b])
            if len(removed):
                sub = s32[removed]
                sub[:, ~kept[:b]] = -np.inf  # the representative is an earlier kept row
                value, arg = exact_max(sub, x[a + removed], x[:b], delta)
                duplicate_of[a + removed] = positions[arg]
                similarity[a + removed] = value
        return ClusterDedup(int(cluster), positions, centroid_cos, kept, max_sim, duplicate_of, similarity)

    # -- the distributed protocol (BlockwiseSelector) ---------------------------------------------

    def prepare(self, pool: PoolLike, *, budget: int, rng: np.random.Generator) -> SemDeDupState:
        """Draw the training sample with ``rng`` and fit the k-means on it (on the driver)."""
        if budget != pool.n_rows:
            raise parameter_error(_OWNER, "budget", "1.0 (SemDeDup keeps what eps leaves; lower eps to keep more)", budget)
        sample, kmeans_seed = self.draw_sample(pool.n_rows, rng)
        vectors = pool.take(sample)
        centroids = self.fit_centroids(vectors, kmeans_seed=kmeans_seed, positions=sample)
        basis = None
        if self.mode == "exact":
            from thresher.selectors.semdedup_exact import sketch_basis

            basis = sketch_basis(Rows.of(vectors, positions=sample))
        return SemDeDupState(centroids, len(sample), pool.n_rows, basis)

    def partial(self, state: SemDeDupState, blocks: Iterable[Any], pool: Any = None) -> Assignment:
        """Assign every row of ``blocks`` to its nearest centroid (step 1 of the module docstring); in exact mode, mark
        the clusters each row may have a near-duplicate in, and sketch it."""
        exact = self.mode == "exact"
        parts: list[tuple[np.ndarray, ...]] = []
        for block in blocks:
            positions = np.arange(block.start, block.start + len(block.ids), dtype=np.int64)
            parts.append((positions, *self.assign(block.vectors, state.centroids, positions, basis=state.basis if exact else None)))
        if not parts:
            width, sketch = (len(state.centroids) + 7) // 8, 0 if state.basis is None else state.basis.shape[1] + 1
            empty = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0), np.empty((0, width), np.uint8), np.empty((0, sketch), np.float32))
            parts = [empty[: 5 if exact else 3]]
        columns = [np.concatenate(c) for c in zip(*parts)]
        return Assignment(*columns)

    def merge(self, partials: Sequence[Assignment]) -> Assignment:
        """The assignments of disjoint blocks, in position order."""
        positions = np.concatenate([p.positions for p in partials])
        order = np.argsort(positions, kind="stable")

        def cat(name: str) -> np.ndarray | None:
            if getattr(partials[0], name) is None:
                return None
            return np.concatenate([getattr(p, name) for p in partials])[order]

        return Assignment(positions[order], cat("cluster"), cat("cos"), cat("near"), cat("sketch"))

    def finish(self, state: SemDeDupState, merged: Assignment, pool: PoolLike, *,
               run_tasks: Callable[[list[list[tuple[int, np.ndarray, np.ndarray]]], Any], Sequence[Any]] | None = None,
               task_rows: int | None = None, ids_at: Callable[[np.ndarray], np.ndarray] | None = None) -> SemDeDupSelection:
        """Deduplicate cluster by cluster, then gather kept and removed rows, each in pool order.

        The clusters are packed into tasks of about ``task_rows`` rows (default: all in one), each a list of
        (cluster, positions, centroid cosines); ``run_tasks(tasks, context)`` returns ``[self.cluster_task(task,
        take, context) for task in tasks]`` with ``take`` reading rows of the pool where the task runs (a job
        spreads them over workers; default: in this process on ``pool.take``). ``ids_at`` gives the pool ids at
        positions (default: ``pool.ids()``).
        """
        if len(merged.positions) != state.n_rows or len(np.unique(merged.positions)) != state.n_rows:
            raise ValueError(f"{_OWNER} got assignments for {len(merged.positions)} rows ({len(np.unique(merged.positions))} distinct) "
                             f"of {state.n_rows}")
        groups = merged.groups()
        tasks = [[groups[j] for j in task] for task in pack_clusters([len(g[1]) for g in groups], task_rows or max(1, state.n_rows))]
        context = self.task_context(merged)
        del groups
        if run_tasks is None:
            parts = [self.cluster_task(task, pool.take, context) for task in tasks]
        else:
            parts = list(run_tasks(tasks, context))
        del tasks
        if ids_at is None:
            all_ids = pool.ids()

            def ids_at(p: np.ndarray) -> np.ndarray:
                return all_ids[p]

        if self.mode == "exact":
            return self._gather_exact(parts, merged, ids_at, state)
        return self._gather([r for part in parts for r in part], ids_at, state)

    def task_context(self, merged: Assignment) -> Any:
        """What every task needs besides its own clusters: nothing in paper mode; in exact mode the rows grouped by
        cluster and their marks (:class:`~thresher.selectors.semdedup_exact.ExactContext`)."""
        if self.mode != "exact":
            return None
        from thresher.selectors.semdedup_exact import ExactContext

        order = np.lexsort((merged.positions, merged.cluster))
        starts = np.searchsorted(merged.cluster[order], np.arange(int(self.n_clusters) + 1))
        return ExactContext(merged.positions[order], starts.astype(np.int64), merged.near[order], merged.sketch[order])

    def cluster_task(self, groups: Sequence[tuple[int, np.ndarray, np.ndarray]], take: Callable[[np.ndarray], np.ndarray], context: Any) -> Any:
        """One task's work over its clusters ((cluster, positions, centroid cosines) each): a list of
        :class:`ClusterDedup` (paper mode), or the :class:`~thresher.selectors.semdedup_exact.Edges` found (exact mode)."""
        if self.mode == "exact":
            from thresher.selectors.semdedup_exact import cluster_edges

            return cluster_edges([c for c, _, _ in groups], take, context, eps=self.eps, block_rows=self.block_rows,
                                 score_bytes=SCORE_BLOCK_BYTES)
        from thresher.selectors.semdedup_exact import SMALL_CLUSTER
        from thresher.threads import one_blas_thread

        out = []
        for c, p, cos in groups:
            with one_blas_thread(len(p) < SMALL_CLUSTER):  # a small cluster's products are small: no BLAS threads to wake
                out.append(self.dedup_cluster(c, take(p), p, cos))
        return out

    def _gather_exact(self, parts: Sequence[Any], merged: Assignment, ids_at: Callable[[np.ndarray], np.ndarray],
                      state: SemDeDupState) -> SemDeDupSelection:
        """The exact mode's greedy keep over every edge, then kept and removed rows in pool order."""
        from thresher.selectors.semdedup_exact import Edges, greedy_keep

        edges = Edges.concat(parts)
        n_edges = len(edges)
        positions, cluster, cos = merged.positions, merged.cluster, merged.cos  # positions are 0..n-1, ascending
        order = np.lexsort((positions, cos))  # the paper's keep order, over the whole pool
        keep = greedy_keep(order, edges)
        del edges
        k = np.flatnonzero(keep.kept)
        r = np.flatnonzero(~keep.kept)
        removed = RemovedRows(
            positions=r, ids=ids_at(r), duplicate_of_positions=keep.duplicate_of[r], duplicate_of=ids_at(keep.duplicate_of[r]),
            similarity=keep.similarity[r], max_similarity=keep.max_similarity[r], cluster=cluster[r],
        )
        summary = self._summary(state, cluster, n_kept=len(k), n_removed=len(r), below=int((keep.similarity[r] < self.threshold).sum()))
        summary["edges"] = int(n_edges)
        return SemDeDupSelection(
            positions=k, ids=ids_at(k), selector=self.name, params=self.get_params(),
            columns={"cluster": cluster[k], "centroid_distance": 1.0 - cos[k], "max_similarity": keep.max_similarity[k]},
            seed=self.seed, summary=summary, removed=removed, centroids=state.centroids,
        )

    def _summary(self, state: SemDeDupState, cluster: np.ndarray, *, n_kept: int, n_removed: int, below: int) -> dict[str, Any]:
        sizes = np.bincount(cluster, minlength=int(self.n_clusters))
        return {
            "rows_in": int(state.n_rows),
            "kept": int(n_kept),
            "removed": int(n_removed),
            "clusters": int(self.n_clusters),
            "clusters_nonempty": int((sizes > 0).sum()),
            "largest_cluster": int(sizes.max()) if len(sizes) else 0,
            "eps": float(self.eps),
            "threshold": self.threshold,
            "sample_size": int(state.sample_size),
            "mode": self.mode,
            "removed_with_similarity_below_threshold": int(below),
        }

    def _gather(self, parts: Sequence[ClusterDedup], ids_at: Callable[[np.ndarray], np.ndarray], state: SemDeDupState) -> SemDeDupSelection:
        """The clusters' results as kept rows and removed rows, each in pool order, and the counts."""
        n_rows = state.n_rows
        parts = sorted(parts, key=lambda p: p.cluster)

        def cat(name: str) -> np.ndarray:
            return np.concatenate([getattr(p, name) for p in parts])

        positions, kept, cos = cat("positions"), cat("kept"), cat("centroid_cos")
        max_sim, dup, sim = cat("max_similarity"), cat("duplicate_of"), cat("similarity")
        cluster = np.concatenate([np.full(len(p.positions), p.cluster, dtype=np.int64) for p in parts])
        if len(positions) != n_rows or len(np.unique(positions)) != n_rows:
            raise ValueError(f"{_OWNER} got results for {len(positions)} rows ({len(np.unique(positions))} distinct) of {n_rows}")
        k = np.flatnonzero(kept)
        k = k[np.argsort(positions[k], kind="stable")]
        r = np.flatnonzero(~kept)
        r = r[np.argsort(positions[r], kind="stable")]
        kept_max = max_sim[k].copy()
        kept_max[~np.isfinite(kept_max)] = np.nan  # a cluster's first row has no earlier row
        removed = RemovedRows(
            positions=positions[r], ids=ids_at(positions[r]), duplicate_of_positions=dup[r], duplicate_of=ids_at(dup[r]),
            similarity=sim[r], max_similarity=max_sim[r], cluster=cluster[r],
        )
        summary = self._summary(state, cluster, n_kept=len(k), n_removed=len(r), below=int((sim[r] < self.threshold).sum()))
        return SemDeDupSelection(
            positions=positions[k],
            ids=ids_at(positions[k]),
            selector=self.name,
            params=self.get_params(),
            columns={"cluster": cluster[k], "centroid_distance": 1.0 - cos[k], "max_similarity": kept_max},
            seed=self.seed,
            summary=summary,
            removed=removed,
            centroids=state.centroids,
        )

    def select(self, pool: Any, *, budget: int | float = 1.0, **inputs: Any) -> SemDeDupSelection:
        """Deduplicate ``pool`` (array (n_rows, dim) or embedding store); ``budget`` must be 1.0 (eps decides the count)."""
        return super().select(pool, budget=budget, **inputs)


def group_by_cluster(cluster: np.ndarray, positions: np.ndarray | None = None) -> list[tuple[int, np.ndarray]]:
    """(cluster, its positions in ascending order) for every non-empty cluster, by cluster index."""
    positions = np.arange(len(cluster), dtype=np.int64) if positions is None else np.asarray(positions, dtype=np.int64)
    order = np.lexsort((positions, cluster))
    cluster, positions = cluster[order], positions[order]
    cuts = np.flatnonzero(np.r_[True, cluster[1:] != cluster[:-1], True])
    return [(int(cluster[a]), positions[a:b]) for a, b in zip(cuts[:-1], cuts[1:])] if len(cluster) else []


def pack_clusters(sizes: Sequence[int], target_rows: int) -> list[list[int]]:
    """Consecutive cluster indices (into ``sizes``) packed into tasks of about ``target_rows`` rows; a large cluster is alone."""
    tasks: list[list[int]] = []
    current: list[int] = []
    rows = 0
    for i, size in enumerate(sizes):
        if current and rows + size > target_rows:
            tasks.append(current)
            current, rows = [], 0
        current.append(i)
        rows += size
    if current:
        tasks.append(current)
    return tasks


__all__ = ["MODES", "Assignment", "ClusterDedup", "SemDeDupState", "RemovedRows", "Rows", "SemDeDup", "SemDeDupSelection", "exact_cosines", "exact_max", "float32_error_bound",
           "group_by_cluster", "pack_clusters", "sample_positions"]
