"""The step registry: every kind of pipeline step, one module each.

A spec's ``steps`` list names kinds from :data:`STEPS`; :mod:`thresher.pipeline.spec`
validates each entry with its kind's ``Config`` and :mod:`thresher.pipeline.runner`
plans, fingerprints, estimates and runs it through its kind, with no branch on
the kind anywhere else. A kind's module holds everything about it:

- ``Config``: the pydantic model of its spec entry (``step: <name>`` plus its keys);
- ``version``: one constant, used by its stage's fingerprint and the runner's cache
  (bump it when the output changes meaning; cached outputs of the step and of every
  step downstream are then recomputed);
- ``fingerprint(inputs, params)``, the ``--dry-run`` checks and estimates
  (``check``, ``check_rows``, ``rows_after``, ``expected_rows``, ``memory``);
- ``run(config, inputs, executor)``: the stage on a :class:`StepInputs`, on a
  :class:`thresher.jobs.executor.Executor`.

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
            return select_shuffle(inputs.store.path, inputs.out, seed=config.seed, subset=inputs.subset,
                                  overwrite=inputs.overwrite, executor=executor)

    STEP = ShuffleKind()

and its name in :data:`_MODULES` below.
"""

from __future__ import annotations

import importlib

from thresher.pipeline.steps._base import StepConfig, StepInputs, StepKind, StrictModel

#: The step modules, in the order the spec's error messages list the kinds.
_MODULES = ("semdedup", "rds", "smote", "batches")

#: Step kind name (the spec's ``step:`` value) → its :class:`StepKind`.
STEPS: dict[str, StepKind] = {}
for _module in _MODULES:
    _kind = importlib.import_module(f"{__name__}.{_module}").STEP
    STEPS[_kind.name] = _kind


def step_kind(step: str | StepConfig) -> StepKind:
    """The kind of a step, by name or by its validated config."""
    return STEPS[step if isinstance(step, str) else step.step]


__all__ = ["STEPS", "StepConfig", "StepInputs", "StepKind", "StrictModel", "step_kind"]
