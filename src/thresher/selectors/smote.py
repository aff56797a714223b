"""SMOTE in embedding space (Chawla, Bowyer, Hall & Kegelmeyer, "SMOTE: Synthetic Minority
Over-sampling Technique", JAIR 16, 2002), with random under-sampling of the majority.

For each synthetic row of class c, a base point x is drawn uniformly with
replacement among the class's rows, one of its k nearest neighbours within the
class (itself excluded), x_nn, is drawn uniformly, and one gap g ~ U[0, 1)::

    x_new = x + g (x_nn - x)

so every synthetic point lies on the segment between its two parents. How many
rows each class gains follows imbalanced-learn's ``sampling_strategy``
(``imblearn.utils.check_sampling_strategy`` with ``sampling_type="over-sampling"``),
so users can switch: "auto" / "not majority", "minority", "not minority",
"all", a float alpha (binary only: the minority grows to int(alpha x majority)),
a dict {class: target count}, or a callable y -> dict. The majority class is
the largest one; on a tie the smallest label (imbalanced-learn takes the first
maximum of the counts in sorted label order). The paper's best setting combines
SMOTE of the minority with random under-sampling of the majority:
``undersample_majority=ratio`` keeps floor(ratio x n) rows of the majority
class, drawn uniformly without replacement (a dict {class: ratio} names the
classes instead). Synthetic counts are computed from the original counts, as
if SMOTE ran before the under-sampler.

Neighbours and scale. Neighbours are searched class by class with FAISS on the
class's float32 vectors (:func:`class_searcher`). Every row of a class is a
query, so exact search costs n_c^2 x dim: "auto" uses exact ``IndexFlatL2`` up
to 20,000 rows, and above that an IVF-Flat index (sqrt(n_c) lists, k-means on
a seeded sample; the queries probing a list are scored against it in one
matrix product) whose ``nprobe`` is the smallest power of two reaching
``neighbor_recall`` (default 0.95) recall@k against exact search on 256
sampled rows of the class; a class where no nprobe up to nlist/16 reaches it
(isotropic noise, which an inverted file cannot cut) is searched exactly. The
summary's ``neighbor_search`` says, per class, which index ran and the recall
measured. ``neighbors="exact"`` always searches exactly; any scikit-learn-style
object with ``fit``/``kneighbors`` can be passed instead (fitted on a clone per
class, as imbalanced-learn does). Only the base points actually drawn are
queried, in blocks of ``block_rows``. Peak memory is the class's vectors
(n_c x dim x 4 bytes), the FAISS index over them (the same again), one block
of neighbour lists, and 20 bytes per synthetic row: the synthetic vectors are
not held but made block by block from their parents
(:meth:`SyntheticRows.iter_vectors`), whose classes' vectors stay in memory
when together they fit a quarter of the memory budget (else they are read
from the pool again). Nothing of size N x N is formed, and
classes that only lose rows (under-sampling) are never loaded.

Synthetic rows get ids (:func:`synthetic_ids`): ``"synthetic:<class>:<n>"``
for text ids, the integers after the pool's largest id for integer ids; an id
already in the pool is refused.

Randomness: each class draws from its own generator, seeded by
``thresher.rng.derive_seed(seed, "smote", str(label))`` (and ``"undersample"``
for the under-sampler), so results do not depend on the order classes are
processed in. The exact paths are deterministic; an approximate index (a class
over 20,000 rows) built with several threads may order near-ties differently
from run to run -- pass ``neighbors="exact"`` for bit-for-bit runs.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from thresher.exceptions import InputDataError, ParameterError, parameter_error
from thresher.rng import as_generator, derive_seed
from thresher.search import GroupedIVFSearch, RecallSample, drop_self, exact_search
from thresher.params import HasMethods, Instance, Interval, StrOptions
from thresher.selectors._base import BLOCK_ROWS, ArrayPool, BaseSelector, PoolLike, Selection

StrategyName = Literal["auto", "not majority", "minority", "not minority", "all"]
SamplingStrategy = StrategyName | float | Mapping[Any, int] | Callable[[np.ndarray], Mapping[Any, int]]
NeighborsMode = Literal["auto", "exact"]

_OWNER = "SMOTE"
_STRATEGY_NAMES = ("auto", "not majority", "minority", "not minority", "all")
_REAL = Instance((int, float, np.integer, np.floating), "a float")
_RATIO = Interval(float, 0, 1, closed="right", note="fraction of majority rows kept")
#: default number of base points whose neighbours are searched at once
DEFAULT_QUERY_BLOCK = 16_384
#: "auto" searches a class of up to this many rows exactly: every row is a query, so exact search costs
#: n^2 x dim (20,000 rows of 384 dims: ~0.3 TFLOP, seconds); larger classes get a tuned IVF index.
EXACT_MAX_ROWS = 20_000
#: recall@k an approximate class index must reach on the sample (else the class is searched exactly)
DEFAULT_NEIGHBOR_RECALL = 0.95
#: rows of a class whose exact neighbours measure an approximate index's recall
RECALL_QUERIES = 256


# --------------------------------------------------------------------------------------------------
# Labels and sampling targets (imbalanced-learn semantics)
# --------------------------------------------------------------------------------------------------


def check_labels(labels: Any, n_rows: int, owner: str = _OWNER) -> np.ndarray:
    """Validate class labels aligned with the pool rows: 1-D, one per row, no missing value, >= 2 classes.

    Returns
    -------
    ndarray of shape (n_rows,)
    """
    y = np.asarray(labels)
    if y.ndim != 1:
        raise InputDataError(f"The labels given to {owner} must be one-dimensional (one per pool row); got shape {y.shape}.")
    if len(y) != n_rows:
        raise InputDataError(f"The labels given to {owner} have {len(y)} values but the pool has {n_rows} rows: they must be aligned with the pool.")
    if y.dtype.kind == "f":
        bad = np.flatnonzero(np.isnan(y))
        if len(bad):
            raise InputDataError(f"The label of row {int(bad[0])} is NaN ({len(bad)} rows have no label); every row needs a class.")
    elif y.dtype.kind == "O":
        missing = np.fromiter((v is None or (isinstance(v, float) and math.isnan(v)) for v in y), dtype=bool, count=len(y))
        if missing.any():
            raise InputDataError(f"The label of row {int(np.flatnonzero(missing)[0])} is missing ({int(missing.sum())} rows have no label); every row needs a class.")
    try:
        classes = np.unique(y)
    except TypeError as exc:
        raise InputDataError(f"The labels given to {owner} mix types that cannot be compared ({exc}); use one type.") from None
    if len(classes) < 2:
        raise InputDataError(f"The labels given to {owner} hold {len(classes)} class ({classes.tolist()}); over-sampling needs at least 2 classes.")
    return y


def class_counts(y: np.ndarray) -> dict[Any, int]:
    """Rows per class, in sorted label order (python scalars as keys)."""
    classes, counts = np.unique(y, return_counts=True)
    return dict(zip(classes.tolist(), counts.tolist()))


def majority_class(counts: Mapping[Any, int]) -> Any:
    """The largest class; on a tie the first in sorted label order (as imbalanced-learn)."""
    return max(counts, key=counts.get)


def minority_class(counts: Mapping[Any, int]) -> Any:
    """The smallest class; on a tie the first in sorted label order (as imbalanced-learn)."""
    return min(counts, key=counts.get)


def sampling_targets(sampling_strategy: Any, y: np.ndarray, owner: str = _OWNER) -> dict[Any, int]:
    """Synthetic rows to make per class, as ``imblearn.utils.check_sampling_strategy(..., "over-sampling")``.

    Parameters
    ----------
    sampling_strategy : str, float, dict or callable
        See the module docstring.
    y : ndarray of shape (n_rows,)
        Validated labels (:func:`check_labels`).

    Returns
    -------
    dict of class -> int
        Rows to add per targeted class (>= 0), in sorted label order.
    """
    counts = class_counts(y)
    n_major = counts[majority_class(counts)]
    if isinstance(sampling_strategy, str):
        if sampling_strategy == "majority":
            raise parameter_error(owner, "sampling_strategy", f"one of {list(_STRATEGY_NAMES)} ('majority' cannot over-sample)", sampling_strategy)
        if sampling_strategy not in _STRATEGY_NAMES:
            raise parameter_error(owner, "sampling_strategy", f"one of {list(_STRATEGY_NAMES)}, a float, a dict or a callable", sampling_strategy)
        if sampling_strategy in ("auto", "not majority"):
            skip = majority_class(counts)
            return {c: n_major - n for c, n in counts.items() if c != skip}
        if sampling_strategy == "minority":
            only = minority_class(counts)
            return {c: n_major - n for c, n in counts.items() if c == only}
        if sampling_strategy == "not minority":
            skip = minority_class(counts)
            return {c: n_major - n for c, n in counts.items() if c != skip}
        return {c: n_major - n for c, n in counts.items()}
    if isinstance(sampling_strategy, Mapping):
        return _targets_from_dict(sampling_strategy, counts, owner)
    if _REAL.accepts(sampling_strategy):
        alpha = float(sampling_strategy)
        if not 0.0 < alpha <= 1.0 or math.isnan(alpha):
            raise parameter_error(owner, "sampling_strategy", "a float in (0, 1] (minority / majority after resampling)", sampling_strategy)
        if len(counts) != 2:
            raise parameter_error(owner, "sampling_strategy", f"a str, dict or callable for {len(counts)} classes (a float needs exactly 2)", sampling_strategy)
        skip = majority_class(counts)
        targets = {c: int(n_major * alpha - n) for c, n in counts.items() if c != skip}
        if any(t <= 0 for t in targets.values()):
            minority = next(iter(targets))
            raise parameter_error(
                owner, "sampling_strategy",
                f"a ratio above the current minority/majority ratio {counts[minority] / n_major:.6g} (it would have to remove minority rows)",
                sampling_strategy,
            )
        return targets
    if callable(sampling_strategy):
        result = sampling_strategy(y)
        if not isinstance(result, Mapping):
            raise parameter_error(owner, "sampling_strategy", "a callable returning a dict {class: target count}", f"a callable returning {type(result).__name__}")
        return _targets_from_dict(result, counts, owner)
    raise parameter_error(owner, "sampling_strategy", f"one of {list(_STRATEGY_NAMES)}, a float, a dict or a callable", sampling_strategy)


def _targets_from_dict(wanted: Mapping[Any, Any], counts: Mapping[Any, int], owner: str) -> dict[Any, int]:
    unknown = [c for c in wanted if c not in counts]
    if unknown:
        raise parameter_error(owner, "sampling_strategy", f"a dict over classes present in the labels {list(counts)}", f"classes {unknown}")
    out = {}
    for c, n in wanted.items():
        if not Interval(int, 0, None).accepts(n):
            raise parameter_error(owner, "sampling_strategy", "a dict of target counts that are ints >= 0", {c: n})
        if n < counts[c]:
            raise parameter_error(owner, "sampling_strategy", f"target counts at least the current ones (class {c!r} has {counts[c]} rows)", {c: n})
        out[c] = int(n) - counts[c]
    return dict(sorted(out.items()))


def undersample_targets(undersample_majority: Any, counts: Mapping[Any, int], owner: str = _OWNER) -> dict[Any, int]:
    """Rows to keep per under-sampled class: floor(ratio x n_c) (at least 1 is required).

    ``undersample_majority`` is None (nothing), a float in (0, 1] for the
    majority class, or a dict {class: ratio}.
    """
    if undersample_majority is None:
        return {}
    if isinstance(undersample_majority, Mapping):
        ratios = dict(undersample_majority)
        unknown = [c for c in ratios if c not in counts]
        if unknown:
            raise parameter_error(owner, "undersample_majority", f"a dict over classes present in the labels {list(counts)}", f"classes {unknown}")
    else:
        ratios = {majority_class(counts): undersample_majority}
    out = {}
    for c, ratio in ratios.items():
        if not _RATIO.accepts(ratio):
            raise parameter_error(owner, "undersample_majority", "None, a float in (0, 1] (fraction of majority rows kept) or a dict {class: ratio}", undersample_majority)
        keep = math.floor(float(ratio) * counts[c] + 1e-9)
        if keep < 1:
            raise ParameterError(f"The 'undersample_majority' parameter of {owner} keeps no row of class {c!r} ({ratio} x {counts[c]} rows); raise it.")
        out[c] = keep
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------------------------------
# Neighbours within a class
# --------------------------------------------------------------------------------------------------

Searcher = Callable[[np.ndarray, int], np.ndarray]


def _index_searcher(vectors: np.ndarray, factory: str, seed: int) -> Searcher:
    """A FAISS L2 index of ``factory`` over ``vectors`` (n, dim) float32; returns search(queries, k) -> positions."""
    import faiss

    from thresher.stores.index import DEFAULT_EF_SEARCH, MIN_NPROBE, MIN_TRAIN_ROWS, NPROBE_FRACTION, TRAIN_PER_LIST

    n, dim = vectors.shape
    index = faiss.IndexFlatL2(dim) if factory == "Flat" else faiss.index_factory(dim, factory, faiss.METRIC_L2)
    if not index.is_trained:
        from thresher.search.kmeans import train_index

        ivf = faiss.extract_index_ivf(index)
        ivf.cp.seed = seed % (1 << 31)  # FAISS takes a 32-bit int; derived seeds are 64-bit
        n_train = min(n, max(MIN_TRAIN_ROWS, TRAIN_PER_LIST * ivf.nlist))
        sample = np.sort(as_generator(seed, _OWNER).choice(n, size=n_train, replace=False))
        train_index(index, vectors[sample], seed, what="the class's training sample", positions=sample)  # lists: thread-invariant k-means
        faiss.ParameterSpace().set_index_parameter(index, "nprobe", min(ivf.nlist, max(MIN_NPROBE, ivf.nlist // NPROBE_FRACTION)))
    index.add(vectors)
    if "HNSW" in factory:
        faiss.ParameterSpace().set_index_parameter(index, "efSearch", DEFAULT_EF_SEARCH)

    def search(queries: np.ndarray, k: int) -> np.ndarray:
        return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)[1].astype(np.int64, copy=False)

    return search


def _object_searcher(neighbors: Any, vectors: np.ndarray) -> Searcher:
    """Fit a clone of a scikit-learn-style neighbours object on the class (as imbalanced-learn does)."""
    try:
        from sklearn.base import BaseEstimator, clone

        fitted = clone(neighbors) if isinstance(neighbors, BaseEstimator) else copy.deepcopy(neighbors)
    except ImportError:  # pragma: no cover - scikit-learn is optional
        fitted = copy.deepcopy(neighbors)
    fitted.fit(vectors)

    def search(queries: np.ndarray, k: int) -> np.ndarray:
        return np.asarray(fitted.kneighbors(queries, n_neighbors=k, return_distance=False), dtype=np.int64)

    return search


def grouped_ivf(vectors: np.ndarray, nlist: int, seed: int) -> GroupedIVFSearch:
    """An IVF-Flat search of a class against itself (:class:`thresher.search.GroupedIVFSearch`), ``nprobe`` = 1.

    The coarse quantiser is k-means on a seeded sample of the class (the index
    builder's training size for ``nlist`` lists); every row of the class is a
    query, so the queries probing a list are scored against it in one matrix
    product.
    """
    from thresher.stores.index import MIN_TRAIN_ROWS, TRAIN_PER_LIST

    n_train = min(len(vectors), max(MIN_TRAIN_ROWS, TRAIN_PER_LIST * nlist))
    return GroupedIVFSearch.train(vectors, nlist, seed, n_train=n_train, assign_block_rows=DEFAULT_QUERY_BLOCK)


_GroupedIVF = grouped_ivf  # its name when it was a class of this module


def ivf_nlist(n_rows: int) -> int:
    """IVF list count for a class searched against itself: ``sqrt(n)`` rounded to a power of two (>= 16).

    Every row of the class is a query, so the search costs ``n x nprobe x n / nlist``
    distances and k-means training ``~ nlist^2``; ``sqrt(n)`` lists balance the two
    (the index chooser's ``4 sqrt(n)`` assumes far fewer queries than rows).
    """
    return max(16, 2 ** round(math.log2(math.sqrt(n_rows))))


def class_searcher(
    vectors: np.ndarray,
    k: int,
    *,
    neighbors: Any = "auto",
    seed: int = 0,
    recall_target: float = DEFAULT_NEIGHBOR_RECALL,
    exact_max_rows: int | None = None,
    recall_queries: int = RECALL_QUERIES,
) -> tuple[Searcher, dict[str, Any]]:
    """How the neighbours of one class are searched: a ``search(queries, k) -> positions`` and a report.

    "exact", or "auto" on a class of at most ``exact_max_rows`` rows (default
    :data:`EXACT_MAX_ROWS`): exact ``IndexFlatL2``. "auto" on a larger class: an
    IVF-Flat index (:func:`ivf_nlist` lists, k-means on a seeded sample, searched
    one list at a time with a matrix product: :func:`grouped_ivf`) whose ``nprobe`` is tuned on ``recall_queries``
    seeded rows of the class: the smallest power of two whose recall@k against
    exact search reaches ``recall_target`` (:class:`thresher.search.RecallSample`). When even ``nlist / 16`` probes miss
    it (the class has no structure an inverted file can use, e.g. isotropic
    noise), scanning that much costs more than the exact BLAS search, so the
    class is searched exactly. The memory budget is checked with
    :func:`thresher.stores.index.choose_index_factory` (the class's vectors are
    loaded either way, and an IVF-Flat index holds them once more).

    Returns
    -------
    search : callable
    report : dict
        ``index`` (factory string), ``exact`` (bool), and for a tuned IVF ``nprobe``,
        ``recall_at_k`` (measured on ``recall_queries`` rows), ``k``; after a fallback,
        ``approximate_recall_at_k`` (the best the IVF index reached) and ``nprobe_tried``.
    """
    n, dim = vectors.shape
    if not isinstance(neighbors, str):
        return _object_searcher(neighbors, vectors), {"index": type(neighbors).__name__, "exact": None}
    limit = EXACT_MAX_ROWS if exact_max_rows is None else exact_max_rows
    if neighbors == "exact" or n <= limit:
        return _index_searcher(vectors, "Flat", seed), {"index": "Flat", "exact": True}
    from thresher.config import runtime_config
    from thresher.stores.index import choose_index_factory

    choose_index_factory(n, dim, metric="l2", memory_budget_bytes=runtime_config().memory_budget_bytes)  # refuses a class too large
    nlist = ivf_nlist(n)
    search = grouped_ivf(vectors, nlist, seed)
    rows = np.sort(as_generator(derive_seed(seed, "recall"), _OWNER).choice(n, size=min(n, recall_queries), replace=False))
    sample = RecallSample.of(vectors, rows, k, metric="l2")
    best, tried = 0.0, []
    nprobe = 1
    while nprobe <= max(1, nlist // 16):
        search.nprobe = nprobe
        tried.append(nprobe)
        recall = sample.recall(search(sample.queries, k + 1))
        best = max(best, recall)
        if recall >= recall_target:
            return search, {"index": f"IVF{nlist},Flat", "exact": False, "nprobe": nprobe, "recall_at_k": round(recall, 4),
                            "k": k, "recall_queries": len(rows)}
        nprobe *= 2
    del search
    return _index_searcher(vectors, "Flat", seed), {"index": "Flat", "exact": True, "approximate_recall_at_k": round(best, 4),
                                                     "nprobe_tried": tried, "approximate_index": f"IVF{nlist},Flat"}


def class_neighbors(
    vectors: np.ndarray, queries: np.ndarray, k: int, *, neighbors: Any = "auto", block_rows: int = DEFAULT_QUERY_BLOCK, seed: int = 0,
    search: Searcher | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest neighbours (L2) of some rows of a class among the class, each row itself excluded.

    Parameters
    ----------
    vectors : ndarray of shape (n_class, dim), float32
        The class's vectors.
    queries : ndarray of int64, shape (n_queries,)
        Rows of ``vectors`` whose neighbours are wanted.
    k : int
        Neighbours per row (the class must have more than ``k`` rows).
    neighbors : "auto", "exact" or an object with ``fit`` and ``kneighbors``
        How to search (:func:`class_searcher`); unused when ``search`` is given.
    block_rows : int
        Queries searched at once.
    search : callable, optional
        A searcher from :func:`class_searcher` over ``vectors``.

    Returns
    -------
    positions : ndarray of int64, shape (n_queries, k)
        Rows of ``vectors``, nearest first; valid ones first, ``-1`` after them where an
        approximate index found fewer.
    n_valid : ndarray of int64, shape (n_queries,)
        Valid neighbours per query (>= 1).
    """
    if search is None:
        search, _ = class_searcher(vectors, k, neighbors=neighbors, seed=seed)
    out = np.empty((len(queries), k), dtype=np.int64)
    for lo in range(0, len(queries), block_rows):
        rows = queries[lo : lo + block_rows]
        out[lo : lo + len(rows)] = _drop_self(search(vectors[rows], k + 1), rows, k)
    n_valid = (out >= 0).sum(axis=1)
    lost = np.flatnonzero(n_valid == 0)
    if len(lost):  # an approximate index returned nothing but the row itself: search those exactly
        _, exact = exact_search(vectors, vectors[queries[lost]], k + 1, metric="l2")
        out[lost] = _drop_self(exact, queries[lost], k)
        n_valid[lost] = (out[lost] >= 0).sum(axis=1)
    return out, n_valid


def _drop_self(found: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """From (n, k + 1) neighbour lists of a search or a user's neighbours object, drop each row's own position
    (:func:`thresher.search.drop_self`: valid entries first, so a uniform column among the first n_valid is a
    uniform valid neighbour)."""
    found = np.asarray(found, dtype=np.int64)
    if found.shape != (len(rows), k + 1):
        raise InputDataError(f"The neighbours object returned neighbour lists of shape {found.shape}; expected {(len(rows), k + 1)}.")
    return drop_self(found, rows)


# --------------------------------------------------------------------------------------------------
# The resampling
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticRows:
    """Synthetic rows, grouped by class in sorted label order, held as their parents and gaps.

    The vectors are not stored: :meth:`iter_vectors` makes them block by block
    from the parents' vectors (``x + g (x_nn - x)`` in the pool's dtype), so a
    million synthetic rows hold about 20 MB (two positions and a gap each)
    instead of their vectors; :attr:`vectors` makes them all at once.

    Attributes
    ----------
    base_positions, neighbor_positions : ndarray of int64, shape (n_synthetic,)
        Pool positions of each row's two parents.
    gap : ndarray of float32, shape (n_synthetic,)
        The interpolation weight g in x + g (x_nn - x).
    label : ndarray, shape (n_synthetic,)
    take : callable
        ``take(positions) -> vectors`` of the pool the positions refer to.
    block_rows : int
        Rows made at once by :meth:`iter_vectors` and :attr:`vectors`.
    """

    base_positions: np.ndarray
    neighbor_positions: np.ndarray
    gap: np.ndarray
    label: np.ndarray
    take: Callable[[np.ndarray], np.ndarray] = field(repr=False, compare=False)
    block_rows: int = DEFAULT_QUERY_BLOCK

    def __len__(self) -> int:
        return len(self.gap)

    def vectors_of(self, rows: slice) -> np.ndarray:
        """The vectors of synthetic rows ``rows`` (a slice)."""
        x = self.take(self.base_positions[rows])
        out = self.take(self.neighbor_positions[rows])
        if not out.flags.writeable or not out.flags.owndata:  # a pool that hands out views of its own memory
            out = out.copy()
        out -= x  # x + g (x_nn - x), in place: one block-sized array besides x
        out *= self.gap[rows].astype(x.dtype)[:, None]
        out += x
        return out

    def iter_vectors(self, block_rows: int | None = None) -> Iterator[np.ndarray]:
        """The vectors, ``block_rows`` rows at a time, in row order."""
        block = int(block_rows or self.block_rows)
        for lo in range(0, len(self), block):
            yield self.vectors_of(slice(lo, lo + block))

    @property
    def vectors(self) -> np.ndarray:
        """All the vectors, shape (n_synthetic, dim) (held in memory: prefer :meth:`iter_vectors`)."""
        first = self.take(self.base_positions[:0])
        out = np.empty((len(self), first.shape[1]), dtype=first.dtype)
        for lo, part in zip(range(0, len(self), self.block_rows), self.iter_vectors()):
            out[lo : lo + len(part)] = part
        return out


def _take_sorted(pool: PoolLike, positions: np.ndarray) -> np.ndarray:
    """``pool.take(positions)`` for sorted positions, read block by block: sequential slices of a
    memory-mapped store are several times faster than one gather over all of it."""
    out = None
    for block in pool.iter_blocks():
        if out is None:
            out = np.empty((len(positions), block.vectors.shape[1]), dtype=block.vectors.dtype)
        lo = block.start
        a, b = np.searchsorted(positions, [lo, lo + len(block.vectors)])
        if b - a == len(block.vectors):  # the whole block: one copy
            out[a:b] = block.vectors
        else:
            np.take(block.vectors, positions[a:b] - lo, axis=0, out=out[a:b])
    return out


class _MemberVectors:
    """``take(positions)`` over the vectors of some classes already in memory (``members[i]``: sorted pool positions of ``vectors[i]``)."""

    def __init__(self, members: list[np.ndarray], vectors: list[np.ndarray]):
        positions = members[0] if len(members) == 1 else np.concatenate(members)
        self._vectors = vectors[0] if len(vectors) == 1 else np.concatenate(vectors)
        self._row = np.full(int(positions.max()) + 1, -1, dtype=np.int64)  # pool position -> row of _vectors
        self._row[positions] = np.arange(len(positions))

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        return self._vectors[self._row[positions]]


def synthetic_ids(pool_ids: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Deterministic ids for synthetic rows (grouped by class, as :class:`SyntheticRows`).

    Text ids: ``"synthetic:<class>:<n>"``, ``n`` counting the class's synthetic rows
    from 0. Integer ids: ``max(pool id) + 1``, ``+ 2``, … in row order (as if the rows
    were appended to the pool). Either way unique; an id already in the pool is
    refused (:class:`InputDataError`, naming it).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(label)
    if pool_ids.dtype.kind in "iu":
        top = int(pool_ids.max()) if len(pool_ids) else -1
        if top > np.iinfo(np.int64).max - n:
            raise InputDataError(f"The pool's largest id {top} leaves no room for {n} synthetic integer ids after it (int64).")
        return np.arange(top + 1, top + 1 + n, dtype=np.int64)
    ids = np.empty(n, dtype=object)
    if n:
        starts = np.flatnonzero(np.r_[True, label[1:] != label[:-1]])
        for lo, hi in zip(starts, np.r_[starts[1:], n]):
            ids[lo:hi] = [f"synthetic:{label[lo]}:{i}" for i in range(hi - lo)]
        clash = pc.is_in(pa.array(ids.tolist(), pa.string()), value_set=pa.array(pool_ids.tolist(), pa.string()))
        if pc.any(clash).as_py():
            bad = ids[int(np.flatnonzero(clash.to_numpy(zero_copy_only=False))[0])]
            raise InputDataError(f"The pool already holds the id {bad!r}, which SMOTE gives a synthetic row; rename that pool row.")
    return ids


@dataclass(frozen=True)
class SMOTESelection(Selection):
    """A :class:`Selection` of the kept pool rows, plus the synthetic rows (:attr:`synthetic`).

    ``positions``/``ids`` are the kept original rows in pool order; their
    ``columns`` are ``synthetic`` (False), ``label`` and ``embedding``.
    :meth:`iter_synthetic_columns` gives the synthetic rows' columns block by
    block: ``id`` (:func:`synthetic_ids`), ``synthetic`` (True), ``parents``
    (base id, neighbour id), ``gap``, ``label``, ``embedding``.
    """

    synthetic: SyntheticRows | None = None
    synthetic_parents: np.ndarray | None = field(default=None)
    synthetic_ids: np.ndarray | None = field(default=None)

    def iter_synthetic_columns(self, block_rows: int | None = None) -> Iterator[dict[str, Any]]:
        """The synthetic rows' columns, ``block_rows`` rows at a time (only one block of vectors is held)."""
        s = self.synthetic
        if s is None:
            return
        block = int(block_rows or s.block_rows)
        for lo in range(0, len(s), block):
            rows = slice(lo, lo + block)
            yield {"id": self.synthetic_ids[rows], "synthetic": np.ones(len(s.gap[rows]), dtype=bool), "parents": self.synthetic_parents[rows],
                   "gap": s.gap[rows], "label": s.label[rows], "embedding": s.vectors_of(rows)}

    def synthetic_columns(self) -> dict[str, Any]:
        """All the synthetic rows' columns at once (the vectors held in memory)."""
        s = self.synthetic
        if s is None:
            return {}
        return {"id": self.synthetic_ids, "synthetic": np.ones(len(s), dtype=bool), "parents": self.synthetic_parents, "gap": s.gap,
                "label": s.label, "embedding": s.vectors}


@dataclass(frozen=True)
class ResamplePlan:
    """What the resampling will do: counts before, rows added and kept per class."""

    counts: dict[Any, int]
    n_new: dict[Any, int]
    n_keep: dict[Any, int]

    def counts_after(self) -> dict[Any, int]:
        return {c: self.n_keep.get(c, n) + self.n_new.get(c, 0) for c, n in self.counts.items()}


class SMOTE(BaseSelector):
    """SMOTE over-sampling in embedding space, with optional random under-sampling of the majority.

    Parameters
    ----------
    k_neighbors : int, default 5
        Same-class neighbours a synthetic row's second parent is drawn from.
    sampling_strategy : str, float, dict or callable, default "auto"
        Rows to add per class, with imbalanced-learn's meaning (module docstring).
    undersample_majority : float in (0, 1], dict {class: ratio} or None, default None
        Keep floor(ratio x n) rows of the majority class (or of each named class), drawn uniformly.
    neighbors : "auto", "exact" or an object with ``fit`` and ``kneighbors``, default "auto"
        How neighbours are found (module docstring).
    neighbor_recall : float in (0, 1], default 0.95
        With "auto", the recall@k a class's approximate index must reach on a sample of the
        class (measured against exact search); a class where it cannot is searched exactly.
    block_rows : int or None
        Base points searched and synthetic rows built at once (default 16,384).
    seed : int, default 0

    Examples
    --------
    >>> X_res, y_res = SMOTE(seed=0).fit_resample(X, y)                       # doctest: +SKIP
    >>> sel = SMOTE(undersample_majority=0.5).select(store, budget=1.0, labels=y)  # doctest: +SKIP
    >>> sel.positions, sel.synthetic_ids, sel.synthetic_parents               # doctest: +SKIP
    >>> for block in sel.iter_synthetic_columns(): ...                        # doctest: +SKIP
    """

    name = "smote"
    _parameter_constraints = {
        "k_neighbors": [Interval(int, 1, None)],
        # its values are checked against the labels, in sampling_targets
        "sampling_strategy": [Instance(str, "a str"), _REAL, Instance(Mapping, "a dict"), callable],
        "undersample_majority": [None, _RATIO, Instance(Mapping, "a dict {class: ratio}")],
        "neighbors": [StrOptions("auto", "exact"), HasMethods("fit", "kneighbors")],
        "neighbor_recall": [Interval(float, 0, 1, closed="right", note="recall@k an approximate class index must reach")],
        "block_rows": BLOCK_ROWS,
        "seed": [Interval(int, 0, None)],
    }

    def __init__(
        self,
        *,
        k_neighbors: int = 5,
        sampling_strategy: SamplingStrategy = "auto",
        undersample_majority: float | Mapping[Any, float] | None = None,
        neighbors: NeighborsMode | Any = "auto",
        neighbor_recall: float = DEFAULT_NEIGHBOR_RECALL,
        block_rows: int | None = None,
        seed: int = 0,
    ):
        self.k_neighbors = k_neighbors
        self.sampling_strategy = sampling_strategy
        self.undersample_majority = undersample_majority
        self.neighbors = neighbors
        self.neighbor_recall = neighbor_recall
        self.block_rows = block_rows
        self.seed = seed

    # -- validation ---------------------------------------------------------------------------------

    def plan(self, y: np.ndarray) -> ResamplePlan:
        """Validate the settings against validated labels ``y`` and compute the per-class counts."""
        self.validate_params()
        counts = class_counts(y)
        n_new = sampling_targets(self.sampling_strategy, y)
        n_keep = undersample_targets(self.undersample_majority, counts)
        both = [c for c in n_keep if n_new.get(c, 0) > 0]
        if both:
            raise ParameterError(
                f"{_OWNER} would both over-sample and under-sample class(es) {both}: choose a sampling_strategy that leaves "
                "the under-sampled classes alone, or drop undersample_majority."
            )
        for c, n in n_new.items():
            if n > 0 and counts[c] <= self.k_neighbors:
                raise ParameterError(
                    f"Class {c!r} has {counts[c]} rows; SMOTE needs more than k_neighbors = {self.k_neighbors} rows in a class it "
                    f"over-samples (each row's {self.k_neighbors} nearest same-class neighbours). Lower k_neighbors or leave the class out."
                )
        return ResamplePlan(counts=counts, n_new={c: n for c, n in n_new.items() if n > 0}, n_keep=n_keep)

    # -- the algorithm ------------------------------------------------------------------------------

    def _resample(
        self, n_rows: int, y: np.ndarray, take: Callable[[np.ndarray], np.ndarray], plan: ResamplePlan
    ) -> tuple[np.ndarray, SyntheticRows, dict[str, Any]]:
        """Kept pool positions (sorted), the synthetic rows, and how each over-sampled class's neighbours were searched."""
        block = int(self.block_rows or DEFAULT_QUERY_BLOCK)
        keep = np.ones(n_rows, dtype=bool)
        for c, n_keep in plan.n_keep.items():
            members = np.flatnonzero(y == c)
            rng = as_generator(derive_seed(self.seed, "undersample", str(c)), _OWNER)
            chosen = rng.choice(len(members), size=n_keep, replace=False)
            drop = np.ones(len(members), dtype=bool)
            drop[chosen] = False
            keep[members[drop]] = False
        parts, reports, loaded = [], {}, []
        for c, n_new in plan.n_new.items():
            *part, vectors, reports[str(c)] = self._class_synthetic(c, n_new, np.flatnonzero(y == c), take, block)
            parts.append(part)
            loaded.append(vectors)
        if parts:
            base, neighbor, gap = (np.concatenate(p_) for p_ in zip(*parts))
        else:
            base, neighbor, gap = np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
        from thresher.config import runtime_config

        if loaded and sum(v.nbytes for v in loaded) <= runtime_config().memory_budget_bytes // 4:
            # the parents' vectors were loaded for the neighbour search: keep them, so making the
            # synthetic rows reads no pool row again (random reads from a memory-mapped store are slow)
            take = _MemberVectors([np.flatnonzero(y == c) for c in plan.n_new], loaded)
        del loaded
        synthetic = SyntheticRows(base, neighbor, gap, y[base], take=take, block_rows=block)
        return np.flatnonzero(keep), synthetic, reports

    def _class_synthetic(self, c: Any, n_new: int, members: np.ndarray, take: Callable[[np.ndarray], np.ndarray], block: int):
        """Parents (pool positions) and gaps of ``n_new`` synthetic rows of class ``c`` (pool positions ``members``),
        the class's vectors, and the neighbour search's report."""
        rng = as_generator(derive_seed(self.seed, "smote", str(c)), _OWNER)
        base = rng.integers(0, len(members), size=n_new)
        pick = rng.random(n_new)
        gap = rng.random(n_new, dtype=np.float32)
        vectors = take(members)
        vectors32 = np.ascontiguousarray(vectors, dtype=np.float32)
        search, report = class_searcher(vectors32, self.k_neighbors, neighbors=self.neighbors, seed=derive_seed(self.seed, "index", str(c)),
                                        recall_target=self.neighbor_recall)
        bases, inverse = np.unique(base, return_inverse=True)
        nn, n_valid = class_neighbors(vectors32, bases, self.k_neighbors, block_rows=block, search=search)
        del search, vectors32
        column = np.minimum((pick * n_valid[inverse]).astype(np.int64), n_valid[inverse] - 1)
        neighbor = nn[inverse, column]
        return members[base], members[neighbor], gap, vectors, {**report, "n_rows": int(len(members)), "n_searched": int(len(bases))}

    def fit_resample(self, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """Resample in memory, as ``imblearn.over_sampling.SMOTE.fit_resample``.

        Parameters
        ----------
        X : array of shape (n_rows, dim), floats
        y : array of shape (n_rows,)

        Returns
        -------
        X_res : ndarray of shape (n_kept + n_synthetic, dim), X's float dtype
            The kept original rows in their order, then the synthetic rows grouped by class (sorted labels).
        y_res : ndarray of shape (n_kept + n_synthetic,)
        """
        self.validate_params()
        X = np.asarray(X)
        ArrayPool(X, owner=_OWNER)  # same refusals as select()
        y = check_labels(y, X.shape[0])
        plan = self.plan(y)
        kept, synthetic, _ = self._resample(X.shape[0], y, lambda p: X[p], plan)
        everything = len(kept) == len(X)  # nothing under-sampled: no intermediate copy of X
        X_res = np.concatenate([X if everything else X[kept], synthetic.vectors.astype(X.dtype, copy=False)])
        y_res = np.concatenate([y if everything else y[kept], synthetic.label.astype(y.dtype, copy=False)])
        return X_res, y_res

    def _select(self, pool: PoolLike, *, budget: int, rng: np.random.Generator, labels: Any = None) -> SMOTESelection:
        if budget != pool.n_rows:
            raise parameter_error(_OWNER, "budget", "1.0 (SMOTE keeps every row but the under-sampled ones)", budget)
        if labels is None:
            raise ParameterError("SMOTE.select needs labels=<array of one class per pool row>.")
        y = check_labels(labels, pool.n_rows)
        plan = self.plan(y)
        kept, synthetic, neighbor_search = self._resample(pool.n_rows, y, pool.take, plan)
        all_ids = pool.ids()
        parents = np.stack([all_ids[synthetic.base_positions], all_ids[synthetic.neighbor_positions]], axis=1) if len(synthetic) else all_ids[:0].reshape(0, 2)
        embedding = _take_sorted(pool, kept)
        summary = {
            "class_counts_before": {str(c): n for c, n in plan.counts.items()},
            "class_counts_after": {str(c): n for c, n in plan.counts_after().items()},
            "n_synthetic": int(len(synthetic)),
            "n_undersampled": int(pool.n_rows - len(kept)),
            "n_kept": int(len(kept)),
            "synthetic_per_class": {str(c): n for c, n in plan.n_new.items()},
            "kept_per_undersampled_class": {str(c): n for c, n in plan.n_keep.items()},
            "neighbor_search": neighbor_search,
        }
        return SMOTESelection(
            positions=kept.astype(np.int64),
            ids=all_ids[kept],
            selector=self.name,
            params=self.describe_params(),
            columns={"synthetic": np.zeros(len(kept), dtype=bool), "label": y[kept], "embedding": embedding},
            seed=self.seed,
            summary=summary,
            synthetic=synthetic,
            synthetic_parents=parents,
            synthetic_ids=synthetic_ids(all_ids, synthetic.label),
        )

    def describe_params(self) -> dict[str, Any]:
        """The settings as JSON-able values (a callable or neighbours object by its name)."""
        params = self.get_params()
        s = params["sampling_strategy"]
        if callable(s) and not isinstance(s, Mapping):
            params["sampling_strategy"] = f"callable:{getattr(s, '__qualname__', type(s).__name__)}"
        elif isinstance(s, Mapping):
            params["sampling_strategy"] = {str(k): int(v) for k, v in s.items()}
        if isinstance(params["undersample_majority"], Mapping):
            params["undersample_majority"] = {str(k): float(v) for k, v in params["undersample_majority"].items()}
        if not isinstance(params["neighbors"], str):
            params["neighbors"] = type(params["neighbors"]).__name__
        return params
