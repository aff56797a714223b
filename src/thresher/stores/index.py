"""The index artefact: a FAISS index over an embedding store, its id map, and a manifest.

Layout of an index directory::

    index.faiss     the FAISS index (``faiss.write_index``); its labels are store positions
    ids.arrow       position -> pool id map: one ``id`` column, Arrow IPC stream
    manifest.json   factory string, metric, search parameters, n_rows, dim, the
                    embedding store's path and fingerprint, train sample size,
                    build time, and recall@10 against exact search (written last)

Index types follow the FAISS guidelines (Johnson, Douze & Jégou, "Billion-scale
similarity search with GPUs", IEEE TBD 2019; Douze et al., "The Faiss library",
arXiv 2401.08281): exact ``Flat`` search for small pools, a graph index
(HNSW, Malkov & Yashunin, IEEE TPAMI 2018) or an inverted file
(IVF, Sivic & Zisserman, ICCV 2003) with about ``4 sqrt(n)`` lists when the raw
vectors fit in memory, and IVF with product-quantised codes (Jégou, Douze &
Schmid, IEEE TPAMI 2011) when they do not. :func:`choose_index_factory` makes
that choice from the row count, the width and a memory budget.

Building never loads the whole store: the coarse quantiser (and PQ codebooks)
train on a seeded sample of rows, then vectors are added block by block. The
quantiser's lists come from thresher's k-means, the same bits for any thread
count (:func:`thresher.search.kmeans.train_index`; FAISS's own gave other lists
with 2 threads than with 1 or 4, issue 19); FAISS trains the rest (PQ and SQ
codebooks, OPQ and PCA transforms). The
recall stored in the manifest is measured against
:func:`thresher.search.exact_search`, a streamed, blocked brute force that
merges per-block top-k lists (the oracle of the tests, as in
``faiss.contrib.exhaustive_search``), on held-out rows that took no part in
training (:mod:`thresher.search.recall`). ``exact_search`` and
``recall_excluding_self`` are importable from here too.

Scores follow FAISS: for ``metric="ip"`` the inner product (higher is nearer),
for ``metric="l2"`` the *squared* Euclidean distance (lower is nearer). A
missing neighbour (``k`` larger than the index) has position ``-1`` and score
``-inf`` (ip) or ``+inf`` (l2).
"""

from __future__ import annotations

import errno
import functools
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from thresher.exceptions import ArtifactError, DimensionMismatchError, ParameterError, parameter_error
from thresher.fingerprint import fingerprint_of, hash_file
from thresher.rng import as_generator
from thresher.search.checks import Metric as IndexMetric
from thresher.search.checks import as_queries as _as_queries
from thresher.search.checks import check_int as _check_int
from thresher.search.checks import check_k as _check_k
from thresher.search.checks import check_metric as _check_metric
from thresher.search.exact import exact_search  # noqa: F401  (re-exported: the index's oracle)
from thresher.search.recall import RecallSample, recall_excluding_self  # noqa: F401  (re-exported)
from thresher.stores.arrow_io import read_stream_shard, write_stream_shard
from thresher.stores.atomic import atomic_path
from thresher.stores.embedding_store import EmbeddingStore
from thresher.stores.ids import ids_at, ids_to_numpy
from thresher.stores.lock import locks_output
from thresher.stores.manifest import artifact_file, check_artifact_files, prepare_output_dir, read_manifest, verify_shards, write_manifest

INDEX_FILE = "index.faiss"
IDS_FILE = "ids.arrow"
INDEX_VERSION = 2  # 2: IVF lists from a thread-invariant k-means (other centroids than FAISS's own)

#: Up to this many rows (and when the raw vectors fit the budget) the automatic choice is exact ``Flat``
#: search: 1,000 queries against 100k rows of 384 dims is ~40 GFLOP, seconds on a CPU, and exact.
FLAT_MAX_ROWS = 100_000
#: Up to this many rows the automatic choice prefers ``HNSW32`` over IVF: best recall per query cost, but
#: its graph costs ~256 bytes per row and its build time grows fastest (measured here: HNSW32 over 1M x 384
#: took 1,220 s on 2 cores against 29 s for IVF2048,Flat trained on a sample), so larger pools use IVF.
HNSW_MAX_ROWS = 250_000
HNSW_M = 32
#: Bounds on the number of IVF lists: at least 39 training rows per list (below that FAISS k-means warns)
#: and at most 2**14 lists, so the coarse quantiser stays small and its training sample bounded.
MIN_TRAIN_PER_LIST = 39
MAX_NLIST = 1 << 14
#: Default training sample: 50 rows per IVF list, at least 10,000 rows (PQ needs 39 x 256 per codebook),
#: at most 1,000,000 rows.
TRAIN_PER_LIST = 50
MIN_TRAIN_ROWS = 10_000
MAX_TRAIN_ROWS = 1_000_000
#: PQ codebooks have 2**8 centroids each; training needs at least 39 rows per centroid.
PQ_MIN_ROWS = MIN_TRAIN_PER_LIST * 256
#: Default search parameters: nprobe = nlist / 32 (at least 16 lists), efSearch = 128.
NPROBE_FRACTION = 32
MIN_NPROBE = 16
DEFAULT_EF_SEARCH = 128
RECALL_K = 10

