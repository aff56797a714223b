"""The selector contract, shared by every selector (after scikit-learn's estimator contract).

- The constructor only stores keyword settings; :meth:`get_params` returns them.
- :meth:`BaseSelector.select` is the one public verb. It validates and
  normalises the pool and ``budget`` (a count, or a fraction of the pool),
  turns ``seed`` into a :class:`numpy.random.Generator`, and hands over to the
  private ``_select`` that holds the algorithm.
- The pool is a numpy array of shape (n_rows, dim) or anything with the
  embedding store's reading protocol (``n_rows``, ``dim``, ``iter_blocks``,
  ``take``, ``ids``): selectors never open files or talk to Dask.
- The result is a :class:`Selection`: a frozen record of positions and ids in
  rank order, scores, weights, extra columns and the parameters, which the
  curated-shard writer stores as it is.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

from thresher.exceptions import InputDataError, ParameterError, parameter_error
from thresher.rng import as_generator

SELECTORS: dict[str, type[BaseSelector]] = {}


class PoolBlock(Protocol):
    start: int
    ids: np.ndarray
    vectors: np.ndarray


class PoolLike(Protocol):
    """What a selector reads: the embedding store's protocol, which :class:`ArrayPool` also follows."""

    n_rows: int
    dim: int

    def iter_blocks(self, block_rows: int | None = None) -> Iterator[PoolBlock]: ...

    def take(self, positions: np.ndarray) -> np.ndarray: ...

    def ids(self) -> np.ndarray: ...


@dataclass(frozen=True)
class _Block:
    start: int
    ids: np.ndarray
    vectors: np.ndarray


class ArrayPool:
    """A numpy array seen as a pool: ids are the row positions."""

    def __init__(self, vectors: np.ndarray, *, owner: str = "selector"):
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.shape[1] == 0:
            raise InputDataError(f"The pool given to {owner} must be a non-empty 2-D array (n_rows, dim); got shape {vectors.shape}.")
        if not np.issubdtype(vectors.dtype, np.floating):
            raise InputDataError(f"The pool given to {owner} must hold floats; got dtype {vectors.dtype}.")
        self.vectors = vectors
        self.n_rows, self.dim = vectors.shape

    def iter_blocks(self, block_rows: int | None = None) -> Iterator[_Block]:
        block_rows = block_rows or self.n_rows
        for lo in range(0, self.n_rows, block_rows):
            hi = min(lo + block_rows, self.n_rows)
            yield _Block(lo, np.arange(lo, hi, dtype=np.int64), np.asarray(self.vectors[lo:hi], dtype=np.float32))

    def take(self, positions: np.ndarray) -> np.ndarray:
        return np.asarray(self.vectors[np.asarray(positions, dtype=np.int64)], dtype=np.float32)

    def ids(self) -> np.ndarray:
        return np.arange(self.n_rows, dtype=np.int64)


def as_pool(pool: Any, owner: str) -> PoolLike:
    """A numpy array becomes an :class:`ArrayPool`; a store (or anything with its protocol) is used as it is."""
    if isinstance(pool, np.ndarray) or isinstance(pool, (list, tuple)):
        return ArrayPool(np.asarray(pool), owner=owner)
    if all(hasattr(pool, a) for a in ("n_rows", "dim", "iter_blocks", "take", "ids")):
        if pool.n_rows == 0:
            raise InputDataError(f"The pool given to {owner} is empty.")
        return pool
    raise InputDataError(f"The pool given to {owner} must be a numpy array or an embedding store; got {type(pool).__name__}.")


def budget_rounding(budget: Any, n_available: int, count: int) -> str | None:
    """Say how a fractional ``budget`` became ``count`` rows when it was not a whole number of them, else None.

    >>> budget_rounding(0.1, 24, 2)
    'budget 0.1 of 24 rows = 2.4, rounded down to 2'
    """
    if isinstance(budget, (bool, np.bool_)) or not isinstance(budget, (float, np.floating)):
        return None
    exact = float(budget) * n_available
    if abs(exact - count) < 1e-9:
        return None
    return f"budget {float(budget):g} of {n_available} rows = {exact:.6g}, rounded {'down' if count < exact else 'up'} to {count}"


