"""The selector contract, shared by every selector (after scikit-learn's estimator contract).

- The constructor only stores keyword settings; :meth:`get_params` returns them.
- Each selector declares what every setting accepts in
  ``_parameter_constraints`` (see :mod:`thresher.params`);
  :meth:`BaseSelector.validate_params` checks them, with one message template.
- :meth:`BaseSelector.select` is the one public verb. It validates the
  settings, validates and normalises the pool and ``budget`` (a count, or a
  fraction of the pool), turns ``seed`` into a :class:`numpy.random.Generator`,
  and hands over to the private ``_select`` that holds the algorithm.
- A selector whose work splits over blocks of pool rows
  (:class:`BlockwiseSelector`) also exposes the distributed protocol jobs use:
  ``prepare`` on the driver, ``partial`` over blocks of rows on any worker,
  ``merge`` of partial results, ``finish`` on the driver. Its ``select`` runs
  exactly that protocol in this process, so a job's result equals ``select``'s.
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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

from thresher.exceptions import InputDataError, ParameterError
from thresher.params import Check, HasMethods, Instance, Interval, StrOptions, check_param, check_params
from thresher.rng import as_generator

SELECTORS: dict[str, type[BaseSelector]] = {}

# the constraint kinds selectors declare their settings with, re-exported for them
__all__ = ["SELECTORS", "ArrayPool", "BaseSelector", "BlockwiseSelector", "Check", "HasMethods", "Instance", "Interval", "PoolLike",
           "Selection", "StrOptions", "as_pool", "budget_rounding", "resolve_budget"]


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


#: a count, or a fraction of what is available
BUDGET = [Interval(int, 1, None), Interval(float, 0, 1, closed="right")]


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
    check_param(owner, name, budget, BUDGET)
    count = int(budget) if isinstance(budget, (int, np.integer)) else max(1, math.floor(budget * n_available + 1e-9))
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


#: the constraints most selectors share (see :mod:`thresher.params`)
SEED = [None, Interval(int, 0, None), Instance(np.random.Generator, "a numpy.random.Generator")]
BLOCK_ROWS = [None, Interval(int, 1, None)]


class BaseSelector:
    """Base class of every selector; subclasses set ``name``, declare ``_parameter_constraints`` and implement ``_select``."""

    name: ClassVar[str] = ""
    #: per constructor setting, the forms it accepts (any one suffices); see :mod:`thresher.params`
    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {}

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

    def validate_params(self) -> None:
        """Check the stored settings against ``_parameter_constraints``, then against each other.

        Raises :class:`~thresher.exceptions.ParameterError` naming the first bad
        setting: "The 'eps' parameter of SemDeDup must be a float in [0, 1); got 2."
        Stages call this before any work, so a bad setting fails fast.
        """
        check_params(type(self).__name__, self.get_params(), self._parameter_constraints)
        self._check_param_relations()

    def _validate_params(self) -> None:
        """The former private spelling of :meth:`validate_params`."""
        self.validate_params()

    def _check_param_relations(self) -> None:
        """Checks that involve several settings at once (one setting's own forms are declared); none by default."""

    def select(self, pool: Any, *, budget: int | float, **inputs: Any) -> Selection:
        """Choose ``budget`` rows of ``pool`` (array (n_rows, dim) or embedding store)."""
        self.validate_params()
        view = as_pool(pool, type(self).__name__)
        n_budget = resolve_budget(budget, view.n_rows, type(self).__name__)
        rng = as_generator(getattr(self, "seed", 0), type(self).__name__)
        selection = self._select(view, budget=n_budget, rng=rng, **inputs)
        note = budget_rounding(budget, view.n_rows, n_budget)
        if note is not None:
            selection = dataclasses.replace(selection, summary={**selection.summary, "budget_rounding": note})
        return selection

    def _select(self, pool: PoolLike, *, budget: int, rng: np.random.Generator, **inputs: Any) -> Selection:
        raise NotImplementedError


class BlockwiseSelector(BaseSelector):
    """A selector whose work splits over blocks of pool rows: the distributed protocol (after map-reduce).

    ``select`` is exactly these four steps run in this process; a job runs the
    same steps with ``partial`` on workers, so its result is ``select``'s::

        state = selector.prepare(pool, budget=n, rng=rng, **inputs)       # driver: small and picklable
        part = selector.partial(state, blocks, pool)                      # any worker, any split into blocks
        merged = selector.merge([part, ...])                              # associative and order-free
        selection = selector.finish(state, merged, pool, **options)       # driver

    - ``prepare`` validates the inputs against the pool and computes what
      every block needs (RDS+: the queries' scorer and the ranking depth;
      SemDeDup: the k-means centroids; B3: the rank window).
    - ``partial(state, blocks, pool)`` reads only ``blocks`` (an iterable of
      blocks with ``start``, ``ids`` and ``vectors``: one block, or a
      partition's stream of them) and, where a selector needs it, ``pool`` as
      opened where the work runs (``take`` for rows of those blocks, or the
      rows to search); it is pure and its result is small and picklable.
    - ``merge(partials)`` combines partial results of disjoint blocks; any
      grouping and order of the same blocks merges to the same result.
    - ``finish`` turns the merged result into a :class:`Selection`.
    """

    #: rows per block when ``select`` runs the protocol in this process and the selector has no ``block_rows`` setting
    default_block_rows: ClassVar[int] = 65_536

    def prepare(self, pool: PoolLike, *, budget: int, rng: np.random.Generator, **inputs: Any) -> Any:
        raise NotImplementedError

    def partial(self, state: Any, blocks: Iterable[PoolBlock], pool: PoolLike) -> Any:
        raise NotImplementedError

    def merge(self, partials: Sequence[Any]) -> Any:
        raise NotImplementedError

    def finish(self, state: Any, merged: Any, pool: PoolLike, **options: Any) -> Selection:
        raise NotImplementedError

    def block_rows_for(self, state: Any) -> int:
        """Rows per block when ``select`` runs the protocol in this process."""
        return getattr(self, "block_rows", None) or self.default_block_rows

    def run_blocks(self, state: Any, pool: PoolLike) -> Any:
        """``partial`` over the stream of every block of ``pool`` (one partition), merged, in this process."""
        return self.merge([self.partial(state, pool.iter_blocks(self.block_rows_for(state)), pool)])

    def _select(self, pool: PoolLike, *, budget: int, rng: np.random.Generator, **inputs: Any) -> Selection:
        state = self.prepare(pool, budget=budget, rng=rng, **inputs)
        return self.finish(state, self.run_blocks(state, pool), pool)
