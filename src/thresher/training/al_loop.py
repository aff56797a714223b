"""An active-learning loop helper: fit a model, score the (sub-)pool, acquire a batch, label it, record why.

It drives a labelling loop around the pure selection algorithms, so it lives on
the training side (arrays or an opened embedding store, no files written, no
Dask); the pieces are :mod:`thresher.selectors.acquisition` (uncertainty scores and
stochastic batch acquisition, Kirsch et al., TMLR 2023, arXiv 2106.12059),
:mod:`thresher.selectors.anchoral` (AnchorAL sub-pools, Lesci & Vlachos,
NAACL 2024, arXiv 2404.05623) and :mod:`thresher.selectors.diversity`
(uncertainty then k-center greedy, Sener & Savarese, ICLR 2018).

One round (:meth:`ActiveLearningLoop.run_round`):

1. fit the model on the labelled rows (their embeddings and labels);
2. candidates: the AnchorAL sub-pool (anchors re-drawn from the loop's
   generator, so they change every round) or every unlabelled row;
3. predict on the candidates only (samples ``[n, S, C]`` for BALD, from
   :class:`LogisticBaseline` bootstraps), score, and pick ``budget`` rows by
   top-k / stochastic sampling, or uncertainty-then-diversity;
4. ask the oracle (an array of true labels for simulation, or a callable)
   for their labels, and record the round (:class:`RoundRecord`, JSON-able).

``acquisition="random"`` draws the batch uniformly from the candidates: the
baseline every acquisition function is compared with.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from thresher.exceptions import InputDataError, ParameterError, parameter_error
from thresher.rng import SeedLike, as_generator
from thresher.selectors._base import as_pool
from thresher.selectors.acquisition import Acquisition, sample_batch, score
from thresher.selectors.anchoral import AnchorSubpool, anchoral_subpool
from thresher.selectors.diversity import uncertainty_then_diversity

_OWNER = "ActiveLearningLoop"
#: candidate rows predicted at once
PREDICT_BLOCK_ROWS = 16_384


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value (for JSON)."""
    return value.item() if isinstance(value, np.generic) else value


class LogisticBaseline:
    """Multinomial logistic regression on embeddings, with bootstrapped fits for BALD.

    Parameters
    ----------
    n_bootstrap : int, default 0
        Extra fits on class-stratified bootstrap resamples of the labelled rows; with
        ``n_bootstrap >= 1`` :meth:`predict_samples` returns one prediction per fit.
    seed : int, default 0
        Seeds the bootstrap resamples (the fits themselves are deterministic).
    C : float, default 1.0
        Inverse L2 regularisation strength of :class:`sklearn.linear_model.LogisticRegression`.
    max_iter : int, default 1000
    """

    def __init__(self, n_bootstrap: int = 0, seed: int = 0, C: float = 1.0, max_iter: int = 1000):
        if isinstance(n_bootstrap, (bool, np.bool_)) or not isinstance(n_bootstrap, (int, np.integer)) or n_bootstrap < 0:
            raise parameter_error("LogisticBaseline", "n_bootstrap", "an int >= 0", n_bootstrap)
        if isinstance(C, (bool, np.bool_)) or not isinstance(C, (int, float, np.integer, np.floating)) or not np.isfinite(C) or C <= 0:
            raise parameter_error("LogisticBaseline", "C", "a finite number > 0", C)
        self.n_bootstrap = int(n_bootstrap)
        self.seed = seed
        self.C = float(C)
        self.max_iter = max_iter
        self.classes_: np.ndarray | None = None
        self._model: Any = None
        self._boot: list[Any] = []

    def _new(self) -> Any:
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=self.C, max_iter=self.max_iter)

    def fit(self, X: np.ndarray, y: np.ndarray) -> LogisticBaseline:
        """Fit on ``X`` (n, dim) and labels ``y`` (n,); at least two classes are needed."""
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y).reshape(-1)
        if X.ndim != 2 or len(X) != len(y):
            raise InputDataError(f"LogisticBaseline.fit needs X of shape (n, dim) and y of shape (n,); got {X.shape} and {y.shape}.")
        classes = np.unique(y)
        if len(classes) < 2:
            raise InputDataError(
                f"LogisticBaseline needs labelled rows of at least two classes; got only {[_plain(c) for c in classes]}. "
                "Start the loop from a labelled set holding every class."
            )
        self.classes_ = classes
        self._model = self._new().fit(X, y)
        rng = as_generator(self.seed, "LogisticBaseline")
        members = [np.flatnonzero(y == c) for c in classes]
        self._boot = []
        for _ in range(self.n_bootstrap):
            rows = np.concatenate([m[rng.integers(len(m), size=len(m))] for m in members])
            self._boot.append(self._new().fit(X[rows], y[rows]))
        return self

    def _check_fitted(self) -> None:
        if self._model is None:
            raise ParameterError("LogisticBaseline is not fitted yet: call fit(X, y) first.")

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities, shape (n, n_classes), columns in ``classes_`` order."""
        self._check_fitted()
        return self._model.predict_proba(np.asarray(X, dtype=np.float64))

    def predict_samples(self, X: np.ndarray) -> np.ndarray:
        """One prediction per bootstrap fit, shape (n, n_bootstrap, n_classes)."""
        self._check_fitted()
        if not self._boot:
            raise ParameterError("LogisticBaseline.predict_samples needs n_bootstrap >= 1 (BALD needs several predictions per row).")
        X = np.asarray(X, dtype=np.float64)
        return np.stack([m.predict_proba(X) for m in self._boot], axis=1)


@dataclass
class RoundRecord:
    """What one round asked for and why.

    Attributes
    ----------
    round : int
    n_candidates : int
        Rows scored this round (the AnchorAL sub-pool size, or every unlabelled row).
    whole_pool : bool
        True when the candidates were every unlabelled row.
    positions : list of int
        The picked pool positions, in pick order.
    ids : list
        Their pool ids.
    scores, raw_scores : list of float
        Their acquisition scores (higher = more informative) and the method's own values (NaN for random).
    labels : list
        The labels the oracle gave them.
    method, sampling : str
    beta : float
    anchors : list of int
        AnchorAL anchor positions (empty without AnchorAL).
    class_counts : dict of str to int
        Labelled rows per class after the round.
    n_labelled : int
        Labelled rows after the round.
    metrics : dict or None
        ``accuracy``, ``macro_f1`` and ``f1`` per class of the model refitted after the round, on the eval data.
    """

    round: int
    n_candidates: int
    whole_pool: bool
    positions: list[int]
    ids: list[Any]
    scores: list[float]
    raw_scores: list[float]
    labels: list[Any]
    method: str
    sampling: str
    beta: float
    anchors: list[int] = field(default_factory=list)
    class_counts: dict[str, int] = field(default_factory=dict)
    n_labelled: int = 0
    metrics: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (NaN scores become None)."""
        out = asdict(self)
        for key in ("scores", "raw_scores"):
            out[key] = [None if not np.isfinite(v) else float(v) for v in out[key]]
        return out