def resolve_budget(budget: Any, n_available: int, owner: str, *, name: str = "budget") -> int:
    """Turn ``budget`` (an int >= 1, or a float in (0, 1] as a fraction of ``n_available``) into a count.

    A count larger than what is available is refused rather than clamped:
    pass 1.0 to take everything.
    """
    expected = "an int >= 1 or a float in (0, 1]"
    if isinstance(budget, (bool, np.bool_)):
        raise parameter_error(owner, name, expected, budget)
    if isinstance(budget, (int, np.integer)):
        if budget < 1:
            raise parameter_error(owner, name, expected, budget)
        count = int(budget)
    elif isinstance(budget, (float, np.floating)):
        if not (0.0 < budget <= 1.0) or math.isnan(budget):
            raise parameter_error(owner, name, expected, budget)
        count = max(1, math.floor(budget * n_available + 1e-9))
    else:
        raise parameter_error(owner, name, expected, budget)
    if count > n_available:
        raise ParameterError(
            f"The {name!r} parameter of {owner} asks for {count} rows but only {n_available} are available; "
            f"lower it, or pass {name}=1.0 to take all of them."
        )
    return count


@dataclass(frozen=True)
class Selection:
    """What a selector chose, best first.

    Attributes
    ----------
    positions : ndarray of int64, shape (n_selected,)
        Row offsets in the pool (store order), in rank order.
    ids : ndarray, shape (n_selected,)
        The pool ids at those positions (equal to ``positions`` for a bare array).
    score : ndarray of float, shape (n_selected,), or None
    weight : ndarray of float, shape (n_selected,), or None
    columns : mapping of str to ndarray
        Extra per-row columns (``task``, ``batch``, …).
    selector, params, seed, summary
        Provenance, stored in the curated shards' manifest.
    """

    positions: np.ndarray
    ids: np.ndarray
    selector: str
    params: Mapping[str, Any]
    score: np.ndarray | None = None
    weight: np.ndarray | None = None
    columns: Mapping[str, np.ndarray] = field(default_factory=dict)
    seed: int | None = None
    summary: Mapping[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.positions)

    def selection_columns(self) -> dict[str, np.ndarray]:
        """The columns the curated-shard writer adds beside the pool's own."""
        out: dict[str, np.ndarray] = {}
        if self.score is not None:
            out["score"] = self.score
        if self.weight is not None:
            out["weight"] = self.weight
        out.update(self.columns)
        return out


class BaseSelector:
    """Base class of every selector; subclasses set ``name`` and implement ``_select``."""

    name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            SELECTORS[cls.name] = cls

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values() if p.name != "self" and p.kind == p.KEYWORD_ONLY]

    def get_params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._param_names()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def select(self, pool: Any, *, budget: int | float, **inputs: Any) -> Selection:
        """Choose ``budget`` rows of ``pool`` (array (n_rows, dim) or embedding store)."""
        self._validate_params()
        view = as_pool(pool, type(self).__name__)
        n_budget = resolve_budget(budget, view.n_rows, type(self).__name__)
        rng = as_generator(getattr(self, "seed", 0), type(self).__name__)
        selection = self._select(view, budget=n_budget, rng=rng, **inputs)
        note = budget_rounding(budget, view.n_rows, n_budget)
        if note is not None:
            selection = dataclasses.replace(selection, summary={**selection.summary, "budget_rounding": note})
        return selection

    def _validate_params(self) -> None:
        """Check the stored settings; subclasses raise ParameterError naming the bad one."""

    def _select(self, pool: PoolLike, *, budget: int, rng: np.random.Generator, **inputs: Any) -> Selection:
        raise NotImplementedError
