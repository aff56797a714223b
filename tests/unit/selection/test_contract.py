"""The contract every registered selector keeps (after scikit-learn's check_estimator).

Seeded determinism, the budget respected, ids that are pool ids without
duplicates, the same result from an array and from a store, parameters
returned by get_params, every setting declared and a bad one refused with the
standard message, and for the selectors that follow the distributed protocol,
partial over any split into blocks + merge + finish equal to select.
New selectors join by adding example inputs to make().
"""

from __future__ import annotations

import numpy as np
import pytest

import thresher.selectors  # noqa: F401  (registers every selector)
from thresher.exceptions import ParameterError
from thresher.selectors import SELECTORS
from thresher.selectors._base import BlockwiseSelector
from thresher.stores import finalize_embedding_store, open_embedding_store, write_embedding_shard


def pool_vectors(n=256, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, dim))
    x = centres[rng.integers(0, 8, size=n)] + 0.4 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make(name):
    """(selector, budget, inputs) for each registered selector, on the shared pool."""
    rng = np.random.default_rng(1)
    cls = SELECTORS[name]
    if name == "rds_plus":
        return cls(), 40, {"targets": {"a": rng.normal(size=(3, 16)), "b": rng.normal(size=(5, 16))}}
    if name == "b3":
        return cls(batch_size=32, community_size=8, rank_window=(2, 12), seed=3), 1.0, {}
    if name == "smote":
        labels = np.where(np.arange(256) % 8 == 0, "rare", "common")
        return cls(seed=3), 1.0, {"labels": labels}
    if name == "acquisition":
        p = rng.dirichlet(np.ones(4), size=256)
        return cls(method="entropy", sampling="power", seed=3), 30, {"probs": p}
    if name == "kcenter":
        return cls(seed=3), 30, {}
    if name == "semdedup":
        return cls(n_clusters=8, eps=0.15, seed=3), 1.0, {}
    raise AssertionError(f"selector {name!r} has no example inputs in the contract suite: add it to make()")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("contract") / "store"
    path.mkdir()
    x = pool_vectors()
    shards = [write_embedding_shard(path, i, [f"id-{j}" for j in range(lo, lo + 64)], x[lo : lo + 64]) for i, lo in enumerate(range(0, 256, 64))]
    finalize_embedding_store(path, shards=shards, fingerprint="contract", dim=16, dtype="float32", encoder={"normalize": True}, pool={})
    return open_embedding_store(path)


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_selector_contract(name, store):
    x = pool_vectors()
    selector, budget, inputs = make(name)
    first = selector.select(x, budget=budget, **inputs)
    again = selector.select(x, budget=budget, **inputs)
    np.testing.assert_array_equal(first.positions, again.positions)
    assert first.selector == name and set(selector.get_params()) <= set(first.params)  # provenance holds every setting
    n_budget = budget if isinstance(budget, int) else int(budget * len(x))
    assert len(first.positions) <= n_budget
    assert len(np.unique(first.positions)) == len(first.positions)
    assert first.positions.min() >= 0 and first.positions.max() < len(x)
    np.testing.assert_array_equal(first.ids, first.positions)  # a bare array's ids are its positions
    from_store = selector.select(store, budget=budget, **inputs)
    np.testing.assert_array_equal(from_store.positions, first.positions)
    assert from_store.ids.tolist() == [f"id-{p}" for p in first.positions]
    with pytest.raises(ParameterError, match=f"'budget' parameter of {type(selector).__name__}"):
        selector.select(x, budget=0, **inputs)


def test_every_setting_is_declared():
    """Each selector declares what every constructor setting accepts, and only those (scikit-learn's check)."""
    for name, cls in SELECTORS.items():
        assert set(cls._parameter_constraints) == set(cls._param_names()), name


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_bad_setting_refused_with_the_template(name):
    selector, budget, inputs = make(name)
    first = next(iter(type(selector)._parameter_constraints))
    bad = type(selector)(**{**selector.get_params(), first: object()})
    with pytest.raises(ParameterError, match=rf"^The '{first}' parameter of {type(selector).__name__} must be .+; got an object of type object\.$"):
        bad.select(pool_vectors(), budget=budget, **inputs)


def splits(n):
    """Ways to cut rows [0, n) into consecutive blocks: one block, even, uneven, and single rows at the edges."""
    rng = np.random.default_rng(7)
    cuts = np.sort(rng.choice(np.arange(1, n), size=6, replace=False))
    yield "whole", [0, n]
    yield "even", list(range(0, n, 64)) + [n]
    yield "uneven", [0, *cuts.tolist(), n]
    yield "single rows", [0, 1, 2, 3, *range(50, n, 97), n - 1, n]


BLOCKWISE = sorted(name for name, cls in SELECTORS.items() if issubclass(cls, BlockwiseSelector))


def test_the_distributed_selectors_implement_the_protocol():
    assert {"rds_plus", "semdedup", "b3"} <= set(BLOCKWISE)


@pytest.mark.parametrize("name", BLOCKWISE)
def test_partial_merge_finish_equals_select(name, store):
    """partial over any split of the pool into blocks (each a task, in any order), merge, finish == select on the whole array."""
    from thresher.rng import as_generator
    from thresher.selectors._base import ArrayPool, resolve_budget

    x = pool_vectors()
    selector, budget, inputs = make(name)
    want = selector.select(x, budget=budget, **inputs)
    pool = ArrayPool(x)
    n_budget = resolve_budget(budget, pool.n_rows, type(selector).__name__)
    for how, bounds in splits(len(x)):
        rng = as_generator(selector.seed)
        state = selector.prepare(pool, budget=n_budget, rng=rng, **inputs)
        blocks = [next(ArrayPool(x[lo:hi]).iter_blocks()) for lo, hi in zip(bounds[:-1], bounds[1:])]
        blocks = [type(b)(lo, b.ids + lo, b.vectors) for b, lo in zip(blocks, bounds[:-1])]  # numbered as rows of the whole pool
        partials = [selector.partial(state, [b], pool) for b in blocks[::-1]]  # tasks finish in any order
        # merged in an uneven tree: associativity
        merged = selector.merge([selector.merge(partials[: len(partials) // 3 + 1]), selector.merge(partials[len(partials) // 3 + 1 :])]) \
            if len(partials) > 1 else selector.merge(partials)
        options = {"rng": rng} if name == "b3" else {}
        got = selector.finish(state, merged, pool, **options)
        np.testing.assert_array_equal(got.positions, want.positions, err_msg=how)
        np.testing.assert_array_equal(got.ids, want.ids, err_msg=how)
        for column, values in want.selection_columns().items():
            np.testing.assert_array_equal(np.asarray(got.selection_columns()[column]), np.asarray(values), err_msg=f"{how}: {column}")
        assert got.summary == want.summary, how
