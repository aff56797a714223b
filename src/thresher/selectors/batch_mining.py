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
4. A batch is ``batch_size / K`` whole communities; community order and batch
   order are shuffled with the seed; an incomplete last batch is dropped
   unless asked otherwise.

The output is in batch order with ``batch``, ``community`` and ``position``
(within the batch) columns: a trainer streams it without shuffling.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from thresher.exceptions import InputDataError, ParameterError
from thresher.params import Check, Interval
from thresher.rng import as_generator
from thresher.search import GroupedIVFSearch, drop_self, exact_search
from thresher.selectors._base import SEED, BlockwiseSelector, PoolLike, Selection
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


def window_neighbors_of_blocks(pool: PoolLike, blocks: Any, neighbors: Any, p: int, m: int) -> np.ndarray:
    """:func:`window_neighbors` for the given blocks of ``pool`` only (a job's partition), rows in block order."""
    from thresher.selectors._base import ArrayPool

    k = p + m + 1
    searched = pool.vectors if isinstance(pool, ArrayPool) else pool
    grouped = GroupedIVFSearch.of(neighbors, pool.n_rows)
    parts = []
    for block in blocks:
        positions = np.arange(block.start, block.start + len(block.ids), dtype=np.int64)
        if neighbors is None:
            _, found = exact_search(searched, block.vectors, k, metric="ip")
        elif grouped is not None:
            found = grouped.search(block.vectors, k)
        else:
            _, found = neighbors.search_positions(block.vectors, k)
        parts.append(drop_self(found, positions)[:, p : p + m])
    return np.concatenate(parts) if parts else np.empty((0, m), dtype=np.int64)


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


def metis_parts(graph: Any, n_parts: int) -> np.ndarray:
    """METIS k-way partition of ``graph`` (scipy CSR) into ``n_parts`` parts; part id per node."""
    import pymetis

    if n_parts <= 1:
        return np.zeros(graph.shape[0], dtype=np.int64)
    _, membership = pymetis.part_graph(n_parts, xadj=graph.indptr.astype(np.int64), adjncy=graph.indices.astype(np.int64))
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


def mean_in_batch_similarity(pool: PoolLike, batches: Sequence[np.ndarray]) -> float:
    """Mean cosine between distinct members of the same batch, averaged over batches."""
    values = []
    for members in batches:
        if len(members) < 2:
            continue
        rows = np.sort(members)
        x = normalize_rows(pool.take(rows), what="the pool's embeddings", positions=rows)  # a zero row has no cosine: refused, named
        s = x.sum(axis=0)
        values.append((s @ s - len(x)) / (len(x) * (len(x) - 1)))
    return float(np.mean(values)) if values else float("nan")