def class_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[Any]) -> dict[str, Any]:
    """Accuracy, macro F1 and per-class F1 (keys ``str(class)``) over ``classes``."""
    from sklearn.metrics import f1_score

    per_class = f1_score(y_true, y_pred, labels=list(classes), average=None, zero_division=0)
    return {
        "accuracy": float(np.mean(np.asarray(y_true) == np.asarray(y_pred))),
        "macro_f1": float(np.mean(per_class)),
        "f1": {str(_plain(c)): float(f) for c, f in zip(classes, per_class)},
    }


class ActiveLearningLoop:
    """Simulated (or interactive) pool-based active learning over embeddings.

    Parameters
    ----------
    pool : ndarray of shape (n_rows, dim) or an embedding store
        Embeddings of every pool row.
    oracle : array of shape (n_rows,) or callable
        True labels of every row (simulation), or ``oracle(positions) -> labels`` (e.g. asks annotators).
    initial_labelled : array of int
        Positions labelled before the first round (their labels come from the oracle); they must hold
        at least two classes for :class:`LogisticBaseline`, and every class for AnchorAL.
    acquisition : Acquisition or "random", optional
        Method, sampling and beta of the acquisition (its own seed is not used: the loop's generator is).
        Default ``Acquisition()`` (entropy, top-k). "random": uniform draws from the candidates.
    model : object with ``fit(X, y)`` and ``predict_proba(X)`` (and ``predict_samples(X)`` for BALD), optional
        Refitted every round; ``classes_`` (sklearn order) names the probability columns. Default
        ``LogisticBaseline()`` (``n_bootstrap=8`` when the method is BALD).
    anchoral : dict, optional
        Keyword arguments of :func:`~thresher.selectors.anchoral.anchoral_subpool` (``n_anchors``,
        ``n_neighbors``, ``subpool_size``, ``neighbors``, ``classes``); None: score every unlabelled row.
    diversity : int, optional
        ``n_candidates`` of :func:`~thresher.selectors.diversity.uncertainty_then_diversity` (top that many by
        score, then k-center greedy to the budget, centered on the labelled rows).
    seed : int or numpy.random.Generator, default 0
        One generator for anchors, sampling and random draws; it advances across rounds.
    """

    def __init__(
        self,
        pool: Any,
        oracle: np.ndarray | Sequence[Any] | Callable[[np.ndarray], Any],
        initial_labelled: Sequence[int] | np.ndarray,
        *,
        acquisition: Acquisition | str | None = None,
        model: Any = None,
        anchoral: Mapping[str, Any] | None = None,
        diversity: int | None = None,
        seed: SeedLike = 0,
    ):
        self.pool = as_pool(pool, _OWNER)
        self.n_rows = self.pool.n_rows
        if acquisition is None:
            acquisition = Acquisition()
        if isinstance(acquisition, str):
            if acquisition != "random":
                raise parameter_error(_OWNER, "acquisition", "an Acquisition or 'random'", acquisition)
        elif isinstance(acquisition, Acquisition):
            acquisition.validate_params()
        else:
            raise parameter_error(_OWNER, "acquisition", "an Acquisition or 'random'", type(acquisition).__name__)
        self.acquisition = acquisition
        is_bald = isinstance(acquisition, Acquisition) and acquisition.method == "bald"
        self.model = model if model is not None else LogisticBaseline(n_bootstrap=8 if is_bald else 0)
        if not (hasattr(self.model, "fit") and hasattr(self.model, "predict_proba")):
            raise parameter_error(_OWNER, "model", "an object with fit(X, y) and predict_proba(X)", type(self.model).__name__)
        if is_bald and not hasattr(self.model, "predict_samples"):
            raise ParameterError(f"BALD needs several predictions per row: the model {type(self.model).__name__} has no predict_samples(X).")
        if anchoral is not None and not isinstance(anchoral, Mapping):
            raise parameter_error(_OWNER, "anchoral", "None or a dict of anchoral_subpool keyword arguments", anchoral)
        self.anchoral = None if anchoral is None else dict(anchoral)
        if diversity is not None and (isinstance(diversity, (bool, np.bool_)) or not isinstance(diversity, (int, np.integer)) or diversity < 1):
            raise parameter_error(_OWNER, "diversity", "None or an int >= 1 (n_candidates)", diversity)
        if diversity is not None and acquisition == "random":
            raise ParameterError("The 'diversity' option of ActiveLearningLoop needs an uncertainty acquisition, not 'random'.")
        self.diversity = diversity
        self.rng = as_generator(seed, _OWNER)
        self.oracle = self._make_oracle(oracle)
        labelled = np.asarray(initial_labelled, dtype=np.int64).reshape(-1)
        if len(labelled) and (labelled.min() < 0 or labelled.max() >= self.n_rows):
            raise InputDataError(f"The initial_labelled positions given to {_OWNER} must lie in [0, {self.n_rows}).")
        if len(np.unique(labelled)) != len(labelled):
            raise InputDataError(f"The initial_labelled positions given to {_OWNER} hold duplicates.")
        self.labelled = labelled
        self.labels = np.asarray(self.oracle(labelled))
        self.is_labelled = np.zeros(self.n_rows, dtype=bool)
        self.is_labelled[labelled] = True
        self.records: list[RoundRecord] = []
        self.last_subpool: AnchorSubpool | None = None
        self._fitted_on = -1

    def _make_oracle(self, oracle: Any) -> Callable[[np.ndarray], np.ndarray]:
        if callable(oracle):
            def ask(positions: np.ndarray) -> np.ndarray:
                got = np.asarray(oracle(positions)).reshape(-1)
                if len(got) != len(positions):
                    raise InputDataError(f"The oracle of {_OWNER} returned {len(got)} labels for {len(positions)} positions.")
                return got
            return ask
        truth = np.asarray(oracle).reshape(-1)
        if len(truth) != self.n_rows:
            raise InputDataError(f"The oracle labels given to {_OWNER} hold {len(truth)} values but the pool has {self.n_rows} rows.")
        return lambda positions: truth[positions]

    # ------------------------------------------------------------------------------------------
    def fit(self) -> Any:
        """Fit the model on the labelled rows (skipped when already fitted on exactly them)."""
        if self._fitted_on != len(self.labelled):
            self.model.fit(self.pool.take(self.labelled), self.labels)
            self._fitted_on = len(self.labelled)
        return self.model

    def _predict(self, positions: np.ndarray) -> np.ndarray:
        """Predictions of the candidates, (n, C) or (n, S, C) for BALD, in blocks."""
        bald = isinstance(self.acquisition, Acquisition) and self.acquisition.method == "bald"
        fn = self.model.predict_samples if bald else self.model.predict_proba
        parts = [np.asarray(fn(self.pool.take(positions[lo : lo + PREDICT_BLOCK_ROWS]))) for lo in range(0, len(positions), PREDICT_BLOCK_ROWS)]
        return np.concatenate(parts)

    def _candidates(self) -> tuple[np.ndarray, bool, np.ndarray]:
        if self.anchoral is None:
            self.last_subpool = None
            return np.flatnonzero(~self.is_labelled).astype(np.int64), True, np.empty(0, dtype=np.int64)
        sub = anchoral_subpool(self.pool, self.labelled, self.labels, seed=self.rng, **self.anchoral)
        self.last_subpool = sub
        return sub.positions, sub.whole_pool, sub.anchors

    def run_round(self, budget: int, *, eval_X: np.ndarray | None = None, eval_y: np.ndarray | None = None) -> RoundRecord:
        """Acquire ``budget`` rows, label them, and return the round's record.

        ``eval_X`` (n_eval, dim) and ``eval_y`` (n_eval,): when given, the model is refitted on the grown
        labelled set and its accuracy / F1 on them are recorded.
        """
        candidates, whole, anchors = self._candidates()
        if isinstance(budget, (bool, np.bool_)) or not isinstance(budget, (int, np.integer)) or not 1 <= budget <= len(candidates):
            raise parameter_error(_OWNER, "budget", f"an int in [1, {len(candidates)}] (the candidates this round)", budget)
        acq = self.acquisition
        if acq == "random":
            local = self.rng.choice(len(candidates), size=int(budget), replace=False)
            s = raw = np.full(len(candidates), np.nan)
            method, sampling, beta = "random", "uniform", 0.0
        else:
            self.fit()
            scores = score(self._predict(candidates), acq.method, layout=acq.layout, from_logits=acq.from_logits)
            s, raw = scores.score, scores.raw
            method, sampling, beta = acq.method, acq.sampling, float(acq.beta)
            if self.diversity is not None:
                sampling = f"diversity(n_candidates={self.diversity})"
                local = uncertainty_then_diversity(
                    self.pool.take(candidates), s, int(budget), n_candidates=min(self.diversity, len(candidates)),
                    centers=self.pool.take(self.labelled), seed=self.rng,
                )
            else:
                local = sample_batch(s, int(budget), sampling=acq.sampling, beta=acq.beta, seed=self.rng)
        picked = candidates[np.asarray(local, dtype=np.int64)]
        new_labels = np.asarray(self.oracle(picked))
        self.labelled = np.concatenate([self.labelled, picked])
        self.labels = np.concatenate([self.labels, new_labels])
        self.is_labelled[picked] = True
        record = RoundRecord(
            round=len(self.records), n_candidates=int(len(candidates)), whole_pool=bool(whole),
            positions=picked.tolist(), ids=[_plain(i) for i in self.pool.ids()[picked]],
            scores=s[local].tolist(), raw_scores=raw[local].tolist(), labels=[_plain(v) for v in new_labels],
            method=method, sampling=sampling, beta=beta, anchors=anchors.tolist(),
            class_counts=self.class_counts(), n_labelled=int(len(self.labelled)),
            metrics=self.evaluate(eval_X, eval_y) if eval_X is not None else None,
        )
        self.records.append(record)
        return record

    def class_counts(self) -> dict[str, int]:
        """Labelled rows per class (keys ``str(class)``)."""
        values, counts = np.unique(self.labels, return_counts=True)
        return {str(_plain(v)): int(c) for v, c in zip(values, counts)}

    def evaluate(self, eval_X: np.ndarray, eval_y: np.ndarray) -> dict[str, Any]:
        """Accuracy and F1 of the model fitted on the current labelled set."""
        if eval_y is None or len(np.asarray(eval_X)) != len(np.asarray(eval_y).reshape(-1)):
            raise InputDataError(f"eval_X and eval_y given to {_OWNER} must have the same number of rows.")
        eval_y = np.asarray(eval_y).reshape(-1)
        model = self.fit()
        probs = np.asarray(model.predict_proba(np.asarray(eval_X)))
        classes = np.asarray(getattr(model, "classes_", np.unique(self.labels)))
        pred = classes[np.argmax(probs, axis=1)]
        return class_metrics(eval_y, pred, np.unique(np.concatenate([classes, eval_y])))

    def run(self, n_rounds: int, budget: int, *, eval_X: np.ndarray | None = None, eval_y: np.ndarray | None = None) -> list[RoundRecord]:
        """``n_rounds`` rounds of ``budget`` rows each; returns their records."""
        if isinstance(n_rounds, (bool, np.bool_)) or not isinstance(n_rounds, (int, np.integer)) or n_rounds < 1:
            raise parameter_error(_OWNER, "n_rounds", "an int >= 1", n_rounds)
        return [self.run_round(budget, eval_X=eval_X, eval_y=eval_y) for _ in range(n_rounds)]
