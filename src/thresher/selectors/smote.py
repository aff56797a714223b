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
class's float32 vectors: exact ``IndexFlatL2`` up to 100,000 rows, above that the
index :func:`thresher.stores.index.choose_index_factory` picks within the
memory budget (HNSW, then IVF) -- or any scikit-learn-style object with
``fit``/``kneighbors`` passed as ``neighbors=`` (fitted on a clone per class,
as imbalanced-learn does). Only the base points actually drawn are queried, in
blocks of ``block_rows``; peak memory is the class's vectors (n_c x dim x 4
bytes), the FAISS index over them (the same again for Flat/IVF-Flat, about
+256 bytes a row for HNSW), one block of neighbour lists, and the synthetic
rows themselves (n_new x dim). Nothing of size N x N is formed, and classes
that only lose rows (under-sampling) are never loaded.

Randomness: each class draws from its own generator, seeded by
``thresher.rng.derive_seed(seed, "smote", str(label))`` (and ``"undersample"``
for the under-sampler), so results do not depend on the order classes are
processed in. The exact paths are deterministic; an approximate index (a class
over 100,000 rows) built with several threads may order near-ties differently
from run to run -- pass ``neighbors="exact"`` for bit-for-bit runs.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from thresher.exceptions import InputDataError, ParameterError, parameter_error
from thresher.rng import as_generator, derive_seed
from thresher.selectors._base import ArrayPool, BaseSelector, PoolLike, Selection

StrategyName = Literal["auto", "not majority", "minority", "not minority", "all"]
SamplingStrategy = StrategyName | float | Mapping[Any, int] | Callable[[np.ndarray], Mapping[Any, int]]
NeighborsMode = Literal["auto", "exact"]

_OWNER = "SMOTE"
_STRATEGY_NAMES = ("auto", "not majority", "minority", "not minority", "all")
#: default number of base points whose neighbours are searched at once
DEFAULT_QUERY_BLOCK = 16_384


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
    if isinstance(sampling_strategy, (float, np.floating, int, np.integer)) and not isinstance(sampling_strategy, (bool, np.bool_)):
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
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 0:
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
        if isinstance(ratio, (bool, np.bool_)) or not isinstance(ratio, (int, float, np.integer, np.floating)) or not 0.0 < float(ratio) <= 1.0:
            raise parameter_error(owner, "undersample_majority", "None, a float in (0, 1] (fraction of majority rows kept) or a dict {class: ratio}", undersample_majority)
        keep = math.floor(float(ratio) * counts[c] + 1e-9)
        if keep < 1:
            raise ParameterError(f"The 'undersample_majority' parameter of {owner} keeps no row of class {c!r} ({ratio} x {counts[c]} rows); raise it.")
        out[c] = keep
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------------------------------
# Neighbours within a class
# --------------------------------------------------------------------------------------------------


