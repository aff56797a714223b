"""k-center greedy (Sener & Savarese 2018) against a numpy brute force over the full distance matrix."""

from __future__ import annotations

import numpy as np
import pytest

from thresher.exceptions import DimensionMismatchError, InputDataError, ParameterError
from thresher.rng import as_generator
from thresher.selectors import SELECTORS
from thresher.selectors.diversity import KCenterGreedy, k_center_greedy, uncertainty_then_diversity


def brute_k_center(X, budget, first=None, labelled=(), eligible=None):
    """The definition, with the full n x n distance matrix."""
    X = np.asarray(X, dtype=np.float64)
    d = np.sqrt(((X[:, None, :] - X[None, :, :]) ** 2).sum(-1))
    allowed = np.ones(len(X), bool) if eligible is None else eligible.copy()
    allowed[list(labelled)] = False
    centers = list(labelled)
    picks = []
    if not centers:
        picks.append(first)
        centers.append(first)
        allowed[first] = False
    while len(picks) < budget:
        nearest = d[:, centers].min(axis=1)
        nearest[~allowed] = -np.inf
        p = int(np.argmax(nearest))
        picks.append(p)
        centers.append(p)
        allowed[p] = False
    return picks


X = np.random.default_rng(0).normal(size=(150, 5)).astype(np.float32)


@pytest.mark.parametrize("block_rows", [None, 7, 64])
def test_picks_equal_brute_force_from_a_seeded_first_center(block_rows):
    seed = 3
    first = int(as_generator(seed).integers(len(X)))
    picks, dists = k_center_greedy(X, 12, seed=seed, block_rows=block_rows)
    assert picks.tolist() == brute_k_center(X, 12, first=first)
    assert np.isinf(dists[0]) and np.all(np.diff(dists[1:]) <= 1e-12)  # greedy radii never grow


def test_labelled_rows_start_as_centers_and_are_never_picked():
    labelled = [4, 40, 99]
    sel = KCenterGreedy(block_rows=16).select(X, budget=10, labelled=labelled)
    assert sel.positions.tolist() == brute_k_center(X, 10, labelled=labelled)
    assert not set(labelled) & set(sel.positions.tolist())
    d = np.sqrt(((X[sel.positions[0]].astype(np.float64) - X[labelled].astype(np.float64)) ** 2).sum(-1)).min()
    np.testing.assert_allclose(sel.score[0], d, rtol=1e-12)
    assert "kcenter" in SELECTORS


def test_exclude_and_ties_to_lower_position():
    P = np.array([[0.0, 0], [1, 0], [-1, 0], [0, 1], [0, -1]], dtype=np.float32)  # four rows tie at distance 1
    assert k_center_greedy(P, 3, centers=P[:1], eligible=np.array([False, True, True, True, True]))[0].tolist() == [1, 2, 3]
    sel = KCenterGreedy().select(P, budget=2, labelled=[0], exclude=[1])
    assert sel.positions.tolist() == [2, 3]


def test_uncertainty_then_diversity_picks_within_the_top_candidates():
    scores = np.random.default_rng(1).uniform(size=len(X))
    top = np.argsort(-scores)[:40]
    picks = uncertainty_then_diversity(X, scores, 8, n_candidates=40, centers=X[:2])
    assert set(picks.tolist()) <= set(top.tolist())
    sub = np.sort(top)
    expected = brute_k_center(np.concatenate([X[:2], X[sub]]), 8, labelled=[0, 1])
    assert picks.tolist() == sub[np.array(expected) - 2].tolist()


def test_bad_input_is_refused():
    with pytest.raises(ParameterError, match="'budget'"):
        k_center_greedy(X, 151)
    with pytest.raises(ParameterError, match="only 147"):
        KCenterGreedy().select(X, budget=148, labelled=[0, 1, 2])
    with pytest.raises(DimensionMismatchError, match="width 3"):
        k_center_greedy(X, 2, centers=np.zeros((1, 3)))
    with pytest.raises(InputDataError, match="'labelled'"):
        KCenterGreedy().select(X, budget=2, labelled=[150])
    with pytest.raises(ParameterError, match="'budget'.*n_candidates=4"):
        uncertainty_then_diversity(X, np.zeros(len(X)), 5, n_candidates=4)
    with pytest.raises(ParameterError, match="'n_candidates'"):
        uncertainty_then_diversity(X, np.zeros(len(X)), 5, n_candidates=151)
    with pytest.raises(InputDataError, match="shape"):
        uncertainty_then_diversity(X, np.zeros(3), 2, n_candidates=4)
    with pytest.raises(ParameterError, match="'block_rows'"):
        KCenterGreedy(block_rows=0).select(X, budget=2)
