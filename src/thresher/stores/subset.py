"""Some rows of an embedding store, seen as a pool of their own.

The pipeline runner chains selection steps: each step sees only the rows that
survived the previous one, passed on as ``subset``, sorted unique store
positions. :class:`StoreSubset` presents those rows with the store's reading
protocol (``n_rows``, ``dim``, ``iter_blocks``, ``take``, ``ids``); its
positions are offsets *within the subset* (0 … len(subset) - 1, in store
order), so a selector run on it behaves exactly as on a store built from those
rows alone, and a stage maps the selector's positions back with
``subset[positions]``. Keeping store order keeps every "ties go to the lower
position" rule intact.

:class:`SubsetNeighbors` finds nearest neighbours among the subset only: through
the store's FAISS index restricted by an ``IDSelectorBitmap`` (FAISS's filtered
search, honoured by Flat, IVF and HNSW indexes; Douze et al., "The Faiss
library", arXiv 2401.08281), through the index's plain search with more
neighbours asked and those outside the subset dropped (a subset of most of the
store), or by exact search streamed over the subset's rows (a small share of
the store). The bitmap costs one bit per store row.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from thresher.exceptions import ArtifactError, ParameterError
from thresher.stores.embedding_store import EmbeddingBlock


def check_subset(subset: Any, n_rows: int, owner: str) -> np.ndarray | None:
    """Validate ``subset`` (store positions) against a store of ``n_rows`` rows; None stays None (all rows).

    Returns
    -------
    ndarray of int64, shape (n_subset,), sorted, or None

    Raises
    ------
    ParameterError
        Not a non-empty 1-D array of ints, a position outside [0, n_rows), or a repeated position.
    """
    if subset is None:
        return None
    values = np.asarray(subset)
    if values.ndim != 1 or values.dtype.kind not in "iu":
        raise ParameterError(
            f"The 'subset' parameter of {owner} must be a 1-D array of int store positions (or None for all rows); "
            f"got an array of shape {values.shape} and dtype {values.dtype}."
        )
    if len(values) == 0:
        raise ParameterError(f"The 'subset' parameter of {owner} is empty: no row is left to select from.")
    lowest, highest = values.min(), values.max()
    if lowest < 0 or highest >= n_rows:
        bad = int(lowest) if lowest < 0 else int(highest)
        raise ParameterError(f"The 'subset' parameter of {owner} holds the position {bad}, outside the store's rows [0, {n_rows}).")
    positions = np.sort(values.astype(np.int64, copy=False))
    repeated = np.flatnonzero(positions[1:] == positions[:-1])
    if len(repeated):
        raise ParameterError(
            f"The 'subset' parameter of {owner} holds the position {int(positions[repeated[0]])} more than once; positions must be unique."
        )
    return positions


def subset_digest(subset: np.ndarray | None) -> str | None:
    """A content hash of the subset, for fingerprints (a stage's output depends on which rows it saw)."""
    from thresher.fingerprint import hash_bytes

    return None if subset is None else hash_bytes(np.ascontiguousarray(subset, dtype="<i8").tobytes())


def shard_range(subset: np.ndarray, store: Any, shard: int) -> tuple[int, int]:
    """The slice ``[lo, hi)`` of ``subset`` whose positions fall in store shard ``shard``."""
    lo, hi = np.searchsorted(subset, store.shard_offsets[shard : shard + 2])
    return int(lo), int(hi)


def iter_subset_shard_blocks(store: Any, positions: np.ndarray, start: int, shard: int, block_rows: int,
                             *, dtype: Any = np.float32) -> Iterator[EmbeddingBlock]:
    """Blocks of the store rows ``positions`` (sorted, all in shard ``shard``), numbered from subset position ``start``.

    A job's partition of a subset: the rows ``subset[start : start + len(positions)]``.
    """
    ids = store.shard_ids(shard)[positions - store.shard_offsets[shard]]
    for lo in range(0, len(positions), block_rows):
        hi = min(lo + block_rows, len(positions))
        yield EmbeddingBlock(start + lo, ids[lo:hi], store.take(positions[lo:hi], dtype=dtype))


class StoreSubset:
    """The rows of ``store`` at ``positions`` (sorted unique store positions), as a pool of ``len(positions)`` rows.

    Parameters
    ----------
    store : EmbeddingStore
    positions : ndarray of int64, shape (n_rows,)
        Validated with :func:`check_subset`.
    """

    def __init__(self, store: Any, positions: np.ndarray):
        self.store = store
        self.positions = positions
        self.n_rows = len(positions)
        self.dim = store.dim
        self.path = store.path
        self._ids: np.ndarray | None = None

    def __repr__(self) -> str:
        return f"StoreSubset({str(self.store.path)!r}, n_rows={self.n_rows} of {self.store.n_rows})"

    def __len__(self) -> int:
        return self.n_rows

    def iter_blocks(self, block_rows: int | None = None, *, dtype: Any = np.float32) -> Iterator[EmbeddingBlock]:
        """The subset's rows in blocks of at most ``block_rows``; ``start`` is a position within the subset."""
        if block_rows is None:
            from thresher.config import runtime_config

            block_rows = runtime_config().block_rows
        ids = self.ids()
        for start in range(0, self.n_rows, block_rows):
            stop = min(start + block_rows, self.n_rows)
            yield EmbeddingBlock(start, ids[start:stop], self.store.take(self.positions[start:stop], dtype=dtype))

    def take(self, positions: Any, *, dtype: Any = np.float32) -> np.ndarray:
        """Vectors at the given subset positions, in the given order."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size and (positions.min() < 0 or positions.max() >= self.n_rows):
            raise ParameterError(f"positions must lie in [0, {self.n_rows}) for a subset of {self.n_rows} rows; got values from {positions.min()} to {positions.max()}.")
        return self.store.take(self.positions[positions], dtype=dtype)

    def ids(self) -> np.ndarray:
        """The pool ids of the subset's rows, in subset order."""
        if self._ids is None:
            self._ids = self.store.ids()[self.positions]
        return self._ids


#: A subset at least this share of the store is searched through the index's plain search, asked for more neighbours.
OVERFETCH_MIN_SHARE = 0.5
#: A subset at most this share of the store is searched exactly over its own rows.
EXACT_MAX_SHARE = 0.2


class SubsetNeighbors:
    """Nearest neighbours among the rows of a subset, as subset positions (``search_positions``, like a FaissIndex).

    Parameters
    ----------
    store : EmbeddingStore
    subset : ndarray of int64
        Sorted unique store positions (:func:`check_subset`).
    index : FaissIndex, optional
        An index over ``store`` (labels are store positions), searched one of three ways by the subset's share of the store:

        - at least :data:`OVERFETCH_MIN_SHARE` (a deduplicated pool): the plain
          search at the index's depth for ``k / share`` neighbours and a
          margin, those outside the subset dropped; a query left with fewer than
          ``k`` goes through the filtered search below. FAISS's filtered IVF
          search scans per query, about 5x slower than its plain one (1M rows,
          IVF4096: 19 s against 3.3 s per 2,000 queries of 131 neighbours);
        - between: an ``IDSelectorBitmap`` of the subset. Filtering drops the
          rows outside the subset from the candidates an approximate index
          visits, so its search depth (``nprobe``, ``efSearch``, the latter at
          least ``k``) is divided by the subset's share: about as many subset
          rows are examined as rows are in an unfiltered search;
        - at most :data:`EXACT_MAX_SHARE` (e.g. RDS+'s 10%): exact search over
          the subset's rows, whose cost (subset rows squared) is then below the
          filtered search's, which visits share⁻¹ times the lists.

        Without an index, or with an exact (Flat, inner-product) one, exact
        inner-product search over the subset's rows, streamed in blocks: with a
        selector, FAISS leaves its matrix-product path for a per-query scan,
        measured 5× slower (2,000 queries × 131 neighbours over 100k × 384:
        40.1 s vs 7.7 s), for the same exact neighbours.
    block_rows : int
        Subset rows scored at once by the exact search.
    """

    def __init__(self, store: Any, subset: np.ndarray, index: Any = None, *, block_rows: int = 8192):
        self.store = store
        self.subset = subset
        self.index = index
        self.block_rows = block_rows
        self.share = len(subset) / max(1, store.n_rows)
        self._searches_blocks = index is None or _is_exact_ip(index) or self.share <= EXACT_MAX_SHARE
        if not self._searches_blocks:
            import faiss

            # FAISS keeps raw pointers: the bitmap and selector must live as long as the parameters
            self._bitmap = np.zeros((store.n_rows + 7) // 8, dtype=np.uint8)
            np.bitwise_or.at(self._bitmap, subset >> 3, np.left_shift(1, subset & 7).astype(np.uint8))
            self._selector = faiss.IDSelectorBitmap(store.n_rows, faiss.swig_ptr(self._bitmap))

    def search_positions(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest subset rows of each query: scores (descending inner products) and subset positions, -1 where missing."""
        queries = np.ascontiguousarray(vectors, dtype=np.float32)
        if self._searches_blocks:
            return self._exact(queries, k)
        if self.share >= OVERFETCH_MIN_SHARE:
            return self._overfetched(queries, k)
        return self._filtered(queries, k)

    @property
    def exact(self) -> bool:
        """True when the neighbours are found by exact search over the subset's rows (no index depth applies)."""
        return self._searches_blocks

    def _overfetched(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The plain search for more than ``k`` neighbours, the rows outside the subset dropped; queries left short searched filtered."""
        n_total = int(self.index.faiss_index.ntotal)
        asked = min(n_total, math.ceil(k / self.share * 1.1) + 8)
        scores, found = self.index.faiss_index.search(queries, asked)
        found = found.astype(np.int64, copy=False)
        inside = (found >= 0) & ((self._bitmap[np.maximum(found, 0) >> 3] >> (np.maximum(found, 0) & 7)) & 1).astype(bool)
        order = np.argsort(~inside, axis=1, kind="stable")[:, :k]  # the subset's rows first, in the search's order
        kept = np.take_along_axis(inside, order, axis=1)
        best_scores = np.take_along_axis(scores, order, axis=1)
        best = np.take_along_axis(found, order, axis=1)
        local = np.where(kept, np.searchsorted(self.subset, np.where(kept, best, 0)), -1)
        best_scores = np.where(kept, best_scores, -np.inf if self.index.metric == "ip" else np.inf).astype(np.float32)
        short = np.flatnonzero(kept.sum(axis=1) < min(k, len(self.subset)))
        if len(short):
            best_scores[short], local[short] = self._filtered(queries[short], k)
        return best_scores, local

    def _filtered(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        params = _filtered_search_params(faiss, self.index.faiss_index, self._selector, k, self.share)
        try:
            scores, found = self.index.faiss_index.search(queries, k, params=params)
        except RuntimeError as exc:
            raise ArtifactError(f"The index {self.index.path} ({self.index.factory}) cannot search a subset of its rows: {exc}") from None
        found = found.astype(np.int64, copy=False)
        missing = found < 0
        local = np.searchsorted(self.subset, np.where(missing, 0, found))
        local[missing] = -1
        scores[missing] = -np.inf if self.index.metric == "ip" else np.inf
        return scores, local

    def _exact(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over the subset, block by block, merged with ties to the lower position (as ``exact_search``)."""
        from thresher.search import exact_search

        best_keys = np.full((len(queries), k), np.inf, dtype=np.float32)
        best_pos = np.full((len(queries), k), -1, dtype=np.int64)
        for start in range(0, len(self.subset), self.block_rows):
            vectors = self.store.take(self.subset[start : start + self.block_rows])
            scores, found = exact_search(vectors, queries, k, metric="ip")
            keys = np.concatenate([best_keys, -scores], axis=1)
            pos = np.concatenate([best_pos, np.where(found >= 0, found + start, -1)], axis=1)
            order = np.lexsort((np.where(pos < 0, np.iinfo(np.int64).max, pos), keys), axis=1)[:, :k]
            best_keys, best_pos = np.take_along_axis(keys, order, axis=1), np.take_along_axis(pos, order, axis=1)
        return -best_keys, best_pos


def _is_exact_ip(index: Any) -> bool:
    """True for a thresher index that is a plain inner-product ``IndexFlat`` (exact search over the store's vectors)."""
    import faiss

    return index.metric == "ip" and isinstance(faiss.downcast_index(index.faiss_index), faiss.IndexFlat)


def _filtered_search_params(faiss: Any, index: Any, selector: Any, k: int, share: float) -> Any:
    """Search parameters carrying ``selector``, with the index's search depth divided by the subset's ``share`` of rows.

    (Parameters must carry the depth in any case: FAISS's defaults, nprobe=1 and
    efSearch=16, would replace the index's own settings.)
    """
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        ivf = None
    if ivf is not None:
        return faiss.SearchParametersIVF(sel=selector, nprobe=min(ivf.nlist, math.ceil(ivf.nprobe / share)), max_codes=ivf.max_codes)
    inner = faiss.downcast_index(index)
    if hasattr(inner, "hnsw"):
        return faiss.SearchParametersHNSW(sel=selector, efSearch=math.ceil(max(inner.hnsw.efSearch, k) / share))
    return faiss.SearchParameters(sel=selector)
