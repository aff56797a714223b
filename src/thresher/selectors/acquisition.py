"""Active-learning acquisition: uncertainty scores from model predictions, and batch selection.

Scores (natural log throughout, as baal does) from class probabilities of
shape (n_rows, n_classes), or MC-dropout samples of shape
(n_rows, n_samples, n_classes) (``layout="NSC"``, the default) or
(n_rows, n_classes, n_samples) (``layout="NCS"``, baal's order). With
``p̄ = mean_s p_s`` (the mean prediction; a 2-D input is one sample):

==================  ===============================  ============================
method              raw value                        score (higher = acquire)
==================  ===============================  ============================
"entropy"           H[p̄] = -Σ_c p̄_c log p̄_c         H[p̄]
"bald"              H[p̄] - mean_s H[p_s]  (Houlsby   the same (clipped at 0 only
                    et al. 2011, Gal et al. 2017)    for rounding, see below)
"margin"            p̄(1st) - p̄(2nd), small first    1 - margin
"least_confidence"  max_c p̄_c, small first           1 - max_c p̄_c
"variation_ratio"   1 - max_c p̄_c                    the same
==================  ===============================  ============================

Every score is oriented so that higher means more informative and is >= 0,
so the "power" sampler applies to all of them (baal samples by the raw
margin and so prefers confident points; Kirsch et al. point this out).

Batch selection. ``"topk"`` takes the ``budget`` best scores, ties to the
lower position. Stochastic batch acquisition (Kirsch et al., "Stochastic
Batch Acquisition: A Simple Baseline for Deep Active Learning", TMLR 2023,
arXiv 2106.12059) samples ``budget`` rows without replacement with

- ``"softmax"``: p ∝ exp(β s),
- ``"power"``: p ∝ s^β (s >= 0),
- ``"softrank"``: p ∝ rank^(-β) (rank 1 = best score),

implemented exactly as the top ``budget`` of ``z + Gumbel(0, 1)`` noise
(the Gumbel-top-k trick) with z = β s, β log s and -β log rank. β → ∞ is
top-k, β → 0 uniform. Noise comes only from the caller's seed or generator.

Rows whose score is not finite (NaN probabilities, for example) are ranked
after every finite one, in position order, with an
:class:`AcquisitionWarning`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy.special import entr

from thresher.exceptions import InputDataError, ParameterError
from thresher.params import Interval, StrOptions, check_param
from thresher.rng import SeedLike, as_generator
from thresher.selectors._base import SEED, BaseSelector, PoolLike, Selection

Method = Literal["entropy", "bald", "margin", "least_confidence", "variation_ratio"]
Sampling = Literal["topk", "softmax", "power", "softrank"]
Layout = Literal["NSC", "NCS"]

METHODS: tuple[str, ...] = ("entropy", "bald", "margin", "least_confidence", "variation_ratio")
SAMPLINGS: tuple[str, ...] = ("topk", "softmax", "power", "softrank")
LAYOUTS: tuple[str, ...] = ("NSC", "NCS")
#: rows whose probabilities add up to 1 within this tolerance are accepted
SUM_TOLERANCE = 1e-4
#: rows scored at once, so an (n_rows, n_samples, n_classes) float64 copy is never made whole
SCORE_BLOCK_ROWS = 65_536

_OWNER = "acquisition"


class AcquisitionWarning(UserWarning):
    """Some acquisition scores are not finite: those rows are ranked last."""


@dataclass(frozen=True)
class AcquisitionScores:
    """Scores of every pool row.

    Attributes
    ----------
    score : ndarray of float64, shape (n_rows,)
        Higher = more informative (see the module docstring for each method's transformation); NaN where not finite.
    raw : ndarray of float64, shape (n_rows,)
        The method's own value (margin, max probability, entropy, …) before orientation.
    method : str
    """

    score: np.ndarray
    raw: np.ndarray
    method: str

    @property
    def n_nonfinite(self) -> int:
        return int((~np.isfinite(self.score)).sum())


#: what beta accepts: an inverse temperature
BETA = [Interval(float, 0, None, closed="neither")]


def _check_choice(value: Any, name: str, choices: Sequence[str], owner: str) -> None:
    check_param(owner, name, value, [StrOptions(*choices)])


def as_samples(probs: Any, *, layout: Layout = "NSC", from_logits: bool = False, owner: str = _OWNER) -> np.ndarray:
    """Validate predictions and return them as (n_rows, n_samples, n_classes) (a view where possible).

    Parameters
    ----------
    probs : array of shape (n_rows, n_classes), or (n_rows, n_samples, n_classes) with
        ``layout="NSC"``, or (n_rows, n_classes, n_samples) with ``layout="NCS"``
        Class probabilities (each row, or each sample, sums to 1 within 1e-4).
    layout : {"NSC", "NCS"}, default "NSC"
        Axis order of a 3-D input.
    from_logits : bool, default False
        Apply a softmax over the class axis first.

    Raises
    ------
    InputDataError
        Wrong number of dimensions, fewer than 2 classes, no samples, or values that are not
        probabilities (negative, or rows not summing to 1): those look like logits.

    Rows holding NaN or inf are left as they are; their scores come out not finite.
    """
    _check_choice(layout, "layout", LAYOUTS, owner)
    arr = np.asarray(probs)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InputDataError(f"The probabilities given to {owner} must be numbers; got dtype {arr.dtype}.")
    if arr.ndim == 2:
        arr = arr[:, None, :]
    elif arr.ndim == 3:
        if layout == "NCS":
            arr = np.swapaxes(arr, 1, 2)
    else:
        raise InputDataError(
            f"The probabilities given to {owner} must have shape (n_rows, n_classes) or MC samples "
            f"(n_rows, n_samples, n_classes) (layout='NSC') / (n_rows, n_classes, n_samples) (layout='NCS'); got shape {arr.shape}."
        )
    n_rows, n_samples, n_classes = arr.shape
    if n_rows == 0 or n_samples == 0 or n_classes < 2:
        raise InputDataError(
            f"The probabilities given to {owner} need at least one row, one sample and two classes; "
            f"got {n_rows} rows, {n_samples} samples, {n_classes} classes (shape {np.shape(probs)}, layout={layout!r})."
        )
    arr = arr.astype(np.float64, copy=False)
    if from_logits:
        return _softmax(arr)
    _check_probabilities(arr, owner)
    return arr


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=2, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=2, keepdims=True)


def _check_probabilities(arr: np.ndarray, owner: str) -> None:
    for lo in range(0, arr.shape[0], SCORE_BLOCK_ROWS):
        block = arr[lo : lo + SCORE_BLOCK_ROWS]
        finite = np.isfinite(block).all(axis=2)
        negative = (block < 0).any(axis=2) & finite
        off = (np.abs(block.sum(axis=2) - 1.0) > SUM_TOLERANCE) & finite
        for bad, why in ((negative, "has negative values"), (off, "does not sum to 1 (within 1e-4)")):
            if bad.any():
                row, sample = (int(i) for i in np.argwhere(bad)[0])
                where = f"row {lo + row}" + (f", sample {sample}" if arr.shape[1] > 1 else "")
                raise InputDataError(
                    f"The probabilities given to {owner} are not probabilities: {where} {why} "
                    f"(sum {block[row, sample].sum():.6g}, min {block[row, sample].min():.6g}). These look like logits: "
                    "apply a softmax over the class axis first, or pass from_logits=True."
                )


def _block_scores(p: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """(score, raw) of one block of (rows, samples, classes) probabilities."""
    mean = p.mean(axis=1)
    if method == "entropy":
        raw = entr(mean).sum(axis=1)
        return raw, raw
    if method == "bald":
        raw = entr(mean).sum(axis=1) - entr(p).sum(axis=2).mean(axis=1)
        # mutual information is >= 0 (Jensen); a tiny negative value is rounding, not information
        score = np.where(raw < 0, 0.0, raw)
        return score, raw
    if method == "margin":
        top2 = -np.partition(-mean, 1, axis=1)[:, :2]
        raw = top2[:, 0] - top2[:, 1]
        return 1.0 - raw, raw
    top = mean.max(axis=1)
    if method == "least_confidence":
        return 1.0 - top, top
    raw = 1.0 - top  # variation_ratio
    return raw, raw


def score(probs: Any, method: Method = "entropy", *, layout: Layout = "NSC", from_logits: bool = False) -> AcquisitionScores:
    """Acquisition scores of every row, oriented so that higher is more informative.

    Parameters
    ----------
    probs : array of shape (n_rows, n_classes) or (n_rows, n_samples, n_classes)
        Class probabilities, or MC-dropout samples (``layout="NCS"`` for (n_rows, n_classes, n_samples)).
    method : {"entropy", "bald", "margin", "least_confidence", "variation_ratio"}, default "entropy"
    layout : {"NSC", "NCS"}, default "NSC"
    from_logits : bool, default False
        Treat ``probs`` as logits and apply a softmax over the class axis.

    Returns
    -------
    AcquisitionScores
        ``score`` (higher first; margin -> 1 - margin, least confidence -> 1 - max probability)
        and ``raw`` (the method's own value), both of shape (n_rows,).

    Warns
    -----
    AcquisitionWarning
        When some scores are not finite (they are kept as NaN; selection ranks them last).
    """
    _check_choice(method, "method", METHODS, _OWNER)
    p = as_samples(probs, layout=layout, from_logits=from_logits)
    n_rows = p.shape[0]
    out_score = np.empty(n_rows)
    out_raw = np.empty(n_rows)
    with np.errstate(invalid="ignore"):
        for lo in range(0, n_rows, SCORE_BLOCK_ROWS):
            s, r = _block_scores(p[lo : lo + SCORE_BLOCK_ROWS], method)
            out_score[lo : lo + len(s)] = s
            out_raw[lo : lo + len(r)] = r
    bad = ~np.isfinite(out_score)
    if bad.any():
        out_score[bad] = np.nan
        warnings.warn(
            f"{int(bad.sum())} of {n_rows} {method} scores are not finite (first at row {int(np.flatnonzero(bad)[0])}): "
            "those rows are ranked last.",
            AcquisitionWarning,
            stacklevel=2,
        )
    return AcquisitionScores(score=out_score, raw=out_raw, method=method)


# --------------------------------------------------------------------------------------------------
# Batch selection
# --------------------------------------------------------------------------------------------------


def top_positions(keys: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest ``keys`` (no NaN; -inf allowed), best first, ties to the lower index."""
    n = len(keys)
    k = min(k, n)
    if k == 0:
        return np.empty(0, dtype=np.int64)
    neg = -keys
    if k < n:
        kth = np.partition(neg, k - 1)[k - 1]
        candidates = np.flatnonzero(neg <= kth)
    else:
        candidates = np.arange(n)
    order = np.lexsort((candidates, neg[candidates]))[:k]
    return candidates[order].astype(np.int64)


def check_beta(beta: Any, owner: str) -> float:
    """``beta`` as a float, refused unless a finite number > 0."""
    check_param(owner, "beta", beta, BETA)
    return float(beta)


def sampling_keys(scores: np.ndarray, *, sampling: Sampling, beta: float, rng: np.random.Generator) -> np.ndarray:
    """The keys whose top-k is the batch: z (+ Gumbel(0, 1) noise unless ``sampling="topk"``).

    ``scores`` must be finite, shape (n,). z = s (topk), β s (softmax), β log s (power; s = 0 gives
    -inf, drawn only once every positive score is taken) or -β log rank (softrank; rank 1 = best,
    ties to the lower position).
    """
    if sampling == "topk":
        return scores.astype(np.float64, copy=True)
    if sampling == "softmax":
        z = beta * scores
    elif sampling == "power":
        if (scores < 0).any():
            row = int(np.flatnonzero(scores < 0)[0])
            raise InputDataError(
                f"Power sampling needs scores >= 0 (p ∝ s^beta); position {row} has score {scores[row]!r}. "
                "Use sampling='softmax' or 'softrank' for signed scores."
            )
        with np.errstate(divide="ignore"):
            z = beta * np.log(scores)
    else:  # softrank
        ranks = np.empty(len(scores), dtype=np.float64)
        ranks[np.lexsort((np.arange(len(scores)), -scores))] = np.arange(1, len(scores) + 1)
        z = -beta * np.log(ranks)
    return z + rng.gumbel(size=len(scores))


def sample_batch(scores: Any, budget: int, *, sampling: Sampling = "topk", beta: float = 1.0, seed: SeedLike = 0) -> np.ndarray:
    """Positions of a batch of ``budget`` rows, in pick order (best key first).

    Parameters
    ----------
    scores : array of shape (n_rows,)
        Higher = more informative (as :func:`score` returns them). NaN or inf rows come last, in position order.
    budget : int
        Rows to pick, 1 <= budget <= n_rows.
    sampling : {"topk", "softmax", "power", "softrank"}, default "topk"
    beta : float, default 1.0
        Inverse temperature (> 0); ignored by "topk".
    seed : int or numpy.random.Generator, default 0

    Returns
    -------
    ndarray of int64, shape (budget,)
    """
    _check_choice(sampling, "sampling", SAMPLINGS, _OWNER)
    beta = check_beta(beta, _OWNER)
    rng = as_generator(seed, _OWNER)
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or len(s) == 0:
        raise InputDataError(f"The scores given to {_OWNER} must be a non-empty 1-D array; got shape {s.shape}.")
    check_param(_OWNER, "budget", budget, [Interval(int, 1, len(s), note="the number of scores")])
    return _pick(s, int(budget), sampling, beta, rng)


def _pick(s: np.ndarray, budget: int, sampling: str, beta: float, rng: np.random.Generator) -> np.ndarray:
    finite = np.flatnonzero(np.isfinite(s))
    keys = sampling_keys(s[finite], sampling=sampling, beta=beta, rng=rng)
    picked = finite[top_positions(keys, budget)]
    if len(picked) < budget:
        rest = np.flatnonzero(~np.isfinite(s))[: budget - len(picked)]
        picked = np.concatenate([picked, rest])
    return picked.astype(np.int64)


class Acquisition(BaseSelector):
    """Uncertainty acquisition with top-k or stochastic batch selection (Kirsch et al. 2023).

    Parameters
    ----------
    method : {"entropy", "bald", "margin", "least_confidence", "variation_ratio"}, default "entropy"
    sampling : {"topk", "softmax", "power", "softrank"}, default "topk"
    beta : float, default 1.0
        Inverse temperature of the stochastic samplers (> 0).
    layout : {"NSC", "NCS"}, default "NSC"
        Axis order of 3-D MC-dropout ``probs``.
    from_logits : bool, default False
    seed : int, default 0

    Examples
    --------
    >>> sel = Acquisition(method="bald", sampling="power").select(pool, budget=100, probs=mc_probs)  # doctest: +SKIP
    >>> sel.positions, sel.score, sel.columns["raw_score"]                                           # doctest: +SKIP
    """

    name = "acquisition"
    _parameter_constraints = {
        "method": [StrOptions(*METHODS)],
        "sampling": [StrOptions(*SAMPLINGS)],
        "beta": BETA,
        "layout": [StrOptions(*LAYOUTS)],
        "from_logits": ["boolean"],
        "seed": SEED,
    }

    def __init__(
        self,
        *,
        method: Method = "entropy",
        sampling: Sampling = "topk",
        beta: float = 1.0,
        layout: Layout = "NSC",
        from_logits: bool = False,
        seed: int = 0,
    ):
        self.method = method
        self.sampling = sampling
        self.beta = beta
        self.layout = layout
        self.from_logits = from_logits
        self.seed = seed

    def _select(
        self, pool: PoolLike, *, budget: int, rng: np.random.Generator, probs: Any = None, exclude: Sequence[int] | np.ndarray | None = None
    ) -> Selection:
        if probs is None:
            raise ParameterError("Acquisition.select needs probs=: class probabilities (n_rows, n_classes) or MC samples.")
        scores = score(probs, self.method, layout=self.layout, from_logits=self.from_logits)
        if len(scores.score) != pool.n_rows:
            raise InputDataError(f"Acquisition got probabilities for {len(scores.score)} rows but the pool has {pool.n_rows}.")
        eligible = np.ones(pool.n_rows, dtype=bool)
        if exclude is not None:
            excluded = np.unique(np.asarray(exclude, dtype=np.int64))
            if len(excluded) and (excluded[0] < 0 or excluded[-1] >= pool.n_rows):
                raise InputDataError(f"The 'exclude' positions given to Acquisition must lie in [0, {pool.n_rows}); got {excluded[0] if excluded[0] < 0 else excluded[-1]}.")
            eligible[excluded] = False
        candidates = np.flatnonzero(eligible)
        if budget > len(candidates):
            raise ParameterError(
                f"The 'budget' parameter of Acquisition asks for {budget} rows but only {len(candidates)} are left after exclusions; lower it."
            )
        positions = candidates[_pick(scores.score[candidates], budget, self.sampling, float(self.beta), rng)]
        ids = pool.ids()[positions]
        return Selection(
            positions=positions,
            ids=ids,
            selector=self.name,
            params=self.get_params(),
            score=scores.score[positions],
            columns={"raw_score": scores.raw[positions]},
            seed=self.seed,
            summary={
                "n_candidates": int(len(candidates)),
                "n_excluded": int(pool.n_rows - len(candidates)),
                "n_nonfinite": scores.n_nonfinite,
                "score_mean_candidates": _finite_mean(scores.score[candidates]),
            },
        )


def _finite_mean(values: np.ndarray) -> float | None:
    """The mean of the finite values, None when there are none."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else None
