"""Acquisition scores against independent formulas, and stochastic batch acquisition (Kirsch et al. 2023)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax
from scipy.stats import chisquare, entropy

from thresher.exceptions import InputDataError, ParameterError
from thresher.selectors import SELECTORS
from thresher.selectors.acquisition import Acquisition, AcquisitionWarning, sample_batch, score


def dirichlet(n, c=4, s=None, seed=0):
    rng = np.random.default_rng(seed)
    shape = (n, c) if s is None else (n, s, c)
    return rng.dirichlet(np.full(c, 0.7), size=shape[:-1])


MC = dirichlet(40, c=5, s=7, seed=1)  # (n, samples, classes)
FLAT = dirichlet(40, c=5, seed=2)


def test_scores_equal_independent_formulas():
    mean = MC.mean(axis=1)
    h_mean = entropy(mean, axis=1)
    sorted_mean = np.sort(mean, axis=1)
    expected = {
        "entropy": (h_mean, h_mean),
        "bald": (h_mean - np.mean([entropy(MC[:, s], axis=1) for s in range(MC.shape[1])], axis=0),) * 2,
        "margin": (1 - (sorted_mean[:, -1] - sorted_mean[:, -2]), sorted_mean[:, -1] - sorted_mean[:, -2]),
        "least_confidence": (1 - sorted_mean[:, -1], sorted_mean[:, -1]),
        "variation_ratio": (1 - sorted_mean[:, -1], 1 - sorted_mean[:, -1]),
    }
    for method, (want_score, want_raw) in expected.items():
        got = score(MC, method)
        np.testing.assert_allclose(got.score, want_score, atol=1e-6, err_msg=method)
        np.testing.assert_allclose(got.raw, want_raw, atol=1e-6, err_msg=method)
        # baal's layout (n, classes, samples) gives the same
        np.testing.assert_allclose(score(np.swapaxes(MC, 1, 2), method, layout="NCS").score, got.score, atol=1e-12)
    assert (score(MC, "bald").score > 0).all()
    # a 2-D input is one sample: BALD is 0, entropy is scipy's
    np.testing.assert_allclose(score(FLAT, "bald").raw, 0, atol=1e-12)
    np.testing.assert_allclose(score(FLAT, "entropy").score, entropy(FLAT, axis=1), atol=1e-6)


def test_logits_are_refused_or_converted():
    logits = np.random.default_rng(3).normal(size=(10, 4))
    with pytest.raises(InputDataError, match="softmax"):
        score(logits)
    with pytest.raises(InputDataError, match="row 0.*does not sum to 1"):
        score(np.abs(logits))
    np.testing.assert_allclose(score(logits, from_logits=True).score, entropy(softmax(logits, axis=1), axis=1), atol=1e-9)


def test_nonfinite_scores_rank_last_with_a_warning():
    probs = FLAT.copy()
    probs[[3, 7]] = np.nan
    with pytest.warns(AcquisitionWarning, match="2 of 40"):
        s = score(probs, "margin")
    assert np.isnan(s.score[[3, 7]]).all()
    with pytest.warns(AcquisitionWarning):
        sel = Acquisition(method="margin").select(np.zeros((40, 2)), budget=40, probs=probs)
    assert list(sel.positions[-2:]) == [3, 7]
    assert np.isfinite(sel.score[:-2]).all()


def test_topk_order_and_ties_to_lower_position():
    s = np.array([0.5, 0.9, 0.5, 0.9, 0.1, 0.5])
    assert sample_batch(s, 4).tolist() == [1, 3, 0, 2]
    probs = FLAT
    sel = Acquisition(method="least_confidence").select(np.zeros((40, 3)), budget=5, probs=probs)
    expected = np.lexsort((np.arange(40), probs.max(axis=1)))[:5]  # smallest max-probability first
    assert sel.positions.tolist() == expected.tolist()
    np.testing.assert_allclose(sel.columns["raw_score"], probs.max(axis=1)[expected])
    assert "acquisition" in SELECTORS and sel.selector == "acquisition"


@pytest.mark.parametrize("sampling", ["softmax", "power", "softrank"])
def test_huge_beta_is_topk(sampling):
    s = np.random.default_rng(5).uniform(0.1, 1.0, size=200)
    for seed in range(5):
        assert sample_batch(s, 20, sampling=sampling, beta=1e9, seed=seed).tolist() == sample_batch(s, 20).tolist()


@pytest.mark.parametrize("sampling", ["softmax", "power", "softrank"])
def test_tiny_beta_is_uniform(sampling):
    s = np.linspace(0.05, 1.0, 10)
    counts = np.zeros(10)
    for seed in range(3000):
        counts[sample_batch(s, 1, sampling=sampling, beta=1e-9, seed=seed)] += 1
    assert chisquare(counts).pvalue > 0.001


def test_gumbel_top1_frequencies_match_the_stated_distributions():
    s = np.array([0.2, 0.5, 1.0, 2.0])
    n = 8000
    ranks = np.array([4, 3, 2, 1], dtype=float)
    for sampling, beta, p in [
        ("softmax", 1.0, np.exp(s) / np.exp(s).sum()),
        ("power", 2.0, s**2 / (s**2).sum()),
        ("softrank", 1.0, (1 / ranks) / (1 / ranks).sum()),
    ]:
        rng = np.random.default_rng(11)
        counts = np.bincount([sample_batch(s, 1, sampling=sampling, beta=beta, seed=rng)[0] for _ in range(n)], minlength=4)
        assert chisquare(counts, p * n).pvalue > 0.001, sampling


def test_stochastic_selection_is_seeded_and_without_replacement():
    s = score(MC, "bald").score
    a = Acquisition(method="bald", sampling="power", seed=4).select(np.zeros((40, 2)), budget=15, probs=MC)
    b = Acquisition(method="bald", sampling="power", seed=4).select(np.zeros((40, 2)), budget=15, probs=MC)
    c = Acquisition(method="bald", sampling="power", seed=5).select(np.zeros((40, 2)), budget=15, probs=MC)
    assert a.positions.tolist() == b.positions.tolist() != c.positions.tolist()
    assert len(set(a.positions.tolist())) == 15
    np.testing.assert_allclose(a.score, s[a.positions])


def test_exclude_is_respected_and_budget_checked():
    exclude = np.arange(0, 40, 2)
    sel = Acquisition(sampling="softmax").select(np.zeros((40, 2)), budget=20, probs=FLAT, exclude=exclude)
    assert sorted(sel.positions.tolist()) == list(range(1, 40, 2))
    with pytest.raises(ParameterError, match="only 20 are left"):
        Acquisition().select(np.zeros((40, 2)), budget=21, probs=FLAT, exclude=exclude)
    with pytest.raises(ParameterError, match="budget"):
        Acquisition().select(np.zeros((40, 2)), budget=41, probs=FLAT)


def test_power_refuses_negative_scores():
    with pytest.raises(InputDataError, match="position 1"):
        sample_batch(np.array([0.5, -0.1, 0.2]), 1, sampling="power")


@pytest.mark.parametrize(
    "probs,kwargs,error,match",
    [
        (np.full(5, 0.2), {}, InputDataError, "shape"),
        (np.full((2, 3, 4, 5), 0.2), {}, InputDataError, "shape"),
        (np.ones((4, 1)), {}, InputDataError, "two classes"),
        (np.array([[0.5, 0.6], [0.5, 0.5]]), {}, InputDataError, "row 0"),
        (np.array([[1.2, -0.2], [0.5, 0.5]]), {}, InputDataError, "negative"),
        (FLAT, {"method": "bold"}, ParameterError, "'method'"),
        (MC, {"layout": "SNC"}, ParameterError, "'layout'"),
        (np.array([["a", "b"]]), {}, InputDataError, "numbers"),
    ],
)
def test_bad_probabilities_are_refused(probs, kwargs, error, match):
    with pytest.raises(error, match=match):
        score(probs, **kwargs)


@pytest.mark.parametrize(
    "params,match",
    [({"beta": 0}, "'beta'"), ({"beta": -1.0}, "'beta'"), ({"beta": float("nan")}, "'beta'"), ({"beta": True}, "'beta'"),
     ({"sampling": "gumbel"}, "'sampling'"), ({"method": "random"}, "'method'"), ({"seed": -1}, "'seed'")],
)
def test_bad_selector_parameters_are_refused(params, match):
    with pytest.raises(ParameterError, match=match):
        Acquisition(**params).select(np.zeros((40, 2)), budget=3, probs=FLAT)


def test_probs_must_match_the_pool_and_be_given():
    with pytest.raises(InputDataError, match="40 rows but the pool has 39"):
        Acquisition().select(np.zeros((39, 2)), budget=3, probs=FLAT)
    with pytest.raises(ParameterError, match="probs"):
        Acquisition().select(np.zeros((40, 2)), budget=3)