_OWNER = "build_index"


# --------------------------------------------------------------------------------------------------
# Choosing an index type
# --------------------------------------------------------------------------------------------------


def choose_index_factory(n_rows: int, dim: int, *, metric: IndexMetric, memory_budget_bytes: int) -> str:
    """Pick a FAISS factory string for ``n_rows`` vectors of width ``dim`` within a memory budget.

    The first option that fits ``memory_budget_bytes`` wins:

    1. ``"Flat"`` (exact) when ``n_rows <= FLAT_MAX_ROWS`` (100,000);
    2. ``"HNSW32"`` when ``n_rows <= HNSW_MAX_ROWS`` (250,000);
    3. ``"IVF{nlist},Flat"`` with ``nlist`` = ``4 sqrt(n_rows)`` rounded to a power of two
       (at most ``n_rows / 39`` and 16,384);
    4. ``"IVF{nlist},PQ{m}x8"`` with the largest ``m`` dividing ``dim`` whose codes fit
       (needs at least 9,984 rows to train the codebooks).

    Parameters
    ----------
    n_rows : int
        Number of vectors to index (>= 1).
    dim : int
        Vector width (>= 1).
    metric : {"ip", "l2"}
        Inner product or squared Euclidean distance.
    memory_budget_bytes : int
        Memory the index may hold, in bytes.

    Returns
    -------
    str
        A string for ``faiss.index_factory``.

    Raises
    ------
    ParameterError
        On a bad argument, or a budget too small for even the smallest IVF-PQ index.
    """
    owner = "choose_index_factory"
    _check_int(n_rows, "n_rows", owner, minimum=1)
    _check_int(dim, "dim", owner, minimum=1)
    _check_metric(metric, owner)
    _check_int(memory_budget_bytes, "memory_budget_bytes", owner, minimum=1)
    flat_bytes = n_rows * dim * 4
    if n_rows <= FLAT_MAX_ROWS and flat_bytes <= memory_budget_bytes:
        return "Flat"
    if n_rows <= HNSW_MAX_ROWS and _hnsw_bytes(n_rows, dim) <= memory_budget_bytes:
        return f"HNSW{HNSW_M}"
    nlist = default_nlist(n_rows)
    if _ivf_flat_bytes(n_rows, dim, nlist) <= memory_budget_bytes:
        return f"IVF{nlist},Flat"
    if n_rows >= PQ_MIN_ROWS:
        for m in sorted(_divisors(dim), reverse=True):
            if _ivf_pq_bytes(n_rows, dim, nlist, m, metric) <= memory_budget_bytes:
                return f"IVF{nlist},PQ{m}x8"
        smallest = _ivf_pq_bytes(n_rows, dim, nlist, 1, metric)
        raise parameter_error(
            owner, "memory_budget_bytes", f"at least {smallest} bytes for {n_rows} rows of dim {dim} (IVF{nlist},PQ1x8)", memory_budget_bytes
        )
    smallest = min(flat_bytes, _ivf_flat_bytes(n_rows, dim, nlist))
    raise parameter_error(
        owner,
        "memory_budget_bytes",
        f"at least {smallest} bytes for {n_rows} rows of dim {dim} (too few rows, < {PQ_MIN_ROWS}, to train a PQ index)",
        memory_budget_bytes,
    )


