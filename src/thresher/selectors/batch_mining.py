"""B3 batch mining: batches rich in in-batch negatives (Thirukovalluru et al. 2025, arXiv 2505.11293).

Contrastive training takes its negatives from the batch. B3 builds batches
whose members are strong negatives for each other:

1. A teacher embedding ranks, for every example, all others by similarity
   (here through the FAISS index, or exact search for small pools). Every
   row is a query, so an IVF-Flat index is searched list by list, all the
   queries probing a list in one matrix product (:class:`thresher.search.GroupedIVFSearch`).
2. The top ``p`` ranks are skipped (likely false negatives), ranks
   ``[p, p + m)`` become edges (reference: p = 30, m = 100); only reciprocal
   pairs are kept: an undirected, unweighted sparse graph (never N x N dense).
3. METIS partitions the graph into ``floor(N / K)`` parts; parts are cut into
   communities of exactly K (overflow regrouped deterministically, no row
   repeated — the reference pads with duplicate positions by mistake).
   Large pools are partitioned in two levels (:mod:`thresher.selectors.b3_partition`):
   coarse regions by a seeded k-means, then METIS inside each region, each
   region an independent task, so no process holds the whole graph.
4. A batch is ``batch_size / K`` whole communities; community order and batch
   order are shuffled with the seed; an incomplete last batch is dropped
   unless asked otherwise.

The output is in batch order with ``batch``, ``community`` and ``position``
(within the batch) columns: a trainer streams it without shuffling.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from thresher.exceptions import InputDataError, ParameterError
from thresher.params import Check, Interval, StrOptions
from thresher.rng import as_generator, derive_seed
from thresher.search import GroupedIVFSearch, drop_self, exact_search
from thresher.selectors import b3_partition
from thresher.selectors._base import SEED, BlockwiseSelector, PoolLike, Selection
from thresher.selectors.b3_partition import DEFAULT_PART_ROWS, ONE_LEVEL_MAX_ROWS, PartCommunities, PartPlan
from thresher.selectors.rds import normalize_rows

OWNER = "BatchMiner"


def window_neighbors(pool: PoolLike, neighbors: Any, p: int, m: int, *, block_rows: int | None = None) -> np.ndarray:
    """For each pool row, the positions at teacher ranks ``[p, p + m)`` (self excluded), shape (n_rows, m), -1 where missing.

    ``neighbors`` is an object with ``search_positions(vectors, k)`` (a thresher
    FAISS index; an IVF-Flat one is searched with :class:`GroupedIVFSearch`) or
    None for exact inner-product search over the pool. Queries are searched
    ``block_rows`` at a time (default 8,192; 65,536 for the grouped search, whose
    cost per block is reading the index's lists once).
    """
    if block_rows is None:
        block_rows = 65_536 if GroupedIVFSearch.applies(neighbors, pool.n_rows) else 8192
    return window_neighbors_of_blocks(pool, pool.iter_blocks(block_rows), neighbors, p, m)


def teacher_search(pool: PoolLike, neighbors: Any) -> Any:
    """The teacher's ranking as a function ``(vectors (n, dim), k) -> positions (n, k)``, nearest first, -1 where missing.

    ``neighbors``: None (exact inner-product search over ``pool``), a thresher
    IVF-Flat index over the pool (searched with :class:`GroupedIVFSearch`), or
    anything with ``search_positions(vectors, k)``.
    """
    from thresher.selectors._base import ArrayPool

    if neighbors is None:
        searched = pool.vectors if isinstance(pool, ArrayPool) else pool
        return lambda vectors, k: exact_search(searched, vectors, k, metric="ip")[1]
    grouped = GroupedIVFSearch.of(neighbors, pool.n_rows)
    if grouped is not None:
        return grouped.search
    return lambda vectors, k: neighbors.search_positions(vectors, k)[1]


def window_neighbors_of_blocks(pool: PoolLike, blocks: Any, neighbors: Any, p: int, m: int) -> np.ndarray:
    """:func:`window_neighbors` for the given blocks of ``pool`` only (a job's partition), rows in block order."""
    search = teacher_search(pool, neighbors)
    parts = []
    for block in blocks:
        positions = np.arange(block.start, block.start + len(block.ids), dtype=np.int64)
        parts.append(drop_self(search(block.vectors, p + m + 1), positions)[:, p : p + m])
    return np.concatenate(parts) if parts else np.empty((0, m), dtype=np.int64)


#: What the grouped IVF search's per-block candidate lists may take: queries x nprobe x k (float32 key + int64 position).
SEARCH_BLOCK_BYTES = 256 << 20


def search_block_rows(pool: PoolLike, neighbors: Any, k: int) -> int:
    """Queries to search at once. 8,192, or for the grouped IVF search as many as its candidate lists allow in
    :data:`SEARCH_BLOCK_BYTES` (8,192 to 65,536): its cost per block is a pass over every probed list, so
    bigger blocks mean fewer, larger matrix products (at 1M rows, IVF2048 nprobe 2, 20k queries in one block
    took about 2.5x less CPU than in blocks of 8,192)."""
    if not GroupedIVFSearch.applies(neighbors, pool.n_rows):
        return 8192
    import faiss

    nprobe = max(1, int(faiss.extract_index_ivf(neighbors.faiss_index).nprobe))
    return int(min(65_536, max(8192, SEARCH_BLOCK_BYTES // (nprobe * k * 12))))


def window_of_rows(pool: PoolLike, positions: np.ndarray, neighbors: Any, p: int, m: int, *, block_rows: int | None = None) -> np.ndarray:
    """:func:`window_neighbors` of the rows at ``positions`` (any rows of ``pool``, e.g. one coarse part), searched
    ``block_rows`` at a time (default :func:`search_block_rows`)."""
    search = teacher_search(pool, neighbors)
    block_rows = search_block_rows(pool, neighbors, p + m + 1) if block_rows is None else block_rows
    index = np.int32 if pool.n_rows < 2**31 else np.int64
    out = np.empty((len(positions), m), dtype=index)
    for lo in range(0, len(positions), block_rows):
        rows = positions[lo : lo + block_rows]
        out[lo : lo + len(rows)] = drop_self(search(pool.take(rows), p + m + 1), rows)[:, p : p + m]
    return out


def reciprocal_graph(window: np.ndarray) -> Any:
    """The undirected graph of reciprocal window pairs, as a symmetric scipy CSR matrix of ones (no self loops).

    Each row's window is sorted, so the directed graph is built in canonical CSR
    form directly (no COO sort), and a pair is kept when its transpose is present:
    at 1M rows x 100 ranks this is a few seconds and 32-bit indices.
    """
    from scipy import sparse

    n, m = window.shape
    index = np.int32 if n < np.iinfo(np.int32).max else np.int64
    cols = np.sort(window.astype(index, copy=True), axis=1)
    keep = (cols >= 0) & (cols != np.arange(n, dtype=index)[:, None])
    keep[:, 1:] &= cols[:, 1:] != cols[:, :-1]  # repeated pairs collapse to one edge
    indptr = np.zeros(n + 1, dtype=index)
    np.cumsum(keep.sum(axis=1), out=indptr[1:])
    indices = cols[keep]
    del cols, keep
    directed = sparse.csr_matrix((np.ones(len(indices), dtype=np.int8), indices, indptr), shape=(n, n))
    directed.has_canonical_format = True
    both = directed.multiply(directed.T.tocsr()).tocsr()
    both.eliminate_zeros()
    both.sort_indices()
    return both


def metis_parts(graph: Any, n_parts: int, *, seed: int | None = None) -> np.ndarray:
    """METIS k-way partition of ``graph`` (scipy CSR) into ``n_parts`` parts; part id per node.

    ``seed`` is METIS's own random seed (None: METIS's default, itself fixed).
    """
    import pymetis

    if n_parts <= 1:
        return np.zeros(graph.shape[0], dtype=np.int64)
    options = None if seed is None else pymetis.Options(seed=int(seed) % (2**31 - 1))
    _, membership = pymetis.part_graph(n_parts, xadj=graph.indptr.astype(np.int64), adjncy=graph.indices.astype(np.int64), options=options)
    return np.asarray(membership, dtype=np.int64)


def equal_communities(parts: np.ndarray, community_size: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Cut parts into communities of exactly ``community_size`` rows.

    Each part, members in position order, gives as many whole communities as
    it can; the overflow of all parts (in part, then position order) is cut
    into further communities; fewer than ``community_size`` rows are left out.
    Returns the communities (arrays of positions) and the left-out positions.
    """
    order = np.lexsort((np.arange(len(parts)), parts))
    sorted_parts = parts[order]
    bounds = np.flatnonzero(np.diff(sorted_parts)) + 1
    communities, overflow = [], []
    for members in np.split(order, bounds):
        n_whole = len(members) // community_size
        communities += [members[i * community_size : (i + 1) * community_size] for i in range(n_whole)]
        overflow.append(members[n_whole * community_size :])
    rest = np.concatenate(overflow) if overflow else np.empty(0, np.int64)
    n_whole = len(rest) // community_size
    communities += [rest[i * community_size : (i + 1) * community_size] for i in range(n_whole)]
    return communities, rest[n_whole * community_size :]


def community_similarity(pool: PoolLike, communities: np.ndarray, *, block_rows: int = 16_384) -> np.ndarray:
    """Per community (a row of ``communities``, shape (n, K), K >= 2), the mean cosine between its distinct members."""
    n, size = communities.shape
    out = np.empty(n, dtype=np.float64)
    step = max(1, block_rows // max(size, 1))
    for lo in range(0, n, step):
        rows = communities[lo : lo + step].ravel()
        x = normalize_rows(pool.take(rows), what="the pool's embeddings", positions=rows).reshape(-1, size, pool.dim)
        s = x.sum(axis=1)
        out[lo : lo + len(x)] = (np.einsum("ij,ij->i", s, s) - size) / (size * (size - 1))
    return out


def mean_in_batch_similarity(pool: PoolLike, batches: Sequence[np.ndarray], *, block_rows: int = 65_536) -> float:
    """Mean cosine between distinct members of the same batch, averaged over batches.

    The rows of consecutive batches are read together, about ``block_rows`` at a
    time: one read per store shard serves many batches.
    """
    values = []
    batches = [np.sort(members) for members in batches if len(members) >= 2]
    lo = 0
    while lo < len(batches):
        hi, size = lo + 1, len(batches[lo])
        while hi < len(batches) and size + len(batches[hi]) <= block_rows:
            size += len(batches[hi])
            hi += 1
        rows = np.concatenate(batches[lo:hi])
        x = normalize_rows(pool.take(rows), what="the pool's embeddings", positions=rows)  # a zero row has no cosine: refused, named
        start = 0
        for members in batches[lo:hi]:
            s = x[start : start + len(members)].sum(axis=0)
            start += len(members)
            values.append((s @ s - len(members)) / (len(members) * (len(members) - 1)))
        lo = hi
    return float(np.mean(values)) if values else float("nan")


@dataclass(frozen=True)
class TeacherDepth:
    """The IVF depth the teacher searches at, chosen by the window recall it gives on sampled rows (:func:`choose_teacher_depth`).

    Attributes
    ----------
    nprobe : int
        Lists each query probes (through a subset's filtered search: before its division by the subset's share).
    window_recall : float
        Share of the exact rank-window entries ``[p, p + m)`` the search at ``nprobe`` finds, on the sample.
    target : float
        The recall asked for (``teacher_recall``).
    sample : int
        Rows the recall was measured on.
    ladder : dict
        Recall at each depth tried (``{nprobe: recall}``), for the manifest.
    """

    nprobe: int
    window_recall: float
    target: float
    sample: int
    ladder: dict[int, float]

    def summary(self) -> dict[str, Any]:
        return {"nprobe": self.nprobe, "window_recall": round(self.window_recall, 4), "target": self.target, "sample": self.sample,
                "recall_by_nprobe": {str(k): round(v, 4) for k, v in self.ladder.items()}}


@dataclass(frozen=True)
class TeacherWindows:
    """What every block of B3 needs: the teacher rank window ``[p, p + m)`` and the teacher's depth (None: the index's own)."""

    p: int
    m: int
    depth: TeacherDepth | None = None


def teacher_ivf(neighbors: Any) -> Any:
    """The FAISS IVF index behind ``neighbors`` (a thresher index, or a subset's searcher over one), or None."""
    import faiss

    if getattr(neighbors, "exact", False):  # a subset searched exactly over its own rows
        return None
    index = getattr(neighbors, "index", None) if getattr(neighbors, "faiss_index", None) is None else neighbors
    raw = getattr(index, "faiss_index", None)
    if raw is None:
        return None
    try:
        return faiss.extract_index_ivf(raw)
    except RuntimeError:
        return None


@contextmanager
def teacher_nprobe(neighbors: Any, depth: TeacherDepth | int | None) -> Iterator[None]:
    """Search ``neighbors`` at ``depth`` lists inside the block (its own depth again after: the index may be the caller's)."""
    ivf = teacher_ivf(neighbors) if depth is not None else None
    if ivf is None:
        yield
        return
    before = ivf.nprobe
    ivf.nprobe = int(min(ivf.nlist, depth.nprobe if isinstance(depth, TeacherDepth) else depth))
    try:
        yield
    finally:
        ivf.nprobe = before


#: Rows the teacher's window recall is measured on.
TEACHER_SAMPLE_ROWS = 256


def choose_teacher_depth(pool: PoolLike, neighbors: Any, p: int, m: int, target: float, seed: int,
                         sample_rows: int = TEACHER_SAMPLE_ROWS) -> TeacherDepth | None:
    """The smallest IVF depth (1, 2, 4, ... lists, up to all) whose rank windows hold ``target`` of the exact ones, on a seeded sample.

    None when ``neighbors`` has no IVF lists (Flat and HNSW indexes keep their own
    settings). Why: the index's own depth is set for recall@10 of a few queries
    (``nlist / 32`` lists), and B3 searches every pool row, so that depth makes
    the teacher's cost grow as N²: at 1M rows, IVF4096 probed 128 lists for a
    window recall of 0.998, while 32 lists gave 0.970 at a quarter of the cost
    (bench/scale-notes.md). The exact windows come from exact search over ``pool``;
    the approximate ones from the same search the tasks run.
    """
    ivf = teacher_ivf(neighbors)
    if ivf is None:
        return None
    n = pool.n_rows
    rng = as_generator(derive_seed(seed, "b3-teacher-depth"))
    sample = np.sort(rng.choice(n, size=min(sample_rows, n), replace=False)).astype(np.int64)
    vectors = pool.take(sample)
    k = p + m + 1
    exact = drop_self(teacher_search(pool, None)(vectors, k), sample)[:, p : p + m]
    valid = exact >= 0
    ladder: dict[int, float] = {}
    nprobe = 1
    while True:
        nprobe = min(nprobe, int(ivf.nlist))
        with teacher_nprobe(neighbors, nprobe):
            found = drop_self(teacher_search(pool, neighbors)(vectors, k), sample)[:, p : p + m]
        hits = sum(np.isin(e[v], f).sum() for e, f, v in zip(exact, found, valid))
        ladder[nprobe] = float(hits / max(1, int(valid.sum())))
        if ladder[nprobe] >= target or nprobe >= ivf.nlist:
            return TeacherDepth(nprobe=nprobe, window_recall=ladder[nprobe], target=float(target), sample=len(sample), ladder=ladder)
        nprobe *= 2


@dataclass(frozen=True)
class WindowRows:
    """The rank windows of pool rows ``[start, start + len(window))``: positions, shape (n, m), -1 where missing."""

    start: int
    window: np.ndarray


def _rank_window(value: Any) -> bool:
    window = tuple(value)
    return len(window) == 2 and all(Interval(int, 0, None).accepts(v) for v in window) and window[1] > window[0]


class BatchMiner(BlockwiseSelector):
    """B3 batches: METIS communities of a teacher's reciprocal rank-window graph (Thirukovalluru et al. 2025).

    Parameters
    ----------
    batch_size : int, default 1024
        Rows per batch; a multiple of ``community_size``.
    community_size : int, default 32
    rank_window : (int, int), default (30, 130)
        Teacher ranks ``[p, p + m)`` that become edges (p skipped as likely false negatives).
    n_hard_negatives : int, default 0
        Per row, this many ids sampled from its rank window, stored as ``hard_negatives``.
    drop_last : bool, default True
        Drop the last batch when it has fewer than ``batch_size / community_size`` communities.
    partition : {"auto", "one_level", "two_level"}, default "auto"
        ``"one_level"``: one METIS call over the whole graph (the paper's way;
        the graph and every rank window in one process). ``"two_level"``:
        coarse regions first (seeded k-means), METIS inside each
        (:mod:`thresher.selectors.b3_partition`); edges between regions are
        lost, no process holds the whole graph. ``"auto"``: one level up to
        ``ONE_LEVEL_MAX_ROWS`` (250,000) rows, two above.
    part_rows : int, default 100,000
        Two levels: ``ceil(n_rows / part_rows)`` regions, unions of the index's
        IVF lists (or of a k-means's lists when the index has none).
    rank_scope : {"pool", "part"}, default "pool"
        ``"pool"``: the teacher ranks every row among the whole pool (through
        ``neighbors``, the pool's index, or exact search), as the paper does.
        ``"part"``: among the rows of its part only (always two levels; a pool
        of at most ``part_rows`` rows is one part per source): no index over
        the pool is needed and the cost grows linearly with the pool
        (:func:`~thresher.selectors.b3_partition.part_rank_windows`); ranks
        differ from the pool's near the parts' borders.
    teacher_recall : float in (0, 1] or None, default 0.95
        With an IVF index as the teacher, the depth its searches probe: the
        fewest lists whose rank windows hold this share of the exact windows,
        measured on 256 seeded rows (:func:`choose_teacher_depth`; recorded in
        the summary as ``teacher``). None: the index's own depth.
    seed : int, default 0
        Shuffles community and batch order, samples hard negatives, seeds the
        coarse k-means and (per part) METIS.

    ``select(pool, budget=1.0, neighbors=index, groups=None, window=None)``:
    ``neighbors`` is a thresher FAISS index over the pool (None: exact search);
    ``groups`` a per-row source label, so each batch comes from one source;
    ``window`` the teacher rank windows when already computed (by a job). The budget is
    the share of the pool to batch (1.0 = all).

    Distributed protocol, one level (:class:`~thresher.selectors._base.BlockwiseSelector`):
    the teacher search is the block-wise part. ``prepare`` checks the pool and
    gives the :class:`TeacherWindows`; ``partial`` searches the windows of a
    block's rows (``neighbors=``: the index opened where it runs); ``merge``
    stitches adjacent row ranges; ``finish`` builds the graph and the batches.

    Two levels: ``prepare``; :meth:`index_regions` (where the index is open) or
    :meth:`region_model` (driver, a sample) then :meth:`assign_regions` over
    blocks (any worker); :meth:`plan_parts` (driver);
    :meth:`mine_part` per part (any worker: teacher windows, graph, METIS);
    :meth:`finish_parts` (driver: leftovers, batches).
    """

    name = "b3"
    _parameter_constraints = {
        "batch_size": [Interval(int, 1, None)],
        "community_size": [Interval(int, 1, None)],
        "rank_window": [Check(_rank_window, "a pair (p, p + m) of ints with 0 <= p < p + m")],
        "n_hard_negatives": [Interval(int, 0, None)],
        "drop_last": ["boolean"],
        "partition": [StrOptions("auto", "one_level", "two_level")],
        "part_rows": [Interval(int, 1, None)],
        "rank_scope": [StrOptions("pool", "part")],
        "teacher_recall": [Interval(float, 0, 1, closed="right"), None],
        "seed": SEED,
    }

    def __init__(self, *, batch_size: int = 1024, community_size: int = 32, rank_window: tuple[int, int] = (30, 130),
                 n_hard_negatives: int = 0, drop_last: bool = True, partition: Literal["auto", "one_level", "two_level"] = "auto",
                 part_rows: int = DEFAULT_PART_ROWS, rank_scope: Literal["pool", "part"] = "pool", teacher_recall: float | None = 0.95,
                 seed: int = 0):
        self.batch_size = batch_size
        self.community_size = community_size
        self.rank_window = rank_window
        self.n_hard_negatives = n_hard_negatives
        self.drop_last = drop_last
        self.partition = partition
        self.part_rows = part_rows
        self.rank_scope = rank_scope
        self.teacher_recall = teacher_recall
        self.seed = seed

    def _check_param_relations(self) -> None:
        if self.batch_size % self.community_size:
            raise ParameterError(
                f"The 'batch_size' parameter of BatchMiner ({self.batch_size}) must be a multiple of 'community_size' ({self.community_size})."
            )
        width = int(self.rank_window[1]) - int(self.rank_window[0])
        if self.n_hard_negatives > width:
            # The negatives are drawn from the rank window without replacement: more than its width cannot be had.
            raise ParameterError(
                f"The 'n_hard_negatives' parameter of BatchMiner ({self.n_hard_negatives}) must be at most the width of "
                f"'rank_window' {tuple(int(v) for v in self.rank_window)} (m = {width}): hard negatives are drawn from that window."
            )
        if self.part_rows < self.community_size:
            raise ParameterError(
                f"The 'part_rows' parameter of BatchMiner ({self.part_rows}) must be at least 'community_size' ({self.community_size}): "
                "a coarse part smaller than a community gives none."
            )
        if self.rank_scope == "part" and self.partition == "one_level":
            raise ParameterError("The 'rank_scope' parameter of BatchMiner is 'part', which needs parts: 'partition' must be "
                                 "'two_level' or 'auto', not 'one_level'.")

    def two_levels(self, n_rows: int) -> bool:
        """Whether a pool of ``n_rows`` rows is partitioned in two levels (``partition``; "auto": above ``ONE_LEVEL_MAX_ROWS``,
        or always with ``rank_scope="part"``)."""
        return self.partition == "two_level" or (self.partition == "auto" and (n_rows > ONE_LEVEL_MAX_ROWS or self.rank_scope == "part"))

    def _seed(self) -> int:
        return int(self.seed) if isinstance(self.seed, (int, np.integer)) else 0

    # -- the distributed protocol (BlockwiseSelector): the teacher's rank windows are the block-wise part ---------

    def prepare(self, pool: PoolLike, *, budget: int, rng: np.random.Generator | None = None, neighbors: Any = None,
                groups: Sequence[Any] | np.ndarray | None = None, window: np.ndarray | None = None) -> TeacherWindows:
        """Check the pool against the settings; the state is the rank window ``[p, p + m)`` and, with an IVF index
        as ``neighbors``, the teacher's depth (:meth:`teacher_depth`)."""
        p, stop = int(self.rank_window[0]), int(self.rank_window[1])
        n = pool.n_rows
        if n < self.batch_size:
            raise ParameterError(f"The pool has {n} rows, fewer than one batch (batch_size={self.batch_size}).")
        if stop >= n:
            raise ParameterError(f"The 'rank_window' of BatchMiner ends at rank {stop}, but the pool has only {n} rows; p + m must be < the pool size.")
        if groups is not None and len(groups) != n:
            raise InputDataError(f"'groups' has {len(groups)} labels for a pool of {n} rows.")
        return TeacherWindows(p, stop - p, self.teacher_depth(pool, neighbors) if window is None else None)

    def teacher_depth(self, pool: PoolLike, neighbors: Any) -> TeacherDepth | None:
        """The teacher's IVF depth for ``teacher_recall`` (None: no IVF index, ``teacher_recall`` None, or ranks within parts)."""
        if neighbors is None or self.teacher_recall is None or self.rank_scope == "part":
            return None
        p, stop = int(self.rank_window[0]), int(self.rank_window[1])
        return choose_teacher_depth(pool, neighbors, p, stop - p, float(self.teacher_recall), self._seed())

    def block_rows_for(self, state: TeacherWindows, neighbors: Any = None, n_rows: int = 0) -> int:
        """Queries searched at once: 65,536 for the grouped IVF search (its cost per block is reading the lists once), else 8,192."""
        return 65_536 if GroupedIVFSearch.applies(neighbors, n_rows) else 8192

    def partial(self, state: TeacherWindows, blocks: Iterable[Any], pool: PoolLike, neighbors: Any = None) -> WindowRows:
        """The teacher rank windows of the rows of ``blocks`` (contiguous rows of ``pool``), searched in ``pool``.

        ``neighbors`` is what searches: an object with ``search_positions(vectors, k)``
        (a thresher FAISS index, opened where this runs) or None for exact search over ``pool``.
        """
        blocks = list(blocks)
        start = blocks[0].start if blocks else 0
        with teacher_nprobe(neighbors, state.depth):
            window = window_neighbors_of_blocks(pool, blocks, neighbors, state.p, state.m)
        return WindowRows(int(start), window.astype(np.int32 if pool.n_rows < 2**31 else np.int64, copy=False))

    def merge(self, partials: Sequence[WindowRows]) -> WindowRows:
        """The windows of adjacent row ranges, in row order (the ranges must tile one range)."""
        parts = sorted((w for w in partials if len(w.window)), key=lambda w: w.start)
        if not parts:
            return partials[0]
        for a, b in zip(parts[:-1], parts[1:]):
            if a.start + len(a.window) != b.start:
                raise ValueError(f"BatchMiner.merge got rank windows of rows [{a.start}, {a.start + len(a.window)}) then from row {b.start}: "
                                 "they must be adjacent.")
        return WindowRows(parts[0].start, parts[0].window if len(parts) == 1 else np.concatenate([w.window for w in parts]))

    def _select(self, pool: PoolLike, *, budget: int, rng: np.random.Generator, neighbors: Any = None,
                groups: Sequence[Any] | np.ndarray | None = None, window: np.ndarray | None = None) -> Selection:
        state = self.prepare(pool, budget=budget, rng=rng, neighbors=neighbors, groups=groups, window=window)
        if self.two_levels(pool.n_rows):
            if window is not None and self.rank_scope == "part":
                raise ParameterError("BatchMiner takes 'window' (the teacher's ranks among the pool) with rank_scope='pool' only; "
                                     "with rank_scope='part' each part ranks its own rows.")
            if window is not None and np.shape(window) != (pool.n_rows, state.m):
                raise InputDataError(f"'window' must have shape (n_rows, m) = ({pool.n_rows}, {state.m}); got {np.shape(window)}.")
            region = self.index_regions(neighbors, pool.n_rows) if self.rank_scope == "pool" else None
            regions_from = "index IVF lists"
            if region is None:
                model, regions_from = self.region_model(pool), "k-means lists"
                region = np.concatenate([self.assign_regions(model, [block]) for block in pool.iter_blocks(65_536)])
            plan = self.plan_parts(region, groups, regions_from=regions_from)
            results = [self.mine_part(state, part, members, pool, neighbors=neighbors, window=None if window is None else np.asarray(window)[members])
                       for part, members in enumerate(plan.members)]
            return self.finish_parts(state, plan, results, pool, budget=budget, rng=rng)
        if window is None:
            blocks = pool.iter_blocks(self.block_rows_for(state, neighbors, pool.n_rows))
            merged = self.merge([self.partial(state, blocks, pool, neighbors=neighbors)])
        else:
            merged = WindowRows(0, np.asarray(window))
        return self.finish(state, merged, pool, budget=budget, rng=rng, groups=groups)

    def finish(self, state: TeacherWindows, merged: WindowRows, pool: PoolLike, *, budget: int | None = None,
               rng: np.random.Generator | None = None, groups: Sequence[Any] | np.ndarray | None = None) -> Selection:
        """The driver's step, one level: reciprocal graph of the windows, METIS communities, batches (module docstring, steps 2-4).

        ``budget`` (rows, default all) and ``rng`` (default: from ``seed``) as ``select`` passes them.
        """
        p, m, n = state.p, state.m, pool.n_rows
        rng = as_generator(self.seed, OWNER) if rng is None else rng
        window = merged.window
        if merged.start != 0 or window.shape != (n, m):
            raise InputDataError(f"'window' must have shape (n_rows, m) = ({n}, {m}) from row 0; got {window.shape} from row {merged.start}.")
        graph = reciprocal_graph(window)
        group_labels = group_codes(groups, n)
        found: list[np.ndarray] = []
        n_left_out = 0
        for g in np.unique(group_labels):
            members = np.flatnonzero(group_labels == g)
            sub = graph[members][:, members]
            parts = metis_parts(sub, len(members) // self.community_size)
            communities, rest = equal_communities(parts, self.community_size)
            found += [members[c] for c in communities]
            n_left_out += len(rest)
        communities = np.array(found, dtype=np.int64).reshape(len(found), self.community_size)
        ids = pool.ids()
        summary = {
            "partition": "one_level",
            "n_edges": int(graph.nnz // 2),
            "n_isolated_rows": int((np.diff(graph.indptr) == 0).sum()),
            "n_rows_left_out_by_equalising": int(n_left_out),
            "mean_in_community_similarity": _mean(community_similarity(pool, communities)) if self.community_size > 1 else float("nan"),
            "teacher": None if state.depth is None else state.depth.summary(),
        }
        del graph

        def hard(positions: np.ndarray) -> list[list[Any]]:
            return _as_id_lists(_hard_negative_positions(window[positions], self.n_hard_negatives, rng), ids)

        return self._assemble(communities, group_labels[communities[:, 0]], pool, ids, budget=n if budget is None else budget, rng=rng,
                              hard=hard, summary=summary)

    # -- two levels: coarse regions, then METIS inside each part (module b3_partition) -----------------------

    def n_regions(self, n_rows: int) -> int:
        """Coarse regions of a pool of ``n_rows`` rows: ``ceil(n_rows / part_rows)``."""
        return b3_partition.n_coarse_parts(n_rows, self.part_rows)

    def index_regions(self, neighbors: Any, n_rows: int, positions: np.ndarray | None = None) -> np.ndarray | None:
        """Each pool row's region from the IVF lists of ``neighbors`` (an index over the pool's store), or None when it has none.

        ``positions``: the pool is these store positions (a subset); lists are
        weighted by their pool rows. Returns the region per pool row (int32).
        """
        lists = b3_partition.ivf_lists(neighbors)
        if lists is None:
            return None
        centroids, members = lists
        list_of = np.empty(int(neighbors.faiss_index.ntotal), dtype=np.int64)
        for lst, rows in enumerate(members):
            list_of[rows] = lst
        if positions is not None:
            list_of = list_of[positions]
        if len(list_of) != n_rows:
            return None
        region_of = b3_partition.regions_of_lists(centroids, np.bincount(list_of, minlength=len(centroids)), self.n_regions(n_rows), self._seed())
        return region_of[list_of].astype(np.int32)

    def region_model(self, pool: PoolLike) -> b3_partition.Regions:
        """Regions without IVF lists (driver, reads a seeded sample of ``pool`` only): a thread-invariant k-means makes fine lists,
        grouped into regions (:class:`~thresher.selectors.b3_partition.Regions`)."""
        n_regions = self.n_regions(pool.n_rows)
        n_lists = min(b3_partition.MAX_FINE_LISTS, max(b3_partition.MIN_FINE_LISTS, b3_partition.FINE_LISTS_PER_REGION * n_regions))
        sample = b3_partition.coarse_sample(pool.n_rows, max(n_regions, n_lists // 8), self._seed())
        centroids, sizes = b3_partition.fine_lists(pool.take(sample), n_lists, self._seed())
        return b3_partition.Regions(centroids, b3_partition.regions_of_lists(centroids, sizes, n_regions, self._seed()))

    def assign_regions(self, model: b3_partition.Regions, blocks: Iterable[Any]) -> np.ndarray:
        """Region of each row of ``blocks`` (in block order): the region of its nearest fine list."""
        parts = [model.assign(block.vectors) for block in blocks]
        return np.concatenate(parts) if parts else np.empty(0, np.int32)

    def plan_parts(self, region: np.ndarray, groups: Sequence[Any] | np.ndarray | None = None, *,
                   regions_from: str = "k-means lists") -> PartPlan:
        """The parts: non-empty (source group, region) pairs, from each row's region (and group)."""
        n_regions = int(region.max()) + 1 if len(region) else 1
        return b3_partition.plan_parts(region, None if groups is None else group_codes(groups, len(region)), n_regions, regions_from)

    def mine_part(self, state: TeacherWindows, part: int, members: np.ndarray, pool: PoolLike, neighbors: Any = None,
                  window: np.ndarray | None = None, block_rows: int | None = None) -> PartCommunities:
        """One part: its rows' teacher windows, the reciprocal graph inside the part, METIS, communities.

        ``members`` are the part's sorted pool positions. Their windows are ranks in
        the whole ``pool`` (``rank_scope="pool"``: ``window`` when already computed,
        else searched through ``neighbors`` as :meth:`partial` does; entries that leave
        the part are dropped) or among the part's rows (``rank_scope="part"``).
        The search, METIS and the hard negatives take seeds derived from ``seed`` and
        ``part``, so a part's result does not depend on where or with what else it runs.
        """
        members = np.asarray(members, dtype=np.int64)
        if self.rank_scope == "part":
            local = b3_partition.part_rank_windows(pool.take(members), state.p, state.m, derive_seed(self._seed(), "b3-part-ranks", part))
            window = np.where(local >= 0, members[np.maximum(local, 0)], -1)
            n_leaving = 0
        else:
            if window is None:
                with teacher_nprobe(neighbors, state.depth):
                    window = window_of_rows(pool, members, neighbors, state.p, state.m, block_rows=block_rows)
            local, n_leaving = b3_partition.window_inside(members, window)
        graph = reciprocal_graph(local)
        parts = metis_parts(graph, len(members) // self.community_size, seed=derive_seed(self._seed(), "b3-metis", part))
        found, rest = equal_communities(parts, self.community_size)
        communities = members[np.array(found, dtype=np.int64).reshape(len(found), self.community_size)]
        rest = members[rest]
        hard = None
        if self.n_hard_negatives:
            order = np.searchsorted(members, np.concatenate([communities.ravel(), rest]))
            hard = _hard_negative_positions(window[order], self.n_hard_negatives, as_generator(derive_seed(self._seed(), "b3-hard", part)))
        return PartCommunities(
            part=int(part), communities=communities, rest=rest,
            similarity=community_similarity(pool, communities) if self.community_size > 1 else np.full(len(communities), np.nan),
            hard_negatives=hard, n_edges=int(graph.nnz // 2), n_isolated_rows=int((np.diff(graph.indptr) == 0).sum()),
            n_window_entries=int((window >= 0).sum()), n_window_entries_leaving=n_leaving,
        )

    def finish_parts(self, state: TeacherWindows, plan: PartPlan, results: Sequence[PartCommunities], pool: PoolLike, *,
                     budget: int | None = None, rng: np.random.Generator | None = None) -> Selection:
        """The driver's step, two levels: the parts' communities, the leftovers regrouped per group in part order, batches."""
        n = pool.n_rows
        rng = as_generator(self.seed, OWNER) if rng is None else rng
        results = sorted(results, key=lambda r: r.part)
        if [r.part for r in results] != list(range(plan.n_parts)):
            raise ValueError(f"BatchMiner.finish_parts needs one result per part 0..{plan.n_parts - 1}; got parts {[r.part for r in results][:10]}.")
        regrouped, regrouped_group, left = b3_partition.regroup_rests(list(results), plan.group, self.community_size)
        communities = np.concatenate([r.communities for r in results] + [regrouped])
        community_group = np.concatenate([np.full(len(r.communities), g, dtype=np.int64) for r, g in zip(results, plan.group)] + [regrouped_group])
        similarity = np.concatenate([r.similarity for r in results]
                                    + [community_similarity(pool, regrouped) if self.community_size > 1 and len(regrouped) else np.empty(0)])
        n_entries = sum(r.n_window_entries for r in results)
        summary = {
            "partition": "two_level",
            "n_parts": plan.n_parts,
            "n_regions": plan.n_regions,
            "regions_from": plan.regions_from,
            "largest_part_rows": max(len(m) for m in plan.members),
            "n_edges": sum(r.n_edges for r in results),
            "n_isolated_rows": sum(r.n_isolated_rows for r in results),
            "rank_scope": self.rank_scope,
            # with rank_scope="part" no entry can leave its part: the share is of "pool" ranks only
            "window_entries_leaving_parts": (sum(r.n_window_entries_leaving for r in results) / n_entries if n_entries else 0.0)
                                            if self.rank_scope == "pool" else None,
            "n_communities_of_leftovers": len(regrouped),
            "n_rows_left_out_by_equalising": int(len(left)),
            "mean_in_community_similarity": _mean(similarity),
            "teacher": None if state.depth is None else state.depth.summary(),
        }
        ids = pool.ids()
        hard = None
        if self.n_hard_negatives:
            hard_of = np.full((n, self.n_hard_negatives), -1, dtype=np.int64)
            for r in results:
                hard_of[r.rows] = r.hard_negatives

            def hard(positions: np.ndarray) -> list[list[Any]]:
                return _as_id_lists(hard_of[positions], ids)

        return self._assemble(communities, community_group, pool, ids, budget=n if budget is None else budget, rng=rng, hard=hard,
                              summary=summary)

    # -- batches from communities (both ways) ---------------------------------------------------------------

    def _assemble(self, communities: np.ndarray, community_group: np.ndarray, pool: PoolLike, ids: np.ndarray, *, budget: int,
                  rng: np.random.Generator, hard: Any, summary: dict[str, Any]) -> Selection:
        """Batches of ``batch_size / K`` whole communities (shape (n, K)) of one group each, shuffled with ``rng``; the Selection."""
        p, stop, n = int(self.rank_window[0]), int(self.rank_window[1]), pool.n_rows
        per_batch = self.batch_size // self.community_size
        batches: list[np.ndarray] = []
        n_dropped_communities = 0
        for g in np.unique(community_group):
            members = np.flatnonzero(community_group == g)
            members = members[rng.permutation(len(members))]
            for lo in range(0, len(members), per_batch):
                chunk = members[lo : lo + per_batch]
                if len(chunk) < per_batch and self.drop_last:
                    n_dropped_communities += len(chunk)
                    continue
                batches.append(chunk)
        batch_order = rng.permutation(len(batches))
        batches = [batches[b] for b in batch_order]
        n_keep_batches = min(len(batches), max(1, -(-budget // self.batch_size))) if budget < n else len(batches)
        batches = batches[:n_keep_batches]
        if not batches:
            raise ParameterError(f"No complete batch of {self.batch_size} rows could be formed from {n} rows; lower batch_size or pass drop_last=False.")

        size = self.community_size
        chosen = np.concatenate(batches)
        positions = communities[chosen].ravel()
        lengths = np.array([len(b) * size for b in batches])
        batch_col = np.repeat(np.arange(len(batches)), lengths)
        community_col = np.repeat(chosen, size)
        position_col = np.arange(len(positions)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        columns: dict[str, Any] = {"batch": batch_col, "community": community_col, "position": position_col}
        if self.n_hard_negatives:
            columns["hard_negatives"] = hard(positions)
        b3_batches = [communities[b].ravel() for b in batches]
        shuffled = positions[rng.permutation(len(positions))]
        random_batches = [shuffled[i : i + len(b)] for i, b in zip(np.cumsum([0] + [len(b) for b in b3_batches[:-1]]), b3_batches)]
        summary = {
            "n_rows": n,
            **summary,
            "n_communities": len(communities),
            "n_batches": len(batches),
            "n_rows_batched": int(len(positions)),
            "n_rows_left_out": int(n - len(positions)),
            "n_communities_dropped_with_last_batch": int(n_dropped_communities),
            "mean_in_batch_similarity": mean_in_batch_similarity(pool, b3_batches),
            "mean_in_batch_similarity_random": mean_in_batch_similarity(pool, random_batches),
        }
        return Selection(positions=positions, ids=ids[positions], selector=self.name,
                         params={**self.get_params(), "rank_window": [p, stop]}, columns=columns, seed=self.seed, summary=summary)


def group_codes(groups: Sequence[Any] | np.ndarray | None, n: int) -> np.ndarray:
    """Source labels as codes 0..g-1 (sorted label order); all 0 without groups."""
    if groups is None:
        return np.zeros(n, dtype=np.int64)
    return np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)[1].astype(np.int64).reshape(-1)


def _mean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()) if len(values) else float("nan")


def _hard_negative_positions(window: np.ndarray, n_hard: int, rng: np.random.Generator) -> np.ndarray:
    """Per row, ``n_hard`` positions drawn without replacement from its teacher rank window (top p already excluded); -1 where missing."""
    keys = rng.random(window.shape)
    keys[window < 0] = np.inf
    return np.take_along_axis(window, np.argsort(keys, axis=1)[:, :n_hard], axis=1)


def _as_id_lists(picks: np.ndarray, ids: np.ndarray) -> list[list[Any]]:
    """Per row, the ids of its valid (>= 0) picked positions."""
    return [[ids[j] for j in row if j >= 0] for row in picks.tolist()]