@dataclass(frozen=True)
class TeacherWindows:
    """What every block of B3 needs: the teacher rank window ``[p, p + m)``."""

    p: int
    m: int


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
    seed : int, default 0
        Shuffles community and batch order, and samples hard negatives.

    ``select(pool, budget=1.0, neighbors=index, groups=None, window=None)``:
    ``neighbors`` is a thresher FAISS index over the pool (None: exact search);
    ``groups`` a per-row source label, so each batch comes from one source;
    ``window`` the teacher rank windows when already computed (by a job). The budget is
    the share of the pool to batch (1.0 = all).

    Distributed protocol (:class:`~thresher.selectors._base.BlockwiseSelector`):
    the teacher search is the block-wise part. ``prepare`` checks the pool and
    gives the :class:`TeacherWindows`; ``partial`` searches the windows of a
    block's rows (``neighbors=``: the index opened where it runs); ``merge``
    stitches adjacent row ranges; ``finish`` builds the graph and the batches.
    """

    name = "b3"
    _parameter_constraints = {
        "batch_size": [Interval(int, 1, None)],
        "community_size": [Interval(int, 1, None)],
        "rank_window": [Check(_rank_window, "a pair (p, p + m) of ints with 0 <= p < p + m")],
        "n_hard_negatives": [Interval(int, 0, None)],
        "drop_last": ["boolean"],
        "seed": SEED,
    }

    def __init__(self, *, batch_size: int = 1024, community_size: int = 32, rank_window: tuple[int, int] = (30, 130),
                 n_hard_negatives: int = 0, drop_last: bool = True, seed: int = 0):
        self.batch_size = batch_size
        self.community_size = community_size
        self.rank_window = rank_window
        self.n_hard_negatives = n_hard_negatives
        self.drop_last = drop_last
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

    # -- the distributed protocol (BlockwiseSelector): the teacher's rank windows are the block-wise part ---------

    def prepare(self, pool: PoolLike, *, budget: int, rng: np.random.Generator | None = None, neighbors: Any = None,
                groups: Sequence[Any] | np.ndarray | None = None, window: np.ndarray | None = None) -> TeacherWindows:
        """Check the pool against the settings; the state is the rank window ``[p, p + m)``."""
        p, stop = int(self.rank_window[0]), int(self.rank_window[1])
        n = pool.n_rows
        if n < self.batch_size:
            raise ParameterError(f"The pool has {n} rows, fewer than one batch (batch_size={self.batch_size}).")
        if stop >= n:
            raise ParameterError(f"The 'rank_window' of BatchMiner ends at rank {stop}, but the pool has only {n} rows; p + m must be < the pool size.")
        if groups is not None and len(groups) != n:
            raise InputDataError(f"'groups' has {len(groups)} labels for a pool of {n} rows.")
        return TeacherWindows(p, stop - p)

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
        state = self.prepare(pool, budget=budget, rng=rng, neighbors=neighbors, groups=groups)
        if window is None:
            blocks = pool.iter_blocks(self.block_rows_for(state, neighbors, pool.n_rows))
            merged = self.merge([self.partial(state, blocks, pool, neighbors=neighbors)])
        else:
            merged = WindowRows(0, np.asarray(window))
        return self.finish(state, merged, pool, budget=budget, rng=rng, groups=groups)

    def finish(self, state: TeacherWindows, merged: WindowRows, pool: PoolLike, *, budget: int | None = None,
               rng: np.random.Generator | None = None, groups: Sequence[Any] | np.ndarray | None = None) -> Selection:
        """The driver's step: reciprocal graph of the windows, METIS communities, batches (module docstring, steps 2-4).

        ``budget`` (rows, default all) and ``rng`` (default: from ``seed``) as ``select`` passes them.
        """
        p, m, n = state.p, state.m, pool.n_rows
        stop = p + m
        budget = n if budget is None else budget
        rng = as_generator(self.seed, OWNER) if rng is None else rng
        window = merged.window
        if merged.start != 0 or window.shape != (n, m):
            raise InputDataError(f"'window' must have shape (n_rows, m) = ({n}, {m}) from row 0; got {window.shape} from row {merged.start}.")
        graph = reciprocal_graph(window)
        group_labels = np.zeros(n, dtype=np.int64) if groups is None else np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)[1]
        communities: list[np.ndarray] = []
        n_left_out = 0
        for g in np.unique(group_labels):
            members = np.flatnonzero(group_labels == g)
            sub = graph[members][:, members]
            parts = metis_parts(sub, len(members) // self.community_size)
            found, rest = equal_communities(parts, self.community_size)
            communities += [members[c] for c in found]
            n_left_out += len(rest)
        per_batch = self.batch_size // self.community_size
        community_group = np.array([group_labels[c[0]] for c in communities], dtype=np.int64)
        batches: list[list[int]] = []
        n_dropped_communities = 0
        for g in np.unique(community_group):
            ids = np.flatnonzero(community_group == g)
            ids = ids[rng.permutation(len(ids))]
            for lo in range(0, len(ids), per_batch):
                chunk = ids[lo : lo + per_batch]
                if len(chunk) < per_batch and self.drop_last:
                    n_dropped_communities += len(chunk)
                    continue
                batches.append(chunk.tolist())
        batch_order = rng.permutation(len(batches))
        batches = [batches[b] for b in batch_order]
        n_keep_batches = min(len(batches), max(1, -(-budget // self.batch_size))) if budget < n else len(batches)
        batches = batches[:n_keep_batches]
        if not batches:
            raise ParameterError(f"No complete batch of {self.batch_size} rows could be formed from {n} rows; lower batch_size or pass drop_last=False.")

        positions = np.concatenate([communities[c] for batch in batches for c in batch])
        batch_col = np.concatenate([np.full(sum(len(communities[c]) for c in batch), b) for b, batch in enumerate(batches)])
        community_col = np.concatenate([np.full(len(communities[c]), c) for batch in batches for c in batch])
        position_col = np.concatenate([np.arange(sum(len(communities[c]) for c in batch)) for batch in batches])
        columns: dict[str, Any] = {"batch": batch_col, "community": community_col, "position": position_col}
        ids = pool.ids()
        if self.n_hard_negatives:
            columns["hard_negatives"] = _hard_negatives(window[positions], self.n_hard_negatives, rng, ids)
        b3_batches = [np.concatenate([communities[c] for c in batch]) for batch in batches]
        shuffled = positions[rng.permutation(len(positions))]
        random_batches = [shuffled[i : i + len(b)] for i, b in zip(np.cumsum([0] + [len(b) for b in b3_batches[:-1]]), b3_batches)]
        summary = {
            "n_rows": n,
            "n_edges": int(graph.nnz // 2),
            "n_isolated_rows": int((np.diff(graph.indptr) == 0).sum()),
            "n_communities": len(communities),
            "n_batches": len(batches),
            "n_rows_batched": int(len(positions)),
            "n_rows_left_out": int(n - len(positions)),
            "n_rows_left_out_by_equalising": int(n_left_out),
            "n_communities_dropped_with_last_batch": int(n_dropped_communities),
            "mean_in_batch_similarity": mean_in_batch_similarity(pool, b3_batches),
            "mean_in_batch_similarity_random": mean_in_batch_similarity(pool, random_batches),
        }
        return Selection(positions=positions, ids=ids[positions], selector=self.name,
                         params={**self.get_params(), "rank_window": [p, stop]}, columns=columns, seed=self.seed, summary=summary)


def _hard_negatives(window: np.ndarray, n_hard: int, rng: np.random.Generator, ids: np.ndarray) -> list[list[Any]]:
    """Per row, ``n_hard`` ids drawn without replacement from its teacher rank window (top p already excluded)."""
    keys = rng.random(window.shape)
    keys[window < 0] = np.inf
    picks = np.take_along_axis(window, np.argsort(keys, axis=1)[:, :n_hard], axis=1)
    return [[ids[j] for j in row if j >= 0] for row in picks.tolist()]
