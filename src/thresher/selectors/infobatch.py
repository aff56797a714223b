"""InfoBatch: lossless training speed-up by unbiased dynamic data pruning.

Qin et al., "InfoBatch: Lossless Training Speed Up by Unbiased Dynamic Data
Pruning", ICLR 2024 (arXiv 2303.04947).

Each sample's score is its most recent per-sample loss (unseen samples start
at ``initial_score``, 3.0 in the reference, above typical losses). At the
start of each pruning epoch:

- threshold ``t = mean(scores)`` over *all* samples, stale scores included;
- "well-learned" samples are those with ``score < t`` (strictly);
- a random ``floor((1 - r) * n_well)`` of them are kept, with loss weight
  ``1 / (1 - r)``; the others are dropped for this epoch;
- every other sample is kept with weight 1.

The training loss is ``mean(w * loss)``, which keeps the expected gradient
unbiased. From epoch ``ceil(delta * epochs)`` on (annealing) the full data is
used with all weights 1. Pruned samples keep their old score; trained samples
get their new loss through :meth:`InfoBatch.update`.

Differences from the reference code, on purpose: no monkey patching of the
DataLoader and no global RNG (an epoch's plan is a pure function of
``(seed, epoch, scores)`` through :func:`thresher.rng.derive_seed`); the
annealing epoch is exactly ``ceil(delta * epochs)`` and weights are 1 from
there on even when ``delta * epochs`` is not an integer (the reference keeps
stale ``1 / (1 - r)`` weights then); indices are int64 everywhere (the
reference all-gathers them as floats, wrong above 2**24 samples); the state
saves and loads with the training run (:mod:`thresher.training.infobatch`
writes it, and the loss shards trainers feed back: this module reads and
writes no files).

``r`` and ``delta`` are read as the decimals they print as, so
``floor((1 - 0.9) * 10)`` is 1 and ``ceil(0.1 * 10)`` is 1, not the 0 and 2
that binary floating point would give.

The numpy core needs no torch; :meth:`InfoBatch.batch_sampler` returns a plain
iterable of index lists that ``torch.utils.data.DataLoader(batch_sampler=...)``
accepts, and :meth:`InfoBatch.update` / :meth:`InfoBatch.weights` take torch
tensors as well as numpy arrays.

Distributed training: every rank must hold the same scores, so gather the
(int64 indices, per-sample losses) of all ranks (e.g. ``all_gather`` of an
int64 tensor and a float tensor) and call :meth:`InfoBatch.update` with them
on every rank; never send indices through a float tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from thresher.exceptions import ArtifactError, InputDataError, ParameterError
from thresher.params import Interval, check_param, check_params
from thresher.rng import as_generator, derive_seed

STATE_VERSION = 1
MAX_PRUNE_RATIO = 0.9
_OWNER = "InfoBatch"


def _decimal(x: float) -> Fraction:
    """The value ``x`` prints as, exactly (0.9 -> 9/10), so floor/ceil follow what the user wrote."""
    return Fraction(repr(float(x)))


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


@dataclass(frozen=True)
class EpochPlan:
    """The samples one epoch trains on, in order, with their loss weights.

    Attributes
    ----------
    epoch : int
    indices : ndarray of int64, shape (n_kept,)
        Sample indices (0 .. n_samples-1), shuffled; no duplicates.
    weights : ndarray of float32, shape (n_kept,)
        Loss weight of each entry of ``indices``: ``1 / (1 - r)`` for kept
        well-learned samples, 1 otherwise.
    n_samples : int
        Size of the dataset.
    pruning : bool
        False in annealing epochs (full data, weights 1).
    threshold : float or None
        Mean of all scores at planning time (None in annealing epochs).
    n_well : int
        Samples with score strictly below the threshold (0 in annealing epochs).
    n_kept_well : int
        Well-learned samples kept: ``floor((1 - r) * n_well)``.
    """

    epoch: int
    indices: np.ndarray
    weights: np.ndarray
    n_samples: int
    pruning: bool
    threshold: float | None
    n_well: int
    n_kept_well: int

    @property
    def ids(self) -> np.ndarray:
        """Alias of ``indices`` (the plan refers to samples by their dataset index)."""
        return self.indices

    @property
    def n_kept(self) -> int:
        return int(len(self.indices))

    @property
    def n_pruned(self) -> int:
        return self.n_samples - self.n_kept

    @property
    def kept_fraction(self) -> float:
        return self.n_kept / self.n_samples

    def report(self) -> dict[str, Any]:
        """Plain-JSON statistics of this plan."""
        return {
            "epoch": self.epoch,
            "pruning": self.pruning,
            "threshold": self.threshold,
            "n_samples": self.n_samples,
            "n_well": self.n_well,
            "n_kept_well": self.n_kept_well,
            "n_kept": self.n_kept,
            "n_pruned": self.n_pruned,
            "kept_fraction": self.kept_fraction,
        }


class EpochBatchSampler:
    """One rank's batches of an epoch plan: an iterable of index lists for ``DataLoader(batch_sampler=...)``.

    Rank ``k`` of ``world_size`` takes ``plan.indices[k::world_size]``, so the
    ranks' parts are disjoint and together cover the plan. All ranks yield the
    same number of batches (collective ops in DDP need that): with
    ``drop_last=False`` it is ``ceil(q / batch_size)`` where ``q`` is the
    smallest part, and a rank whose part is one longer puts the extra sample
    in its last batch (so that batch may hold ``batch_size + 1`` samples);
    with ``drop_last=True`` every batch holds exactly ``batch_size`` samples
    and the rest of the part is not trained this epoch.
    """

    def __init__(self, plan: EpochPlan, batch_size: int, *, rank: int = 0, world_size: int = 1, drop_last: bool = False):
        self.plan = plan
        self.epoch = plan.epoch
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.indices = np.ascontiguousarray(plan.indices[rank::world_size])
        q = plan.n_kept // world_size
        self._n_batches = q // batch_size if drop_last else -(-q // batch_size)

    def __len__(self) -> int:
        return self._n_batches

    def bounds(self) -> Iterator[tuple[int, int]]:
        """(start, stop) of each batch in ``self.indices``."""
        b, nb = self.batch_size, self._n_batches
        for k in range(nb):
            stop = (k + 1) * b if (self.drop_last or k < nb - 1) else len(self.indices)
            yield k * b, stop

    def __iter__(self) -> Iterator[list[int]]:
        for lo, hi in self.bounds():
            yield self.indices[lo:hi].tolist()



class InfoBatch:
    """Per-epoch pruning plans from fed-back per-sample losses (Qin et al., ICLR 2024).

    Parameters
    ----------
    n_samples : int
        Dataset size; samples are referred to by index 0 .. n_samples-1.
    epochs : int
        Total training epochs (sets the annealing epoch).
    prune_ratio : float, default 0.5
        ``r``: fraction of the well-learned samples dropped each pruning epoch, in [0, 0.9].
    delta : float, default 0.875
        Annealing starts at epoch ``ceil(delta * epochs)``; in [0, 1].
    seed : int, default 0
    initial_score : float, default 3.0
        Score of samples never trained yet.

    Examples
    --------
    >>> ib = InfoBatch(n_samples=len(ds), epochs=90)                  # doctest: +SKIP
    >>> for epoch in range(90):                                        # doctest: +SKIP
    ...     for idx, batch in DataLoader(IndexedDataset(ds), batch_sampler=ib.batch_sampler(epoch, batch_size=256)):
    ...         loss = criterion(model(batch), reduction="none")
    ...         ib.update(idx, loss.detach())
    ...         (loss * ib.weights(idx, device=loss.device)).mean().backward()
    ...     ib.save(ckpt_dir)
    """

    _parameter_constraints = {
        "n_samples": [Interval(int, 1, None)],
        "epochs": [Interval(int, 1, None)],
        "prune_ratio": [Interval(float, 0, MAX_PRUNE_RATIO)],
        "delta": [Interval(float, 0, 1)],
        "seed": [Interval(int, 0, None)],
        "initial_score": [Interval(float, None, None)],
    }

    def __init__(
        self,
        *,
        n_samples: int,
        epochs: int,
        prune_ratio: float = 0.5,
        delta: float = 0.875,
        seed: int = 0,
        initial_score: float = 3.0,
    ):
        check_params(_OWNER, {"n_samples": n_samples, "epochs": epochs, "prune_ratio": prune_ratio, "delta": delta, "seed": seed,
                              "initial_score": initial_score}, self._parameter_constraints)
        check_fits_in_memory(int(n_samples))
        self.n_samples = int(n_samples)
        self.epochs = int(epochs)
        self.prune_ratio = float(prune_ratio)
        self.delta = float(delta)
        self.seed = int(seed)
        self.initial_score = float(initial_score)
        self._scores = np.full(self.n_samples, self.initial_score, dtype=np.float32)
        self._active_epoch: int | None = None
        self._active_kept_well = np.zeros(self.n_samples, dtype=bool)
        self._history: dict[int, dict[str, Any]] = {}

    # ------------------------------------------------------------------ settings

    def get_params(self) -> dict[str, Any]:
        return {
            "n_samples": self.n_samples,
            "epochs": self.epochs,
            "prune_ratio": self.prune_ratio,
            "delta": self.delta,
            "seed": self.seed,
            "initial_score": self.initial_score,
        }

    def __repr__(self) -> str:
        return "InfoBatch(" + ", ".join(f"{k}={v!r}" for k, v in self.get_params().items()) + ")"

    @property
    def annealing_epoch(self) -> int:
        """First epoch with full data and weights 1: ``ceil(delta * epochs)``."""
        return math.ceil(_decimal(self.delta) * self.epochs)

    @property
    def kept_weight(self) -> float:
        """Loss weight of a kept well-learned sample: ``1 / (1 - r)``."""
        return float(1 / (1 - _decimal(self.prune_ratio)))

    def n_keep(self, n_well: int) -> int:
        """Well-learned samples kept in a pruning epoch: ``floor((1 - r) * n_well)``."""
        return math.floor((1 - _decimal(self.prune_ratio)) * int(n_well))

    @property
    def scores(self) -> np.ndarray:
        """Current scores, float32 of shape (n_samples,) (a read-only view)."""
        view = self._scores.view()
        view.flags.writeable = False
        return view

    # ------------------------------------------------------------------ plans

    def _check_epoch(self, epoch: Any) -> int:
        check_param(_OWNER, "epoch", epoch, [Interval(int, 0, self.epochs, closed="left")])
        return int(epoch)

    def plan(self, epoch: int) -> EpochPlan:
        """The plan of ``epoch`` from the current scores; a pure function of (seed, epoch, scores)."""
        epoch = self._check_epoch(epoch)
        return plan_epoch(
            self._scores, epoch=epoch, seed=self.seed, pruning=epoch < self.annealing_epoch,
            kept_weight=self.kept_weight, n_keep=self.n_keep,
        )

    def start_epoch(self, epoch: int) -> EpochPlan:
        """Plan ``epoch``, make its weights the ones :meth:`weights` returns, and record its report."""
        plan = self.plan(epoch)
        self._active_epoch = plan.epoch
        self._active_kept_well = np.zeros(self.n_samples, dtype=bool)
        if plan.pruning and plan.n_kept_well:
            self._active_kept_well[plan.indices] = plan.weights != 1.0
        self._history[plan.epoch] = plan.report()
        return plan

    def batch_sampler(self, epoch: int, batch_size: int, *, rank: int = 0, world_size: int = 1, drop_last: bool = False) -> EpochBatchSampler:
        """Start ``epoch`` and return this rank's batches of its plan (see :class:`EpochBatchSampler`).

        Every rank must call it with the same scores (feed all ranks' losses to
        every rank's :meth:`update`), so all ranks build the same plan.
        """
        check_param(_OWNER, "batch_size", batch_size, [Interval(int, 1, None)])
        check_param(_OWNER, "world_size", world_size, [Interval(int, 1, None)])
        check_param(_OWNER, "rank", rank, [Interval(int, 0, world_size, closed="left")])
        plan = self.start_epoch(epoch)
        if plan.n_kept < world_size:
            raise InputDataError(f"The plan of epoch {plan.epoch} holds {plan.n_kept} samples, fewer than the {world_size} ranks ('world_size').")
        return EpochBatchSampler(plan, int(batch_size), rank=int(rank), world_size=int(world_size), drop_last=bool(drop_last))

    # ------------------------------------------------------------------ feedback

    def update(self, indices: Any, losses: Any) -> None:
        """Set the score of each sample in ``indices`` to its loss in ``losses``.

        Parameters
        ----------
        indices : int array-like or torch tensor of shape (n,)
            Sample indices (int64 for exactness; floats are refused).
        losses : float array-like or torch tensor of shape (n,)
            Per-sample losses (``reduction="none"``); finite.
        """
        idx = self._indices(indices, "indices")
        values = as_numpy(losses, "losses", float_=True)
        if values.ndim == 0:
            raise InputDataError(
                "The 'losses' given to InfoBatch.update is a scalar (a reduced loss); pass per-sample losses "
                "(reduction='none') of shape (n,)."
            )
        if values.ndim != 1:
            raise InputDataError(f"The 'losses' given to InfoBatch.update must be 1-D (n,); got shape {values.shape}.")
        if len(values) != len(idx):
            raise InputDataError(f"The 'losses' given to InfoBatch.update has {len(values)} values for {len(idx)} 'indices'.")
        scores = values.astype(np.float32)
        finite = np.isfinite(scores)
        if not finite.all():
            j = int(np.argmin(finite))
            raise InputDataError(
                f"The 'losses' given to InfoBatch.update hold a non-finite value {float(values[j])!r} "
                f"at position {j} (sample index {int(idx[j])}); it would corrupt every later threshold."
            )
        self._scores[idx] = scores

    def update_from_shards(self, directory: str | Path) -> int:
        """Apply the loss shards in ``directory``; see :func:`thresher.training.infobatch.apply_loss_shards`."""
        from thresher.training.infobatch import apply_loss_shards

        return apply_loss_shards(self, directory)

    def weights(self, indices: Any, *, device: Any = None) -> Any:
        """Loss weights of ``indices`` in the started epoch (:meth:`start_epoch` / :meth:`batch_sampler`).

        Parameters
        ----------
        indices : int array-like or torch tensor of shape (n,)
        device : torch device or str, optional
            Where to put the returned tensor (e.g. ``loss.device`` when the
            loader's indices stay on the CPU and the loss is on a GPU).

        Returns
        -------
        float32 torch tensor of shape (n,) for a torch input or when ``device`` is given, else float32 numpy array.
        """
        idx = self._indices(indices, "indices")
        w = np.where(self._active_kept_well[idx], np.float32(self.kept_weight), np.float32(1.0)).astype(np.float32)
        if _is_torch(indices) or device is not None:
            import torch

            return torch.from_numpy(w).to(device if device is not None else indices.device)
        return w

    def _indices(self, indices: Any, name: str) -> np.ndarray:
        idx = as_numpy(indices, name, float_=False)
        if idx.ndim != 1:
            raise InputDataError(f"The {name!r} given to InfoBatch must be 1-D (n,); got shape {idx.shape}.")
        if len(idx) == 0:
            return idx.astype(np.int64)
        if not np.issubdtype(idx.dtype, np.integer):
            raise InputDataError(
                f"The {name!r} given to InfoBatch must be integers (int64); got dtype {idx.dtype} "
                "(floats are exact only up to 2**24 for float32)."
            )
        idx = idx.astype(np.int64, copy=False)
        bad = (idx < 0) | (idx >= self.n_samples)
        if bad.any():
            j = int(np.argmax(bad))
            raise InputDataError(f"The {name!r} given to InfoBatch hold {int(idx[j])} at position {j}, outside [0, {self.n_samples}).")
        return idx

    # ------------------------------------------------------------------ reports

    def history(self) -> list[dict[str, Any]]:
        """Per started epoch, in epoch order: the plan's report plus ``saving_so_far`` (sample-steps saved / full, cumulative)."""
        out, full, trained = [], 0, 0
        for epoch in sorted(self._history):
            rep = dict(self._history[epoch])
            full += rep["n_samples"]
            trained += rep["n_kept"]
            rep["saving_so_far"] = 1 - trained / full
            out.append(rep)
        return out

    def summary(self) -> dict[str, Any]:
        """Total saving over the started epochs: ``1 - sample_steps_trained / sample_steps_full``."""
        hist = self.history()
        full = sum(r["n_samples"] for r in hist)
        trained = sum(r["n_kept"] for r in hist)
        return {
            "n_epochs_started": len(hist),
            "epochs": self.epochs,
            "annealing_epoch": self.annealing_epoch,
            "sample_steps_full": full,
            "sample_steps_trained": trained,
            "sample_steps_saved": full - trained,
            "saving": (full - trained) / full if full else 0.0,
        }

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: settings, scores, the started epoch's weights, the history."""
        return {
            "version": STATE_VERSION,
            "params": self.get_params(),
            "scores": self._scores.copy(),
            "active_epoch": self._active_epoch,
            "active_kept_well": self._active_kept_well.copy(),
            "history": {int(k): dict(v) for k, v in self._history.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` (settings must match this object's)."""
        if state.get("version") != STATE_VERSION:
            raise ArtifactError(f"InfoBatch state has version {state.get('version')!r}; this thresher reads {STATE_VERSION}.")
        if dict(state["params"]) != self.get_params():
            raise _settings_mismatch(state["params"], self.get_params())
        scores = np.asarray(state["scores"], dtype=np.float32)
        kept = np.asarray(state["active_kept_well"], dtype=bool)
        if scores.shape != (self.n_samples,) or kept.shape != (self.n_samples,):
            raise ArtifactError(f"InfoBatch state holds {scores.shape} scores for n_samples={self.n_samples}.")
        self._scores = scores.copy()
        self._active_kept_well = kept.copy()
        self._active_epoch = None if state["active_epoch"] is None else int(state["active_epoch"])
        self._history = {int(k): dict(v) for k, v in state["history"].items()}

    def save(self, directory: str | Path) -> Path:
        """Write the state to ``directory``; see :func:`thresher.training.infobatch.save_state`."""
        from thresher.training.infobatch import save_state

        return save_state(self, directory)

    @classmethod
    def load(cls, directory: str | Path) -> InfoBatch:
        """Read a state written by :meth:`save`; see :func:`thresher.training.infobatch.load_state`."""
        from thresher.training.infobatch import load_state

        return load_state(directory, cls)


def _settings_mismatch(saved: Mapping[str, Any], current: Mapping[str, Any]) -> ArtifactError:
    diff = {k: (saved.get(k), current.get(k)) for k in set(saved) | set(current) if saved.get(k) != current.get(k)}
    return ArtifactError(f"InfoBatch state was made with other settings (saved vs this object): {diff}.")


# Bytes per sample at the peak of planning a pruning epoch: the state (float32 score, bool kept-well flag)
# plus plan_epoch's arrays (bool well and keep masks, int64 well_idx and indices, float32 weights).
BYTES_PER_SAMPLE = 4 + 1 + 1 + 8 + 1 + 8 + 4


def check_fits_in_memory(n_samples: int, *, total_bytes: int | None = None) -> None:
    """Refuse an ``n_samples`` whose state and epoch plan cannot fit in this machine's memory, before allocating anything.

    ``total_bytes`` defaults to the machine's physical memory (psutil).
    """
    import psutil

    total = psutil.virtual_memory().total if total_bytes is None else int(total_bytes)
    needed = n_samples * BYTES_PER_SAMPLE
    if needed > total:
        raise ParameterError(
            f"The 'n_samples' parameter of InfoBatch (--n-samples {n_samples}) needs {_format_bytes(needed)} of memory for the "
            f"InfoBatch state and an epoch's plan ({BYTES_PER_SAMPLE} bytes a sample); this machine has {_format_bytes(total)}."
        )


def _format_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if value < 1000 or unit == "PB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1000
    return f"{value:.1f} PB"


def plan_epoch(
    scores: np.ndarray,
    *,
    epoch: int,
    seed: int,
    pruning: bool,
    kept_weight: float,
    n_keep: Callable[[int], int],
) -> EpochPlan:
    """The InfoBatch plan of one epoch (see the module docstring); randomness from ``derive_seed(seed, epoch)``.

    Parameters
    ----------
    scores : ndarray of float, shape (n_samples,)
    epoch, seed : int
    pruning : bool
        False for an annealing epoch (full data, weights 1).
    kept_weight : float
        ``1 / (1 - r)``.
    n_keep : callable
        ``n_well -> floor((1 - r) * n_well)``.
    """
    n = len(scores)
    rng = as_generator(derive_seed(seed, epoch), _OWNER)
    if not pruning:
        indices = rng.permutation(n).astype(np.int64, copy=False)
        return EpochPlan(epoch, indices, np.ones(n, dtype=np.float32), n, False, None, 0, 0)
    threshold = float(np.mean(scores, dtype=np.float64))
    well = scores < threshold
    well_idx = np.flatnonzero(well)
    n_well = len(well_idx)
    k = n_keep(n_well)
    # In-place shuffles, no permutation arrays: at 10M samples each copy is 80 MB.
    keep = ~well
    if k < n_well:
        rng.shuffle(well_idx)
        keep[well_idx[:k]] = True
    else:
        keep[well_idx] = True
    del well_idx
    indices = np.flatnonzero(keep)
    del keep
    rng.shuffle(indices)
    weights = np.where(well[indices], np.float32(kept_weight), np.float32(1.0))
    return EpochPlan(epoch, indices.astype(np.int64, copy=False), weights, n, True, threshold, n_well, int(k))


def as_numpy(x: Any, name: str, *, float_: bool) -> np.ndarray:
    """``x`` (a torch tensor, moved to the CPU, or anything array-like) as a numpy array; ``name`` is for error messages.

    With ``float_``, floating tensors become float32 and arrays must hold numbers.
    """
    if _is_torch(x):
        x = x.detach().cpu()
        if float_ and x.is_floating_point():
            x = x.float()
        return x.numpy()
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise InputDataError(f"The {name!r} given to InfoBatch is not array-like: {exc}") from None
    if float_ and not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InputDataError(f"The {name!r} given to InfoBatch must be numbers; got dtype {arr.dtype}.")
    return arr



# Moved to thresher.training (issue 15); still importable from here.
_MOVED = {
    "IndexedDataset": "thresher.training.samplers",
    "write_loss_shard": "thresher.training.infobatch",
    "STATE_FILE": "thresher.training.infobatch",
    "SCORES_FILE": "thresher.training.infobatch",
    "ACTIVE_FILE": "thresher.training.infobatch",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
