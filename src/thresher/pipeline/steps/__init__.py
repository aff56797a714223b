"""The stage registry: every kind of stage a run is made of, one module each.

A run is a chain of stages, all planned, cached and run through one protocol
(:class:`StageKind`, in :mod:`~thresher.pipeline.steps._base`) by
:mod:`thresher.pipeline.runner`, with no branch on the kind anywhere else:

- the embedding, the source of every later stage (:class:`SourceKind`): ``embed``
  (:mod:`.embed`, the pool embedded into ``<run>/embeddings``) or ``store``
  (:mod:`.store`, an existing store read in place: ``embedding: {store: DIR}``
  in the spec, or ``thresher run --embeddings DIR``), chosen by
  :func:`embedding_kind`;
- ``index`` (:mod:`.index`), when the spec has an ``index`` section;
- the spec's ``steps``, each of a kind in :data:`STEPS`, validated by
  :mod:`thresher.pipeline.spec` with its kind's ``Config``.

A kind's module holds everything about it:

- ``version``: one constant, used by its stage's fingerprint and the runner's cache
  (bump it when the output changes meaning; cached outputs of the stage and of every
  stage downstream are then recomputed);
- ``plan_fingerprint`` (a step: ``fingerprint(inputs, params)``), the stages it reads
  (``upstream``), how a finished output is recognised (``is_cached``) and reopened
  (``open_cached``);
- the ``--dry-run`` checks and estimates (``check``, ``check_rows``, ``rows_after``,
  ``expected_rows``, ``memory``);
- ``run(config, inputs, executor)``: the stage on a :class:`StepInputs`, on a
  :class:`thresher.jobs.executor.Executor`; a step's ``Config`` is the pydantic
  model of its spec entry (``step: <name>`` plus its keys).

Adding a step is one module plus its tests::

    # src/thresher/pipeline/steps/shuffle.py
    from typing import Literal
    from thresher.pipeline.steps._base import StepConfig, StepKind

    VERSION = 1

    class ShuffleStep(StepConfig):
        step: Literal["shuffle"]
        seed: int = 0

    class ShuffleKind(StepKind):
        name, Config, version, fingerprint_tag = "shuffle", ShuffleStep, VERSION, "shuffle"

        def run(self, config, inputs, executor):
            from thresher.pipeline.shuffle import select_shuffle   # the stage function
            return select_shuffle(inputs.store, inputs.out, seed=config.seed, subset=inputs.subset,
                                  overwrite=inputs.overwrite, executor=executor)

    STEP = ShuffleKind()

and its name in :data:`_MODULES` below.
"""

from __future__ import annotations

import importlib
from typing import Any

from thresher.pipeline.steps._base import SourceKind, StageKind, StepConfig, StepInputs, StepKind, StrictModel

#: The step modules, in the order the spec's error messages list the kinds.
_MODULES = ("semdedup", "rds", "smote", "batches")
#: The stages a run has besides its steps: the two embedding sources and the index.
_STAGE_MODULES = ("embed", "store", "index")

#: Step kind name (the spec's ``step:`` value) → its :class:`StepKind`.
STEPS: dict[str, StepKind] = {}
for _module in _MODULES:
    _kind = importlib.import_module(f"{__name__}.{_module}").STEP
    STEPS[_kind.name] = _kind

#: Every stage kind by name: the embedding sources, the index, and the steps.
STAGES: dict[str, StageKind] = {}
for _module in _STAGE_MODULES:
    _stage = importlib.import_module(f"{__name__}.{_module}").STAGE
    STAGES[_stage.name] = _stage
STAGES.update(STEPS)


def step_kind(step: str | StepConfig) -> StepKind:
    """The kind of a step, by name or by its validated config."""
    return STEPS[step if isinstance(step, str) else step.step]


def stage_kind(name: str) -> StageKind:
    """Any stage kind by name (``embed``, ``store``, ``index``, or a step kind)."""
    return STAGES[name]


def embedding_kind(spec: Any) -> SourceKind:
    """Where a run's embedding store comes from: an existing store (``embedding: {store: DIR}``) or the pool embedded."""
    return STAGES["store" if spec.embedding.store is not None else "embed"]  # type: ignore[return-value]


__all__ = ["STAGES", "STEPS", "SourceKind", "StageKind", "StepConfig", "StepInputs", "StepKind", "StrictModel", "embedding_kind",
           "stage_kind", "step_kind"]
