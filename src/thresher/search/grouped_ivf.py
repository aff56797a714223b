"""IVF-Flat search with many queries at once: one matrix product per inverted list.

An inverted file (Sivic & Zisserman, ICCV 2003; Jégou, Douze & Schmid, IEEE
TPAMI 2011) cuts the rows into ``nlist`` lists by their nearest coarse
centroid; a query scans only the ``nprobe`` lists whose centroids are nearest
to it. FAISS's ``IndexIVFFlat`` scans the probed lists query by query, reading
each list from memory once per query. When every row is also a query (B3's
teacher ranks, SMOTE's same-class neighbours), the queries of a block that
probe a list are instead scored against its vectors in one BLAS product and
the best ``k`` kept per query: the same probed lists and exact scores within
them as ``IndexIVFFlat.search`` (up to near-ties), many times faster.

The float32 BLAS products only find candidates: the lists a query probes and
its ``k`` nearest rows within them, in order, are decided from float64 keys
with a fixed summation order, ties to the lower list or position
(:mod:`thresher.search.of_record`), so a search gives the same bits whatever
the BLAS thread count (issue 19).

:meth:`GroupedIVFSearch.from_index` searches a built FAISS IVF-Flat index (its
own centroids, lists and codes, not copied); :meth:`GroupedIVFSearch.train`
trains the coarse quantiser by k-means on a seeded sample of the rows searched
(thread-invariant, :mod:`thresher.search.kmeans`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from thresher.rng import as_generator
from thresher.search import of_record
from thresher.search.checks import Metric
from thresher.threads import one_blas_thread

#: Queries whose probes are chosen at once when the index comes from FAISS (one (block x nlist) product).
PROBE_BLOCK_ROWS = 8192
#: Deepest search (lists probed per query) this class takes over from FAISS. Each query keeps nprobe x k
#: candidates and sorts them, where FAISS keeps a heap of k: measured at 1M rows (IVF4096,Flat, k = 131,
#: 10k queries), 1.2 s against FAISS's 1.7 s at nprobe 8, but 28.9 s against 4.7 s at nprobe 32 (the
#: auto index's default depth, nlist / 32, is at least 16).
MAX_NPROBE = 8
#: Memory of a search's candidate lists (queries x nprobe x (k + TIE_MARGIN), a float32 key, an int64 position and an int64
#: column each, and their sorted copies); larger searches are chunked.
CANDIDATE_BYTES = 512 << 20
#: Largest mean per-list product (list rows x queries probing it) searched with BLAS on one thread.
SMALL_PRODUCT_ELEMENTS = 1 << 20

#: Candidates kept per query and list beyond the k nearest in float32, for rows whose float32 keys tie with the k-th
#: within rounding; a query with more such ties in a list is decided list by list in float64 instead.
TIE_MARGIN = 8


class GroupedIVFSearch:
    """An IVF-Flat search over fixed lists, many queries at once.

    Parameters
    ----------
    centroids : ndarray of shape (nlist, dim), float32
        The coarse centroids.
    list_positions : list of ndarray of int64
        Per list, the positions of its rows among the searched rows.
    list_vectors : list of ndarray of shape (n_list_rows, dim), float32, or None for an empty list
        Per list, its rows' vectors.
    metric : {"ip", "l2"}
        Inner product (higher is nearer) or squared Euclidean distance (lower is nearer).
    nprobe : int
        Lists scanned per query (settable: SMOTE raises it until a recall target is met).
    probe_block_rows : int or None
        Queries whose probes are chosen in one product (None: all of a search at once).

    Use :meth:`from_index`, :meth:`of` or :meth:`train` to build one.
    """

    def __init__(self, centroids: np.ndarray, list_positions: list[np.ndarray], list_vectors: list[np.ndarray | None], *,
                 metric: Metric, nprobe: int = 1, probe_block_rows: int | None = PROBE_BLOCK_ROWS):
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.nlist = len(self.centroids)
        self.list_positions = list_positions
        self.list_vectors = list_vectors
        self.metric = metric
        self.nprobe = nprobe
        self.probe_block_rows = probe_block_rows
        self._centroid_norms = np.einsum("ij,ij->i", self.centroids, self.centroids)
        self._list_norms = [None if v is None else np.einsum("ij,ij->i", v, v) for v in list_vectors] if metric == "l2" else None
        self._max_length: float | None = None

    # -- building ----------------------------------------------------------------------------------

    @classmethod
    def from_index(cls, index: Any) -> GroupedIVFSearch:
        """The grouped search of a thresher :class:`~thresher.stores.index.FaissIndex` (or a raw FAISS index) of type IVF-Flat.

        The lists' codes are read in place (no copy); ``nprobe`` is the index's own.
        """
        import faiss

        raw = getattr(index, "faiss_index", index)
        metric = getattr(index, "metric", None) or ("ip" if raw.metric_type == faiss.METRIC_INNER_PRODUCT else "l2")
        ivf = faiss.extract_index_ivf(raw)
        nlist, dim, lists = ivf.nlist, ivf.d, ivf.invlists
        positions, vectors = [], []
        for lst in range(nlist):
            size = lists.list_size(lst)
            positions.append(faiss.rev_swig_ptr(lists.get_ids(lst), size).copy() if size else np.empty(0, np.int64))
            vectors.append(faiss.rev_swig_ptr(lists.get_codes(lst), size * dim * 4).view(np.float32).reshape(size, dim) if size else None)
        return cls(ivf.quantizer.reconstruct_n(0, nlist), positions, vectors, metric=metric, nprobe=ivf.nprobe)

    @staticmethod
    def applies(neighbors: Any, n_rows: int) -> bool:
        """Whether ``neighbors`` is a thresher IVF-Flat index over these ``n_rows`` rows searched at most
        :data:`MAX_NPROBE` lists deep (deeper, FAISS's own search is faster)."""
        import faiss

        index = getattr(neighbors, "faiss_index", None)
        if index is None or index.ntotal != n_rows:
            return False
        inner = faiss.downcast_index(index)
        return isinstance(inner, faiss.IndexIVFFlat) and inner.nprobe <= MAX_NPROBE

    @classmethod
    def of(cls, neighbors: Any, n_rows: int) -> GroupedIVFSearch | None:
        """The grouped search of ``neighbors`` when it :meth:`applies`, else None."""
        return cls.from_index(neighbors) if cls.applies(neighbors, n_rows) else None

    @classmethod
    def train(cls, vectors: np.ndarray, nlist: int, seed: int, *, n_train: int, assign_block_rows: int) -> GroupedIVFSearch:
        """An L2 IVF-Flat search over ``vectors`` (n, dim) float32, its quantiser trained here.

        The centroids are 10 k-means iterations on ``n_train`` rows drawn with
        ``seed`` (:func:`thresher.search.kmeans.train_centroids`, L2); each row
        joins the list of its nearest centroid (chosen ``assign_block_rows``
        rows at a time), as ``IndexIVFFlat.add`` does, near-ties decided in
        float64: the lists are the same whatever the thread count (issue 19).
        Searches choose their probes all at once; ``nprobe`` starts at 1.
        """
        from thresher.search.kmeans import nearest_centroids, train_centroids

        n = len(vectors)
        sample = np.sort(as_generator(seed, "GroupedIVFSearch").choice(n, size=n_train, replace=False))
        centroids = train_centroids(vectors[sample], nlist, metric="l2", seed=seed, max_points_per_centroid=None)
        lists = np.concatenate([nearest_centroids(vectors[lo : lo + assign_block_rows], centroids, metric="l2")
                                for lo in range(0, n, assign_block_rows)]) if n else np.empty(0, np.int64)
        members = np.argsort(lists, kind="stable")
        bounds = np.searchsorted(lists[members], np.arange(nlist + 1))
        positions = [members[bounds[i] : bounds[i + 1]] for i in range(nlist)]
        ordered = vectors[members]
        chunks = [ordered[bounds[i] : bounds[i + 1]] if bounds[i + 1] > bounds[i] else None for i in range(nlist)]
        return cls(centroids, positions, chunks, metric="l2", nprobe=1, probe_block_rows=None)

    # -- searching ---------------------------------------------------------------------------------

    def _keys(self, queries: np.ndarray, vectors: np.ndarray, vector_norms: np.ndarray | None, query_norms: np.ndarray | None) -> np.ndarray:
        """Sort keys of queries x vectors, smaller is nearer: minus inner products, or squared distances
        (without ``query_norms``: squared distances less each query's constant norm, which ranks the same)."""
        keys = queries @ vectors.T
        if self.metric == "ip":
            np.negative(keys, out=keys)
            return keys
        keys *= -2
        if query_norms is not None:
            keys += query_norms[:, None]
        keys += vector_norms[None, :]
        return keys

    def probes(self, queries: np.ndarray, nprobe: int) -> np.ndarray:
        """The ``nprobe`` lists nearest each query, shape (n_queries, min(nprobe, nlist)), nearest first.

        Decided as :func:`~thresher.search.exact_search` over the centroids (float64 keys, ties to the lower list).
        """
        from thresher.search.exact import exact_search

        return exact_search(self.centroids, queries, min(nprobe, self.nlist), metric=self.metric, block_rows=max(1, self.nlist))[1]

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        """Positions of the ``k`` nearest rows of each query, best first (-1 where fewer were found).

        Queries are searched in chunks whose candidate lists (queries x nprobe x (k + TIE_MARGIN)) fit :data:`CANDIDATE_BYTES`.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        chunk = max(1, CANDIDATE_BYTES // (min(self.nprobe, self.nlist) * (k + TIE_MARGIN) * 40))
        if len(queries) > chunk:
            return np.concatenate([self._search(queries[lo : lo + chunk], k) for lo in range(0, len(queries), chunk)])
        return self._search(queries, k)

    def _search(self, queries: np.ndarray, k: int) -> np.ndarray:
        nq, nprobe = len(queries), min(self.nprobe, self.nlist)
        block = self.probe_block_rows or max(1, nq)
        probes = np.concatenate([self.probes(queries[lo : lo + block], nprobe) for lo in range(0, nq, block)]) \
            if nq else np.empty((0, nprobe), np.int64)
        width = k + TIE_MARGIN
        query_of = np.repeat(np.arange(nq), nprobe)
        slot_of = np.tile(np.arange(nprobe) * width, nq)
        flat = probes.ravel()
        by_list = np.argsort(flat, kind="stable")
        cuts = np.searchsorted(flat[by_list], np.arange(self.nlist + 1))
        best_keys = np.full((nq, nprobe * width), np.inf, dtype=np.float32)
        best_pos = np.full((nq, nprobe * width), -1, dtype=np.int64)
        best_col = np.zeros((nq, nprobe * width), dtype=np.int64)
        query_norms = np.einsum("ij,ij->i", queries, queries) if self.metric == "l2" else None
        delta = of_record.error_bounds(of_record.norms(queries), self._max_row_length(), queries.shape[1], self.metric)
        overflow = np.zeros(nq, dtype=bool)
        with one_blas_thread(self._small_products(nq * nprobe)):
            for lst in np.flatnonzero(np.diff(cuts)):
                rows = self.list_positions[lst]
                if len(rows) == 0:
                    continue
                pairs = by_list[cuts[lst] : cuts[lst + 1]]
                qs = query_of[pairs]
                keys = self._keys(queries[qs], self.list_vectors[lst], None if query_norms is None else self._list_norms[lst],
                                  None if query_norms is None else query_norms[qs])
                if len(rows) <= width:
                    top = np.broadcast_to(np.arange(len(rows)), keys.shape)
                else:
                    # the width nearest in float32, and a check that no row left out is within 2 delta of the k-th
                    part = np.argpartition(keys, [k - 1, width], axis=1)
                    kth, next_out = (np.take_along_axis(keys, part[:, [i]], axis=1)[:, 0].astype(np.float64) for i in (k - 1, width))
                    overflow[qs[next_out <= kth + 2 * delta[qs]]] = True
                    top = part[:, :width]
                cols = slot_of[pairs][:, None] + np.arange(top.shape[1])
                best_keys[qs[:, None], cols] = np.take_along_axis(keys, top, axis=1)
                best_pos[qs[:, None], cols] = rows[top]
                best_col[qs[:, None], cols] = top
        slots = _nearest_slots(best_keys, k, delta)
        keys32 = np.take_along_axis(best_keys, slots, axis=1)
        found = of_record.decide_sorted_top_k(
            keys32, np.take_along_axis(best_pos, slots, axis=1), delta, k,
            lambda q, j: self._keys_of_record(queries, q, probes[q, slots[q, j] // width], best_col[q, slots[q, j]]))
        if overflow.any():  # more near-ties at a list's k-th place than TIE_MARGIN: decided list by list (rare)
            found[overflow] = self._search_of_record(queries[overflow], probes[overflow], delta[overflow], k)
        return found

    def _small_products(self, n_pairs: int) -> bool:
        """Whether a search's per-list products are small enough that BLAS threads cost more than they give: the mean
        list's rows times the queries probing it (``n_pairs`` query-list pairs in all) at most :data:`SMALL_PRODUCT_ELEMENTS`
        (IVF256 over 50k rows, 2,000 queries at 8 probes: 0.78 s with 2 BLAS threads, 0.35 s with 1; measured on 2 cores)."""
        n_rows = sum(len(rows) for rows in self.list_positions)
        return (n_rows / max(1, self.nlist)) * (n_pairs / max(1, self.nlist)) <= SMALL_PRODUCT_ELEMENTS

    def _search_of_record(self, queries: np.ndarray, probes: np.ndarray, delta: np.ndarray, k: int) -> np.ndarray:
        """The slow, exact way: each probed list folded into a running top ``k`` of float64 keys (:func:`of_record.record_tile`)."""
        nq, nprobe = probes.shape
        flat = probes.ravel()
        query_of = np.repeat(np.arange(nq), nprobe)
        by_list = np.argsort(flat, kind="stable")
        cuts = np.searchsorted(flat[by_list], np.arange(self.nlist + 1))
        best_keys = np.full((nq, k), np.inf, dtype=np.float64)
        best_pos = np.full((nq, k), -1, dtype=np.int64)
        query_norms = np.einsum("ij,ij->i", queries, queries) if self.metric == "l2" else None
        for lst in np.flatnonzero(np.diff(cuts)):
            rows = self.list_positions[lst]
            if len(rows) == 0:
                continue
            qs = query_of[by_list[cuts[lst] : cuts[lst + 1]]]
            vectors = self.list_vectors[lst]
            keys = self._keys(queries[qs], vectors, None if query_norms is None else self._list_norms[lst],
                              None if query_norms is None else query_norms[qs])
            best_keys[qs], best_pos[qs] = of_record.record_tile(best_keys[qs], best_pos[qs], keys, delta[qs], queries[qs], vectors,
                                                                rows, self.metric)
        return best_pos

    def _keys_of_record(self, queries: np.ndarray, query: np.ndarray, lists: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Float64 keys of record of the pairs (``queries[query[i]]``, row ``cols[i]`` of list ``lists[i]``)."""
        out = np.empty(len(query), dtype=np.float64)
        if len(query) == 0:
            return out
        by_list = np.argsort(lists, kind="stable")
        bounds = np.flatnonzero(np.r_[True, lists[by_list][1:] != lists[by_list][:-1], True])
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            mine = by_list[lo:hi]
            out[mine] = of_record.keys_of_record(queries, self.list_vectors[lists[mine[0]]], query[mine], cols[mine], self.metric)
        return out

    def _max_row_length(self) -> float:
        """The largest norm of a row searched (cached: it sizes the float32 error bound of every search)."""
        if self._max_length is None:
            self._max_length = max((float(of_record.norms(v).max()) for v in self.list_vectors if v is not None and len(v)), default=0.0)
        return self._max_length

    __call__ = search


def _nearest_slots(keys32: np.ndarray, k: int, delta: np.ndarray) -> np.ndarray:
    """Per query, the columns of its candidates by ascending float32 key: at least its ``k`` nearest and every candidate
    within ``2 delta`` of the ``k``-th (all :func:`of_record.decide_sorted_top_k` can keep); the rest are not sorted."""
    n_queries, n_slots = keys32.shape
    if n_slots > k and n_queries:
        kth = np.partition(keys32, k - 1, axis=1)[:, k - 1].astype(np.float64)
        kept = (keys32 <= of_record.round_up(kth + 2 * delta)[:, None]) & np.isfinite(keys32)
        width = max(k, int(kept.sum(axis=1).max()))
        if width < n_slots:
            part = np.argpartition(keys32, width - 1, axis=1)[:, :width]
            return np.take_along_axis(part, np.argsort(np.take_along_axis(keys32, part, axis=1), axis=1, kind="stable"), axis=1)
    return np.argsort(keys32, axis=1, kind="stable")
