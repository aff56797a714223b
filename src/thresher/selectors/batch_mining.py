"""B3 batch mining: batches rich in in-batch negatives (Thirukovalluru et al. 2025, arXiv 2505.11293).

Contrastive training takes its negatives from the batch. B3 builds batches
whose members are strong negatives for each other:

1. A teacher embedding ranks, for every example, all others by similarity
   (here through the FAISS index, or exact search for small pools). Every
   row is a query, so an IVF-Flat index is searched list by list, all the
   queries probing a list in one matrix product (:class:`GroupedIVFSearch`).
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

from collections.abc import Sequence
from typing import Any

import numpy as np

from thresher.exceptions import InputDataError, ParameterError, parameter_error
from thresher.selectors._base import BaseSelector, PoolLike, Selection
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
    from thresher.stores.index import exact_search

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
        parts.append(_drop_self(found, positions)[:, p : p + m])
    return np.concatenate(parts) if parts else np.empty((0, m), dtype=np.int64)


class GroupedIVFSearch:
    """Search an IVF-Flat index with many queries at once, one matrix product per inverted list.

    FAISS scans the probed lists query by query, reading each list from memory
    once per query; when every pool row is a query (the teacher ranks of B3), the
    queries of a block that probe a list are instead scored against its vectors
    (the index's own codes, no copy) in one BLAS product and the best ``k`` kept
    per query. Same probed lists and exact scores within them as
    ``index.search`` (up to the order of ties), many times faster.
    """

    def __init__(self, index: Any):
        import faiss

        self.ivf = faiss.extract_index_ivf(index.faiss_index)
        self.metric = index.metric
        nlist, dim, lists = self.ivf.nlist, self.ivf.d, self.ivf.invlists
        self.centroids = self.ivf.quantizer.reconstruct_n(0, nlist)
        self.ids, self.codes = [], []
        for lst in range(nlist):
            size = lists.list_size(lst)
            self.ids.append(faiss.rev_swig_ptr(lists.get_ids(lst), size).copy() if size else np.empty(0, np.int64))
            self.codes.append(faiss.rev_swig_ptr(lists.get_codes(lst), size * dim * 4).view(np.float32).reshape(size, dim) if size else None)

    @staticmethod
    def applies(neighbors: Any, n_rows: int) -> bool:
        """Whether ``neighbors`` is a thresher IVF-Flat index over these ``n_rows`` rows."""
        import faiss

        index = getattr(neighbors, "faiss_index", None)
        if index is None or index.ntotal != n_rows:
            return False
        return isinstance(faiss.downcast_index(index), faiss.IndexIVFFlat)

    @classmethod
    def of(cls, neighbors: Any, n_rows: int) -> GroupedIVFSearch | None:
        """The grouped search for ``neighbors`` when it :meth:`applies`, else None."""
        return cls(neighbors) if cls.applies(neighbors, n_rows) else None

    def _score(self, queries: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """Scores, higher is nearer: inner products, or minus squared L2 distances."""
        s = queries @ vectors.T
        if self.metric == "l2":
            s *= 2
            s -= np.einsum("ij,ij->i", queries, queries)[:, None]
            s -= np.einsum("ij,ij->i", vectors, vectors)[None, :]
        return s

    def _probes(self, queries: np.ndarray, nprobe: int) -> np.ndarray:
        coarse = self._score(queries, self.centroids)
        return np.argmax(coarse, axis=1)[:, None] if nprobe == 1 else np.argpartition(-coarse, nprobe - 1, axis=1)[:, :nprobe]

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        """Positions of the ``k`` nearest rows of each query, best first (-1 where fewer were found)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        nq, nprobe = len(queries), self.ivf.nprobe
        probes = np.concatenate([self._probes(queries[lo : lo + 8192], nprobe) for lo in range(0, nq, 8192)]).ravel()
        query_of = np.repeat(np.arange(nq), nprobe)
        slot_of = np.tile(np.arange(nprobe) * k, nq)
        by_list = np.argsort(probes, kind="stable")
        cuts = np.searchsorted(probes[by_list], np.arange(self.ivf.nlist + 1))
        best_s = np.full((nq, nprobe * k), -np.inf, dtype=np.float32)
        best_i = np.full((nq, nprobe * k), -1, dtype=np.int64)
        for lst in np.flatnonzero(np.diff(cuts)):
            rows = self.ids[lst]
            if len(rows) == 0:
                continue
            pairs = by_list[cuts[lst] : cuts[lst + 1]]
            qs = query_of[pairs]
            s = self._score(queries[qs], self.codes[lst])
            kk = min(k, len(rows))
            top = np.argpartition(-s, kk - 1, axis=1)[:, :kk] if kk < len(rows) else np.broadcast_to(np.arange(kk), (len(qs), kk))
            cols = slot_of[pairs][:, None] + np.arange(kk)
            best_s[qs[:, None], cols] = np.take_along_axis(s, top, axis=1)
            best_i[qs[:, None], cols] = rows[top]
        order = np.argsort(-best_s, axis=1, kind="stable")[:, :k]
        found = np.take_along_axis(best_i, order, axis=1)
        found[np.take_along_axis(best_s, order, axis=1) == -np.inf] = -1
        return found


def _drop_self(found: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Remove each row's own position from its neighbour list (or its last entry when self is absent)."""
    is_self = found == positions[:, None]
    has_self = is_self.any(axis=1)
    drop = np.where(has_self, is_self.argmax(axis=1), found.shape[1] - 1)
    keep = np.ones_like(found, dtype=bool)
    keep[np.arange(len(found)), drop] = False
    return found[keep].reshape(len(found), found.shape[1] - 1)


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


class BatchMiner(BaseSelector):
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
    """

    name = "b3"

    def __init__(self, *, batch_size: int = 1024, community_size: int = 32, rank_window: tuple[int, int] = (30, 130),
                 n_hard_negatives: int = 0, drop_last: bool = True, seed: int = 0):
        self.batch_size = batch_size
        self.community_size = community_size
        self.rank_window = rank_window
        self.n_hard_negatives = n_hard_negatives
        self.drop_last = drop_last
        self.seed = seed

    def _validate_params(self) -> None:
        for name in ("batch_size", "community_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise parameter_error(OWNER, name, "an int >= 1", value)
        if self.batch_size % self.community_size:
            raise ParameterError(
                f"The 'batch_size' parameter of BatchMiner ({self.batch_size}) must be a multiple of 'community_size' ({self.community_size})."
            )
        window = tuple(self.rank_window) if isinstance(self.rank_window, (tuple, list)) else None
        if window is None or len(window) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in window) or window[0] < 0 or window[1] <= window[0]:
            raise parameter_error(OWNER, "rank_window", "a pair (p, p + m) of ints with 0 <= p < p + m", self.rank_window)
        if isinstance(self.n_hard_negatives, bool) or not isinstance(self.n_hard_negatives, (int, np.integer)) or self.n_hard_negatives < 0:
            raise parameter_error(OWNER, "n_hard_negatives", "an int >= 0", self.n_hard_negatives)
        width = int(window[1]) - int(window[0])
        if self.n_hard_negatives > width:
            # The negatives are drawn from the rank window without replacement: more than its width cannot be had.
            raise ParameterError(
                f"The 'n_hard_negatives' parameter of BatchMiner ({self.n_hard_negatives}) must be at most the width of "
                f"'rank_window' {tuple(int(v) for v in window)} (m = {width}): hard negatives are drawn from that window."
            )

    def _select(self, pool: PoolLike, *, budget: int, rng: np.random.Generator, neighbors: Any = None,
                groups: Sequence[Any] | np.ndarray | None = None, window: np.ndarray | None = None) -> Selection:
        p, stop = int(self.rank_window[0]), int(self.rank_window[1])
        m = stop - p
        n = pool.n_rows
        if n < self.batch_size:
            raise ParameterError(f"The pool has {n} rows, fewer than one batch (batch_size={self.batch_size}).")
        if stop >= n:
            raise ParameterError(f"The 'rank_window' of BatchMiner ends at rank {stop}, but the pool has only {n} rows; p + m must be < the pool size.")
        if groups is not None and len(groups) != n:
            raise InputDataError(f"'groups' has {len(groups)} labels for a pool of {n} rows.")
        if window is None:
            window = window_neighbors(pool, neighbors, p, m)
        elif window.shape != (n, m):
            raise InputDataError(f"'window' must have shape (n_rows, m) = ({n}, {m}); got {window.shape}.")
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