def default_nlist(n_rows: int) -> int:
    """IVF list count: ``4 sqrt(n_rows)`` rounded to a power of two, at most ``n_rows / 39`` and 16,384."""
    target = 2 ** round(math.log2(4 * math.sqrt(n_rows)))
    cap = min(MAX_NLIST, _pow2_floor(max(1, n_rows // MIN_TRAIN_PER_LIST)))
    return max(1, min(target, cap))


def _pow2_floor(n: int) -> int:
    return 1 << (n.bit_length() - 1)


def _divisors(n: int) -> list[int]:
    return [m for m in range(1, n + 1) if n % m == 0]


def _hnsw_bytes(n_rows: int, dim: int) -> int:
    # raw vectors + 2M level-0 links of 4 bytes + upper levels, level and offset tables
    return n_rows * (4 * dim + 2 * HNSW_M * 4 + 32)


def _ivf_flat_bytes(n_rows: int, dim: int, nlist: int) -> int:
    # raw vectors and an 8-byte label per row in the inverted lists, plus the coarse centroids
    return n_rows * (4 * dim + 8) + nlist * dim * 4


def _ivf_pq_bytes(n_rows: int, dim: int, nlist: int, m: int, metric: str) -> int:
    codes = n_rows * (m + 8)
    fixed = nlist * dim * 4 + 256 * dim * 4
    # FAISS precomputes an nlist x m x 256 float table for L2 IVF-PQ when it is below 2 GiB
    table = nlist * m * 256 * 4
    if metric == "l2" and table <= 2 << 30:
        fixed += table
    return codes + fixed


# --------------------------------------------------------------------------------------------------
# The opened index
# --------------------------------------------------------------------------------------------------


class FaissIndex:
    """A finished index artefact, opened: the FAISS index, its id map and its manifest.

    Use :func:`build_index` or :func:`open_index` to get one. Labels inside the
    FAISS index are store positions; :meth:`search` maps them to pool ids.
    The object also serves as a scikit-learn-style neighbours object through
    :meth:`kneighbors` (as imbalanced-learn accepts).

    Attributes
    ----------
    path : Path
        The index directory.
    manifest : dict
        Its manifest.
    metric : {"ip", "l2"}
    dim : int
    n_rows : int
    factory : str
        The ``faiss.index_factory`` string.
    is_exact : bool
        True for a ``Flat`` index (exact search).
    search_params : dict
        ``{"nprobe": ...}`` or ``{"efSearch": ...}`` as set on the index; empty for Flat.
    recall_at_10 : float or None
        Recall@10 against exact search measured at build time.
    faiss_index : faiss.Index
        The raw FAISS index.
    """

    def __init__(self, path: str | Path, manifest: dict[str, Any], faiss_index: Any, id_column: pa.ChunkedArray):
        self.path = Path(path)
        self.manifest = manifest
        self.faiss_index = faiss_index
        self._id_column = id_column
        self.metric: IndexMetric = manifest["metric"]
        self.dim: int = int(manifest["dim"])
        self.n_rows: int = int(manifest["n_rows"])
        self.factory: str = manifest["factory"]
        self.is_exact: bool = bool(manifest["is_exact"])
        self.search_params: dict[str, int] = dict(manifest.get("search_params", {}))
        self.recall_at_10: float | None = manifest.get("recall_at_10")
        self.store_fingerprint: str = manifest["embedding_store"]["fingerprint"]

    def __repr__(self) -> str:
        return (
            f"FaissIndex({str(self.path)!r}, factory={self.factory!r}, metric={self.metric!r}, "
            f"n_rows={self.n_rows}, dim={self.dim}, recall_at_10={self.recall_at_10})"
        )

    def __len__(self) -> int:
        return self.n_rows

    def search_positions(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Nearest store positions of each query.

        Parameters
        ----------
        vectors : ndarray of shape (n_queries, dim)
        k : int
            Neighbours per query (>= 1).

        Returns
        -------
        scores : ndarray of shape (n_queries, k), float32
            Inner products (descending) or squared L2 distances (ascending); ``-inf``/``+inf`` where missing.
        positions : ndarray of shape (n_queries, k), int64
            Store positions; ``-1`` where missing.
        """
        _check_k(k, "FaissIndex.search")
        queries = _as_queries(vectors, self.dim, f"the index {self.path}")
        if queries.shape[0] == 0:
            return np.empty((0, k), dtype=np.float32), np.empty((0, k), dtype=np.int64)
        scores, positions = self.faiss_index.search(queries, k)
        positions = positions.astype(np.int64, copy=False)
        missing = positions < 0
        if missing.any():
            scores[missing] = -np.inf if self.metric == "ip" else np.inf
        return scores, positions

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Nearest pool ids of each query.

        Returns
        -------
        scores : ndarray of shape (n_queries, k), float32
            As :meth:`search_positions`.
        ids : ndarray of shape (n_queries, k)
            Pool ids: int64 with ``-1`` where missing, or object (str) with ``None`` where missing.
        """
        scores, positions = self.search_positions(vectors, k)
        return scores, self.ids_at(positions)

    def kneighbors(self, X: np.ndarray, n_neighbors: int = 5, return_distance: bool = True):
        """scikit-learn-style neighbours: ascending distances and store positions.

        Distances are ``1 - inner product`` for ``metric="ip"`` (the cosine
        distance on normalised vectors) and the Euclidean distance
        ``sqrt(max(d, 0))`` for ``metric="l2"``; ``inf`` where missing.

        Returns
        -------
        distances : ndarray of shape (n_queries, n_neighbors), float32
            Only when ``return_distance``.
        positions : ndarray of shape (n_queries, n_neighbors), int64
        """
        scores, positions = self.search_positions(X, n_neighbors)
        if not return_distance:
            return positions
        if self.metric == "ip":
            distances = (1.0 - scores).astype(np.float32, copy=False)
        else:
            distances = np.sqrt(np.maximum(scores, 0.0)).astype(np.float32, copy=False)
        return distances, positions

    def ids(self) -> np.ndarray:
        """All pool ids in position order (int64, or object array of str)."""
        return ids_to_numpy(self._id_column)

    def ids_at(self, positions: np.ndarray) -> np.ndarray:
        """Pool ids at ``positions`` (any shape); ``-1`` positions give ``-1`` (int ids) or ``None`` (str ids)."""
        return ids_at(self._id_column, positions, where=f"the index {self.path}")

    def check_store(self, store: EmbeddingStore) -> None:
        """Check ``store`` is the one this index was built from (same width, rows and fingerprint)."""
        if store.dim != self.dim:
            raise DimensionMismatchError(f"The embedding store {store.path} has dim {store.dim} but the index {self.path} has dim {self.dim}.")
        if store.n_rows != self.n_rows:
            raise ArtifactError(f"The embedding store {store.path} has {store.n_rows} rows but the index {self.path} has {self.n_rows}.")
        if store.fingerprint != self.store_fingerprint:
            raise ArtifactError(
                f"The index {self.path} was built from an embedding store with fingerprint {self.store_fingerprint}, "
                f"not from {store.path} (fingerprint {store.fingerprint})."
            )


def open_index(path: str | Path, *, verify: bool = False, store: EmbeddingStore | None = None) -> FaissIndex:
    """Open a finished index artefact.

    Parameters
    ----------
    path : str or Path
        The index directory.
    verify : bool, default False
        Re-check the checksums of ``index.faiss`` and ``ids.arrow`` first.
    store : EmbeddingStore, optional
        When given, check it is the store the index was built from (:meth:`FaissIndex.check_store`).

    Raises
    ------
    ArtifactError
        Missing, incomplete, corrupt or inconsistent artefact (e.g. id map and index of different lengths).
    DimensionMismatchError
        ``store`` has another width.
    """
    import faiss

    path = Path(path)
    manifest = read_manifest(path, "index")
    check_artifact_files(path, manifest)  # the files the manifest lists may not lead outside the index directory
    for name in (INDEX_FILE, IDS_FILE):
        artifact_file(path, name, key="files")
        if not (path / name).is_file():
            raise ArtifactError(f"The index {path} lacks {name}.")
    if verify:
        _verify_files(path, manifest)
    try:
        index = faiss.read_index(str(path / INDEX_FILE))
    except RuntimeError as exc:
        raise ArtifactError(f"{path / INDEX_FILE} is not a readable FAISS index: {exc}") from exc
    table = read_stream_shard(path / IDS_FILE)
    if "id" not in table.column_names:
        raise ArtifactError(f"{path / IDS_FILE} has no 'id' column.")
    if table.num_rows != index.ntotal:
        raise ArtifactError(f"{path / IDS_FILE} maps {table.num_rows} positions but {path / INDEX_FILE} holds {index.ntotal} vectors.")
    if index.ntotal != manifest["n_rows"] or index.d != manifest["dim"]:
        raise ArtifactError(
            f"{path / INDEX_FILE} holds {index.ntotal} vectors of dim {index.d}; the manifest says {manifest['n_rows']} of dim {manifest['dim']}."
        )
    _set_search_params(index, manifest.get("search_params", {}))
    opened = FaissIndex(path, manifest, index, table.column("id"))
    if store is not None:
        opened.check_store(store)
    return opened


def _verify_files(path: Path, manifest: dict[str, Any]) -> None:
    """Re-hash every file the manifest lists (each confined to the index directory)."""
    verify_shards(path, manifest)


# --------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------


def _check_index_output(arguments: dict[str, Any]) -> None:
    from thresher.stores.output_guard import check_output

    store = arguments["store"]
    check_output(arguments["out"], "index", inputs={"store": getattr(store, "path", store)}, overwrite=arguments["overwrite"])


@locks_output("out", check=_check_index_output)
def build_index(
    store: EmbeddingStore,
    out: str | Path,
    *,
    index_type: str = "auto",
    metric: IndexMetric | None = None,
    memory_budget_bytes: int | None = None,
    train_size: int | None = None,
    nprobe: int | None = None,
    ef_search: int | None = None,
    seed: int = 0,
    recall_sample: int = 1000,
    block_rows: int | None = None,
    overwrite: bool = False,
) -> FaissIndex:
    """Build a FAISS index over ``store`` into the directory ``out``.

    Trains (when the index type needs it) on a seeded sample of rows, adds the
    store block by block, writes ``index.faiss`` and ``ids.arrow``, measures
    recall@10 against :func:`exact_search` on held-out rows, and writes the
    manifest last. A directory that already holds this very index is reused.

    Parameters
    ----------
    store : EmbeddingStore
        The vectors to index (at least one row).
    out : str or Path
        The index directory.
    index_type : str, default "auto"
        ``"auto"`` (:func:`choose_index_factory`), ``"flat"``, or any ``faiss.index_factory`` string.
    metric : {"ip", "l2"}, optional
        Default ``"ip"`` when the store is normalised, else ``"l2"``.
    memory_budget_bytes : int, optional
        Budget for ``"auto"`` (default: ``THRESHER_MEMORY_BUDGET``, 4 GiB).
    train_size : int, optional
        Training rows for index types that train (default ``clip(50 nlist, 10,000, 1,000,000)``,
        at most the rows left after reserving up to 10% for the recall sample). Unused by Flat and HNSW.
    nprobe : int, optional
        IVF lists probed per query (default ``max(16, nlist / 32)``, at most nlist). Used by IVF indexes only.
    ef_search : int, optional
        HNSW search depth (default 128). Used by HNSW indexes only.
    seed : int, default 0
        Seeds the training and recall samples.
    recall_sample : int, default 1000
        Held-out rows used as queries to measure recall@10 (0 skips it).
    block_rows : int, optional
        Rows added (and exact-searched) at once (default ``THRESHER_BLOCK_ROWS``).
    overwrite : bool, default False
        Replace an index directory holding another artefact of thresher's.

    Returns
    -------
    FaissIndex
    """
    import faiss

    if not isinstance(store, EmbeddingStore):
        raise parameter_error(_OWNER, "store", "an EmbeddingStore (thresher.stores.open_embedding_store)", type(store).__name__)
    if store.n_rows == 0:
        raise parameter_error(_OWNER, "store", "an embedding store with at least one row", f"{store.path} with 0 rows")
    if metric is None:
        metric = "ip" if store.normalized else "l2"
    _check_metric(metric, _OWNER)
    for name, value, minimum in (("train_size", train_size, 1), ("nprobe", nprobe, 1), ("ef_search", ef_search, 1), ("block_rows", block_rows, 1)):
        if value is not None:
            _check_int(value, name, _OWNER, minimum=minimum)
    _check_int(recall_sample, "recall_sample", _OWNER, minimum=0)
    _check_int(seed, "seed", _OWNER, minimum=0)
    factory = _resolve_factory(index_type, store, metric, memory_budget_bytes)
    if factory != "Flat" and index_type != "auto":  # a user's string may crash FAISS: tried in a child process first
        check_factory(factory, store.dim, metric)
    index = _new_index(faiss, factory, store.dim, metric)
    train_size = _resolve_train_size(faiss, index, train_size, store.n_rows, recall_sample)
    search_params = _resolve_search_params(faiss, index, nprobe, ef_search)
    params = {
        "factory": factory,
        "metric": metric,
        "train_size": train_size,
        "search_params": search_params,
        "seed": seed,
        "recall_sample": recall_sample,
    }
    fingerprint = fingerprint_of("index", INDEX_VERSION, params, [store.fingerprint])
    out = Path(out)
    if prepare_output_dir(out, "index", fingerprint, overwrite=overwrite) == "complete":
        return open_index(out, store=store)

    train_positions, recall_positions = _sample_positions(store.n_rows, train_size, recall_sample, seed)
    started = time.perf_counter()
    if train_size:
        _train(faiss, index, store, train_positions, seed)
    trained = time.perf_counter()
    _add_blocks(index, store, block_rows, factory)
    build_seconds = time.perf_counter() - started
    _set_search_params(index, search_params)

    with atomic_path(out / INDEX_FILE) as tmp:
        try:
            faiss.write_index(index, str(tmp))
        except RuntimeError as exc:  # FAISS reports a failed write (disk full, quota) as a C++ error
            raise OSError(errno.EIO, f"FAISS could not write the index ({_first_line(exc)})", str(out / INDEX_FILE)) from None
    _write_id_map(store, out / IDS_FILE)

    opened = FaissIndex(out, _provisional_manifest(params, store, index), index, _id_column(store))
    recall, k_eval = _measure_recall(opened, store, recall_positions, block_rows)
    body = {
        **params,
        "n_rows": int(index.ntotal),
        "dim": store.dim,
        "is_exact": bool(_is_flat(faiss, index)),
        "embedding_store": {"path": str(store.path.resolve()), "fingerprint": store.fingerprint},
        "train_seconds": round(trained - started, 3),
        "build_seconds": round(build_seconds, 3),
        "recall_at_10": recall,
        "recall_k": k_eval,
        "recall_n_queries": int(len(recall_positions)),
        "id_type": str(opened._id_column.type),
        "files": {name: f"xxh3_128:{hash_file(out / name)}" for name in (INDEX_FILE, IDS_FILE)},
        # size and mtime at write time: a cached index whose files still have both is reused without re-hashing
        "file_stats": {name: {"size": (out / name).stat().st_size, "mtime_ns": (out / name).stat().st_mtime_ns} for name in (INDEX_FILE, IDS_FILE)},
    }
    manifest = write_manifest(out, "index", fingerprint=fingerprint, body=body)
    return FaissIndex(out, manifest, index, read_stream_shard(out / IDS_FILE).column("id"))


def _sample_positions(n_rows: int, train_size: int, recall_sample: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint sorted samples of store positions: the training rows, then the held-out recall queries."""
    n_recall = min(recall_sample, n_rows - train_size)
    if train_size + n_recall == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    sample = as_generator(seed, _OWNER).choice(n_rows, size=train_size + n_recall, replace=False)
    return np.sort(sample[:train_size]), np.sort(sample[train_size:])


def _add_blocks(index: Any, store: EmbeddingStore, block_rows: int | None, factory: str) -> None:
    """Add the store to the index block by block; labels are store positions (0, 1, ... in order)."""
    for block in store.iter_blocks(block_rows, dtype=np.float32):
        try:
            index.add(block.vectors)
        except RuntimeError as exc:
            raise parameter_error(_OWNER, "index_type", f"an index that accepts plain add() ({_first_line(exc)})", factory) from None


def _resolve_factory(index_type: str, store: EmbeddingStore, metric: str, memory_budget_bytes: int | None) -> str:
    if not isinstance(index_type, str) or not index_type.strip():
        raise parameter_error(_OWNER, "index_type", "'auto', 'flat' or a faiss.index_factory string", index_type)
    if index_type == "auto":
        if memory_budget_bytes is None:
            from thresher.config import runtime_config

            memory_budget_bytes = runtime_config().memory_budget_bytes
        return choose_index_factory(store.n_rows, store.dim, metric=metric, memory_budget_bytes=memory_budget_bytes)
    if index_type.lower() == "flat":
        return "Flat"
    return index_type.strip()


#: Bounds on the numbers inside a factory string that FAISS does not check itself and that crash the process
#: (abort, segfault, division by zero) or hang it, found by trying them: component -> (group, low, high, what).
_FACTORY_NUMBERS = (
    (re.compile(r"HNSW(\d+)"), 1, 2, 1024, "an HNSW graph with M in [2, 1024] links per node"),
    (re.compile(r"NSG(\d+)"), 1, 2, 1024, "an NSG graph with R in [2, 1024] links per node"),
    (re.compile(r"IVF(\d+)"), 1, 1, 1 << 24, "an IVF index with nlist in [1, 16777216] lists"),
    (re.compile(r"(?<![A-Z])PQ(\d+)"), 1, 1, 4096, "PQ with M in [1, 4096] sub-quantisers"),
    (re.compile(r"PQ\d+x(\d+)"), 1, 1, 16, "PQ codes of 1 to 16 bits (PQ<M>x<nbits>)"),
    (re.compile(r"OPQ(\d+)"), 1, 1, 4096, "OPQ with M in [1, 4096]"),
    (re.compile(r"OPQ\d+_(\d+)"), 1, 1, 1 << 16, "an OPQ output width in [1, 65536]"),
    (re.compile(r"RR(\d+)"), 1, 1, 1 << 16, "a random rotation to a width in [1, 65536]"),
    (re.compile(r"PCAW?R?(\d+)"), 1, 1, 1 << 16, "a PCA to a width in [1, 65536]"),
)
#: Seconds the trial build of a factory string may take in its child process (a few are typical).
FACTORY_CHECK_SECONDS = 10.0

_FACTORY_TRIAL = r"""
import sys
import numpy as np
import faiss
factory, dim, metric = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def say(stage):
    print(stage, flush=True)
try:
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2)
except RuntimeError as exc:
    print("error", str(exc).replace("\n", " "), flush=True)
    sys.exit(3)
say("created")
x = np.random.default_rng(0).standard_normal((256, dim)).astype("float32")
if not index.is_trained:
    parts = [faiss.downcast_index(index)]  # as _skip_polysemous_training: that annealing alone takes seconds
    if isinstance(parts[0], faiss.IndexPreTransform):
        parts.append(faiss.downcast_index(parts[0].index))
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        parts.append(faiss.downcast_index(ivf))
    for part in parts:
        if hasattr(part, "do_polysemous_training"):
            part.do_polysemous_training = False
    try:
        index.train(x)
    except RuntimeError:
        say("ok")  # too few random rows to train this index type: the real training on the store decides
        sys.exit(0)
say("trained")
try:
    index.add(x)
    index.search(x[:2], 2)
except RuntimeError as exc:
    print("error", str(exc).replace("\n", " "), flush=True)
    sys.exit(3)
say("ok")
"""


def check_factory(factory: str, dim: int, metric: IndexMetric = "ip") -> None:
    """Refuse a ``faiss.index_factory`` string that FAISS cannot build, or that would crash or hang the process.

    FAISS checks some parameters and raises, but others (``HNSW0``, ``PQ4x0``, ``RR0``, ``NSG1``) fail
    an assertion that aborts the process, divide by zero, segfault, or loop forever, and no Python
    code can catch that. So the numbers inside the string are first checked against bounds known to
    be safe, and then the index is built for real in a short-lived child process (created, trained on
    256 random rows when it needs training, those rows added and searched), with a timeout of
    :data:`FACTORY_CHECK_SECONDS`. A child that dies or hangs while adding and searching condemns the
    string; one still training when the time is up does not (the store's own training decides).
    Results are cached per (factory, dim, metric) for the life of the process.

    Raises
    ------
    ParameterError
        Naming the string and what is wrong with it.
    """
    check_factory_numbers(factory)
    problem = _trial_build(factory, int(dim), metric)
    if problem:
        raise parameter_error(_OWNER, "index_type", f"a faiss.index_factory string FAISS can build for dim {dim} ({problem})", factory)


def check_factory_numbers(factory: str) -> None:
    """Refuse a factory string whose numbers are outside the bounds FAISS survives (no dim needed, no FAISS call).

    The cheap half of :func:`check_factory`, which a pipeline spec runs when it is loaded, before the
    embedding that fixes the dim.
    """
    if not isinstance(factory, str) or not factory.strip():
        raise parameter_error(_OWNER, "index_type", "'auto', 'flat' or a faiss.index_factory string", factory)
    for pattern, group, low, high, what in _FACTORY_NUMBERS:
        for match in pattern.finditer(factory):
            value = int(match.group(group))
            if not low <= value <= high:
                raise parameter_error(_OWNER, "index_type", f"a faiss.index_factory string with {what} ({match.group(0)!r} is not)", factory)


@functools.lru_cache(maxsize=64)
def _trial_build(factory: str, dim: int, metric: str) -> str | None:
    """What goes wrong when FAISS builds ``factory`` in a child process, or None when nothing does."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    try:
        done = subprocess.run([sys.executable, "-c", _FACTORY_TRIAL, factory, str(dim), metric], capture_output=True, text=True,
                              timeout=FACTORY_CHECK_SECONDS, env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        stages = (exc.stdout or b"").decode("utf-8", "replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        if "trained" in stages.split():  # a hang while adding or searching 64 rows: it would hang on the store too
            return f"adding 256 vectors to it did not finish within {FACTORY_CHECK_SECONDS:g} s"
        return None
    lines = done.stdout.split()
    if done.returncode == 0 and "ok" in lines:
        return None
    if done.returncode == 3:
        text = done.stdout.split("error", 1)[-1].strip()
        return _first_line(RuntimeError(text))
    stage = "adding vectors" if "trained" in lines else "training" if "created" in lines else "creating the index"
    assertion = re.search(r"Faiss assertion '([^']*)' failed", done.stderr or "")
    if done.returncode < 0:
        try:
            how = signal.Signals(-done.returncode).name
        except ValueError:
            how = f"signal {-done.returncode}"
    elif "MemoryError" in (done.stderr or "") or "bad_alloc" in (done.stderr or ""):
        how = "out of memory"
    else:
        how = f"exit code {done.returncode}"
    return f"FAISS crashed while {stage} ({how}{': assertion ' + repr(assertion.group(1)) + ' failed' if assertion else ''})"


def _new_index(faiss: Any, factory: str, dim: int, metric: str) -> Any:
    faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
    try:
        return faiss.index_factory(dim, factory, faiss_metric)
    except RuntimeError as exc:
        raise parameter_error(_OWNER, "index_type", f"a faiss.index_factory string valid for dim {dim} ({_first_line(exc)})", factory) from None


def _resolve_train_size(faiss: Any, index: Any, train_size: int | None, n_rows: int, recall_sample: int) -> int:
    if index.is_trained:
        return 0
    if train_size is not None:
        if train_size > n_rows:
            raise parameter_error(_OWNER, "train_size", f"at most the store's {n_rows} rows", train_size)
        return train_size
    nlist = _ivf(faiss, index).nlist if _ivf(faiss, index) is not None else 0
    target = min(max(TRAIN_PER_LIST * nlist, MIN_TRAIN_ROWS), MAX_TRAIN_ROWS)
    # keep up to 10% of a small store out of training so recall is measured on unseen rows
    return max(1, min(target, n_rows - min(recall_sample, n_rows // 10)))


def _resolve_search_params(faiss: Any, index: Any, nprobe: int | None, ef_search: int | None) -> dict[str, int]:
    ivf = _ivf(faiss, index)
    if ivf is not None:
        if nprobe is not None and nprobe > ivf.nlist:
            raise parameter_error(_OWNER, "nprobe", f"at most the index's nlist = {ivf.nlist}", nprobe)
        return {"nprobe": nprobe if nprobe is not None else min(ivf.nlist, max(MIN_NPROBE, ivf.nlist // NPROBE_FRACTION))}
    if _hnsw(faiss, index) is not None:
        return {"efSearch": ef_search if ef_search is not None else DEFAULT_EF_SEARCH}
    return {}


def _set_search_params(index: Any, search_params: dict[str, int]) -> None:
    import faiss

    space = faiss.ParameterSpace()
    for name, value in search_params.items():
        space.set_index_parameter(index, name, value)


def _ivf(faiss: Any, index: Any) -> Any:
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _hnsw(faiss: Any, index: Any) -> Any:
    inner = faiss.downcast_index(index)
    return inner if hasattr(inner, "hnsw") else None


def _is_flat(faiss: Any, index: Any) -> bool:
    return isinstance(faiss.downcast_index(index), faiss.IndexFlat)


def _train(faiss: Any, index: Any, store: EmbeddingStore, positions: np.ndarray, seed: int) -> None:
    """Train on the store's rows at ``positions``; IVF lists by the thread-invariant k-means (:func:`thresher.search.kmeans.train_index`)."""
    from thresher.search.kmeans import train_index

    ivf = _ivf(faiss, index)
    if ivf is not None:
        ivf.cp.seed = seed % (1 << 31)  # what FAISS still trains itself (a non-flat quantiser) takes a 32-bit seed
    _skip_polysemous_training(faiss, index)
    sample = store.take(positions, dtype=np.float32)
    try:
        train_index(index, sample, seed, what=f"the training sample of the embedding store {store.path}", positions=positions)
    except (RuntimeError, ParameterError) as exc:  # FAISS's own check, or the k-means's: fewer rows than lists
        raise parameter_error(_OWNER, "train_size", f"enough rows to train the index ({_first_line(exc)})", len(positions)) from None


def _skip_polysemous_training(faiss: Any, index: Any) -> None:
    """Turn off the polysemous code ordering that ``index_factory`` enables for PQ indexes.

    It only permutes codebook entries so that Hamming distances between codes
    mean something (Douze, Jégou & Perronnin, ECCV 2016); thresher never
    filters by Hamming distance, the search results are the same, and the
    annealing makes training many times slower.
    """
    parts = [faiss.downcast_index(index)]
    if isinstance(parts[0], faiss.IndexPreTransform):
        parts.append(faiss.downcast_index(parts[0].index))
    ivf = _ivf(faiss, index)
    if ivf is not None:
        parts.append(faiss.downcast_index(ivf))
    for part in parts:
        if hasattr(part, "do_polysemous_training"):
            part.do_polysemous_training = False


def _id_column(store: EmbeddingStore) -> pa.ChunkedArray:
    columns = [store.shard_table(i).column("id") for i in range(store.n_shards)]
    return pa.chunked_array([chunk for column in columns for chunk in column.chunks], type=columns[0].type)


def _write_id_map(store: EmbeddingStore, path: Path) -> None:
    column = _id_column(store)
    schema = pa.schema([pa.field("id", column.type, nullable=False)])
    write_stream_shard(path, pa.Table.from_arrays([column], schema=schema))


def _provisional_manifest(params: dict[str, Any], store: EmbeddingStore, index: Any) -> dict[str, Any]:
    return {
        **params,
        "n_rows": int(index.ntotal),
        "dim": store.dim,
        "is_exact": False,
        "embedding_store": {"fingerprint": store.fingerprint},
    }


def _measure_recall(
    index: FaissIndex, store: EmbeddingStore, query_positions: np.ndarray, block_rows: int | None
) -> tuple[float | None, int]:
    """Recall@k (k = min(10, n_rows - 1)) of ``index`` against exact search, each query's own row excluded.

    Queries are store rows, so both result lists would start with the query
    itself; dropping it measures how well the index finds the *other* neighbours
    (:class:`thresher.search.RecallSample`).
    """
    k = min(RECALL_K, store.n_rows - 1)
    if k < 1 or len(query_positions) == 0:
        return None, max(k, 0)
    sample = RecallSample.of(store, query_positions, k, metric=index.metric, block_rows=block_rows)
    _, approx = index.search_positions(sample.queries, k + 1)
    return float(sample.recall(approx)), k


def _first_line(exc: BaseException) -> str:
    """The human part of a FAISS C++ error ("Error in <signature> at <file>:<line>: <message>")."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    text = lines[-1] if lines else type(exc).__name__
    match = re.search(r"\.(?:cpp|h):\d+: (.*)$", text)
    return match.group(1) if match else text