def _index_searcher(vectors: np.ndarray, factory: str, seed: int) -> Callable[[np.ndarray, int], np.ndarray]:
    """A FAISS L2 index of ``factory`` over ``vectors`` (n, dim) float32; returns search(queries, k) -> positions."""
    import faiss

    from thresher.stores.index import DEFAULT_EF_SEARCH, MIN_NPROBE, MIN_TRAIN_ROWS, NPROBE_FRACTION, TRAIN_PER_LIST

    n, dim = vectors.shape
    index = faiss.IndexFlatL2(dim) if factory == "Flat" else faiss.index_factory(dim, factory, faiss.METRIC_L2)
    if not index.is_trained:
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.seed = seed
        n_train = min(n, max(MIN_TRAIN_ROWS, TRAIN_PER_LIST * ivf.nlist))
        sample = np.sort(as_generator(seed, _OWNER).choice(n, size=n_train, replace=False))
        index.train(vectors[sample])
        faiss.ParameterSpace().set_index_parameter(index, "nprobe", min(ivf.nlist, max(MIN_NPROBE, ivf.nlist // NPROBE_FRACTION)))
    index.add(vectors)
    if "HNSW" in factory:
        faiss.ParameterSpace().set_index_parameter(index, "efSearch", DEFAULT_EF_SEARCH)

    def search(queries: np.ndarray, k: int) -> np.ndarray:
        return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)[1].astype(np.int64, copy=False)

    return search


def _object_searcher(neighbors: Any, vectors: np.ndarray) -> Callable[[np.ndarray, int], np.ndarray]:
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


def class_neighbors(
    vectors: np.ndarray, queries: np.ndarray, k: int, *, neighbors: Any = "auto", block_rows: int = DEFAULT_QUERY_BLOCK, seed: int = 0
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
        "exact": ``IndexFlatL2``; "auto": the index :func:`choose_index_factory` picks
        (``Flat`` up to 100,000 rows).
    block_rows : int
        Queries searched at once.

    Returns
    -------
    positions : ndarray of int64, shape (n_queries, k)
        Rows of ``vectors``, nearest first; valid ones first, ``-1`` after them where an
        approximate index found fewer.
    n_valid : ndarray of int64, shape (n_queries,)
        Valid neighbours per query (>= 1).
    """
    n, dim = vectors.shape
    if isinstance(neighbors, str):
        from thresher.config import runtime_config
        from thresher.stores.index import choose_index_factory

        factory = "Flat" if neighbors == "exact" else choose_index_factory(n, dim, metric="l2", memory_budget_bytes=runtime_config().memory_budget_bytes)
        search = _index_searcher(vectors, factory, seed)
    else:
        search = _object_searcher(neighbors, vectors)
    out = np.empty((len(queries), k), dtype=np.int64)
    for lo in range(0, len(queries), block_rows):
        rows = queries[lo : lo + block_rows]
        out[lo : lo + len(rows)] = _drop_self(search(vectors[rows], k + 1), rows, k)
    n_valid = (out >= 0).sum(axis=1)
    lost = np.flatnonzero(n_valid == 0)
    if len(lost):  # an approximate index returned nothing but the row itself: search those exactly
        from thresher.stores.index import exact_search

        _, exact = exact_search(vectors, vectors[queries[lost]], k + 1, metric="l2")
        out[lost] = _drop_self(exact, queries[lost], k)
        n_valid[lost] = (out[lost] >= 0).sum(axis=1)
    return out, n_valid


def _drop_self(found: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """From (n, k + 1) neighbour lists drop each row's own position, or the last entry when it is absent
    (duplicates of the row can push it out of the list); missing entries (-1) stay last."""
    found = np.asarray(found, dtype=np.int64)
    if found.shape != (len(rows), k + 1):
        raise InputDataError(f"The neighbours object returned neighbour lists of shape {found.shape}; expected {(len(rows), k + 1)}.")
    drop = found == rows[:, None]
    drop[~drop.any(axis=1), k] = True
    kept = found[~drop].reshape(len(rows), k)
    # keep valid entries first (stable), so a uniform column among the first n_valid is a uniform valid neighbour
    order = np.argsort(kept < 0, axis=1, kind="stable")
    return np.take_along_axis(kept, order, axis=1)


# --------------------------------------------------------------------------------------------------
# The resampling
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticRows:
    """Synthetic rows, grouped by class in sorted label order.

    Attributes
    ----------
    base_positions, neighbor_positions : ndarray of int64, shape (n_synthetic,)
        Pool positions of each row's two parents.
    gap : ndarray of float32, shape (n_synthetic,)
        The interpolation weight g in x + g (x_nn - x).
    label : ndarray, shape (n_synthetic,)
    vectors : ndarray of shape (n_synthetic, dim)
    """

    base_positions: np.ndarray
    neighbor_positions: np.ndarray
    gap: np.ndarray
    label: np.ndarray
    vectors: np.ndarray

    def __len__(self) -> int:
        return len(self.gap)


@dataclass(frozen=True)
class SMOTESelection(Selection):
    """A :class:`Selection` of the kept pool rows, plus the synthetic rows (:attr:`synthetic`).

    ``positions``/``ids`` are the kept original rows in pool order; their
    ``columns`` are ``synthetic`` (False), ``label`` and ``embedding``.
    :meth:`synthetic_columns` gives the synthetic rows' columns: ``synthetic``
    (True), ``parents`` (base id, neighbour id), ``gap``, ``label``, ``embedding``.
    """

    synthetic: SyntheticRows | None = None
    synthetic_parents: np.ndarray | None = field(default=None)

    def synthetic_columns(self) -> dict[str, Any]:
        s = self.synthetic
        if s is None:
            return {}
        return {"synthetic": np.ones(len(s), dtype=bool), "parents": self.synthetic_parents, "gap": s.gap, "label": s.label, "embedding": s.vectors}


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
    block_rows : int or None
        Base points searched and synthetic rows built at once (default 16,384).
    seed : int, default 0

    Examples
    --------
    >>> X_res, y_res = SMOTE(seed=0).fit_resample(X, y)                       # doctest: +SKIP
    >>> sel = SMOTE(undersample_majority=0.5).select(store, budget=1.0, labels=y)  # doctest: +SKIP
    >>> sel.positions, sel.synthetic.vectors, sel.synthetic_parents           # doctest: +SKIP
    """

    name = "smote"

    def __init__(
        self,
        *,
        k_neighbors: int = 5,
        sampling_strategy: SamplingStrategy = "auto",
        undersample_majority: float | Mapping[Any, float] | None = None,
        neighbors: NeighborsMode | Any = "auto",
        block_rows: int | None = None,
        seed: int = 0,
    ):
        self.k_neighbors = k_neighbors
        self.sampling_strategy = sampling_strategy
        self.undersample_majority = undersample_majority
        self.neighbors = neighbors
        self.block_rows = block_rows
        self.seed = seed

    # -- validation ---------------------------------------------------------------------------------

    def _validate_params(self) -> None:
        k = self.k_neighbors
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
            raise parameter_error(_OWNER, "k_neighbors", "an int >= 1", k)
        if isinstance(self.neighbors, str):
            if self.neighbors not in ("auto", "exact"):
                raise parameter_error(_OWNER, "neighbors", "'auto', 'exact' or an object with fit() and kneighbors()", self.neighbors)
        elif not (hasattr(self.neighbors, "kneighbors") and hasattr(self.neighbors, "fit")):
            raise parameter_error(_OWNER, "neighbors", "'auto', 'exact' or an object with fit() and kneighbors()", type(self.neighbors).__name__)
        b = self.block_rows
        if b is not None and (isinstance(b, (bool, np.bool_)) or not isinstance(b, (int, np.integer)) or b < 1):
            raise parameter_error(_OWNER, "block_rows", "None or an int >= 1", b)
        s = self.seed
        if isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)) or s < 0:
            raise parameter_error(_OWNER, "seed", "an int >= 0", s)
        u = self.undersample_majority
        if u is not None and not isinstance(u, Mapping):
            if isinstance(u, (bool, np.bool_)) or not isinstance(u, (int, float, np.integer, np.floating)) or not 0.0 < float(u) <= 1.0:
                raise parameter_error(_OWNER, "undersample_majority", "None, a float in (0, 1] (fraction of majority rows kept) or a dict {class: ratio}", u)

    def plan(self, y: np.ndarray) -> ResamplePlan:
        """Validate the settings against validated labels ``y`` and compute the per-class counts."""
        self._validate_params()
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

    def _resample(self, n_rows: int, y: np.ndarray, take: Callable[[np.ndarray], np.ndarray], plan: ResamplePlan) -> tuple[np.ndarray, SyntheticRows, int]:
        """Kept pool positions (sorted), the synthetic rows, and the vector width."""
        block = int(self.block_rows or DEFAULT_QUERY_BLOCK)
        keep = np.ones(n_rows, dtype=bool)
        for c, n_keep in plan.n_keep.items():
            members = np.flatnonzero(y == c)
            rng = as_generator(derive_seed(self.seed, "undersample", str(c)), _OWNER)
            chosen = rng.choice(len(members), size=n_keep, replace=False)
            drop = np.ones(len(members), dtype=bool)
            drop[chosen] = False
            keep[members[drop]] = False
        parts = [self._class_synthetic(c, n_new, np.flatnonzero(y == c), y, take, block) for c, n_new in plan.n_new.items()]
        if parts:
            dim = parts[0][4].shape[1]
            # one class (the usual binary case) is used as it is: no second copy of the synthetic vectors
            synthetic = SyntheticRows(*[p_[0] if len(parts) == 1 else np.concatenate(p_) for p_ in zip(*parts)])
        else:
            probe = take(np.zeros(1, dtype=np.int64))
            dim = probe.shape[1]
            synthetic = SyntheticRows(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32), y[:0], np.empty((0, dim), probe.dtype))
        return np.flatnonzero(keep), synthetic, dim

    def _class_synthetic(self, c: Any, n_new: int, members: np.ndarray, y: np.ndarray, take: Callable[[np.ndarray], np.ndarray], block: int):
        """``n_new`` synthetic rows of class ``c`` (pool positions ``members``)."""
        rng = as_generator(derive_seed(self.seed, "smote", str(c)), _OWNER)
        base = rng.integers(0, len(members), size=n_new)
        pick = rng.random(n_new)
        gap = rng.random(n_new, dtype=np.float32)
        vectors = take(members)
        vectors32 = np.ascontiguousarray(vectors, dtype=np.float32)
        bases, inverse = np.unique(base, return_inverse=True)
        nn, n_valid = class_neighbors(vectors32, bases, self.k_neighbors, neighbors=self.neighbors, block_rows=block,
                                      seed=derive_seed(self.seed, "index", str(c)))
        column = np.minimum((pick * n_valid[inverse]).astype(np.int64), n_valid[inverse] - 1)
        neighbor = nn[inverse, column]
        out = np.empty((n_new, vectors.shape[1]), dtype=vectors.dtype)
        g = gap.astype(vectors.dtype)
        for lo in range(0, n_new, block):
            hi = min(lo + block, n_new)
            x = vectors[base[lo:hi]]
            out[lo:hi] = x + g[lo:hi, None] * (vectors[neighbor[lo:hi]] - x)
        del vectors32
        return members[base], members[neighbor], gap, y[members[base]], out

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
        self._validate_params()
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
        kept, synthetic, dim = self._resample(pool.n_rows, y, pool.take, plan)
        all_ids = pool.ids()
        parents = np.stack([all_ids[synthetic.base_positions], all_ids[synthetic.neighbor_positions]], axis=1) if len(synthetic) else all_ids[:0].reshape(0, 2)
        embedding = pool.take(kept) if len(kept) else np.empty((0, dim), np.float32)
        summary = {
            "class_counts_before": {str(c): n for c, n in plan.counts.items()},
            "class_counts_after": {str(c): n for c, n in plan.counts_after().items()},
            "n_synthetic": int(len(synthetic)),
            "n_undersampled": int(pool.n_rows - len(kept)),
            "n_kept": int(len(kept)),
            "synthetic_per_class": {str(c): n for c, n in plan.n_new.items()},
            "kept_per_undersampled_class": {str(c): n for c, n in plan.n_keep.items()},
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
