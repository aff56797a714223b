"""The contract every registered selector keeps (after scikit-learn's check_estimator).

Seeded determinism, the budget respected, ids that are pool ids without
duplicates, the same result from an array and from a store, parameters
returned by get_params, and a bad budget refused with the standard message.
New selectors join by adding example inputs to EXAMPLES.
"""

from __future__ import annotations

import numpy as np
import pytest

import thresher.selectors  # noqa: F401  (registers every selector)
from thresher.exceptions import ParameterError
from thresher.selectors import SELECTORS
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
