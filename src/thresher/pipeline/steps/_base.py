"""What every pipeline step kind declares, and what the runner hands it.

A step kind (:class:`StepKind`) is the one place a step is described: its
typed spec config (a pydantic model, ``Config``), its ``version`` (bumped when
its output changes meaning: every cached output of the step, and of the steps
downstream, is then recomputed), its :meth:`~StepKind.fingerprint`, the checks
and estimates of ``thresher run --dry-run``, and :meth:`~StepKind.run`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A frozen spec section that refuses unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StepConfig(StrictModel):
    """What every step has: an optional name (default: its kind) and the step whose rows it takes (default: the one before)."""

    name: str | None = None
    input: str | None = None


@dataclass(frozen=True)
class StepInputs:
    """What a step runs on, as the runner (or a caller of :meth:`StepKind.run`) hands it.

    Attributes
    ----------
    store : thresher.stores.EmbeddingStore
        The pool's embedding store.
    out : Path
        The step's output directory.
    run_dir : Path
        The run directory (steps may keep derived inputs there, e.g. RDS+'s per-task target files).
    index : Path, optional
        The run's FAISS index over ``store``, when the spec has one.
    subset : ndarray of int, optional
        Sorted store positions of the rows the step sees (None: every row).
    overwrite : bool
        Replace what ``out`` holds (an older version of this step's output).
    """

    store: Any
    out: Path
    run_dir: Path
    index: Path | None = None
    subset: np.ndarray | None = None
    overwrite: bool = False


class StepKind:
    """One kind of pipeline step; subclasses set the class attributes and override what differs.

    ``fingerprint_tag`` is the name its artefacts' fingerprints carry (the stage's own name,
    e.g. ``rds_plus``), so a step run by the runner and the same stage run alone agree.
    """

    name: ClassVar[str]
    Config: ClassVar[type[StepConfig]]
    version: int
    fingerprint_tag: ClassVar[str]
    #: False when the output holds rows that are not pool rows (SMOTE's synthetic rows): no step may take its rows.
    keeps_pool_rows: ClassVar[bool] = True

    def fingerprint(self, inputs: list[str], params: dict[str, Any]) -> str:
        """The identity of this step's output: ``inputs``' fingerprints, the step's tag and version, ``params``."""
        from thresher.fingerprint import fingerprint_of

        return fingerprint_of(self.fingerprint_tag, self.version, params, inputs)

    def params(self, config: StepConfig) -> dict[str, Any]:
        """The step's parameters as the runner fingerprints them (before any row is read)."""
        return config.model_dump(mode="json", exclude={"name"})

    def uses_index(self, config: StepConfig) -> bool:
        """True when the step reads the run's index (its fingerprint then depends on the index's)."""
        return False

    def pool_columns(self, config: StepConfig) -> list[str]:
        """Pool columns the step reads (checked against the pool before any work)."""
        return []

    def input_files(self, config: StepConfig) -> dict[str, Any]:
        """User files the step reads, by key (a run directory may not be one of them)."""
        return {}

    def resolve_paths(self, config: StepConfig, resolve: Callable[[str], str]) -> StepConfig:
        """``config`` with its file paths made absolute by ``resolve``."""
        return config

    def check(self, config: StepConfig, *, has_index: bool) -> str | None:
        """Why the step cannot run in this spec (None: it can), before any row is read."""
        return None

    def check_rows(self, config: StepConfig, bound: int) -> str | None:
        """Why the step cannot run on at most ``bound`` rows (None: it can)."""
        return None

    def rows_after(self, config: StepConfig, bound: int | None) -> int | None:
        """The most rows the step outputs when at most ``bound`` reach it (None: unknown)."""
        return bound

    def expected_rows(self, config: StepConfig, bound: int) -> str:
        """The rows ``--dry-run`` announces."""
        return f"≤ {bound:,}"

    def memory(self, config: StepConfig, bound: int | None) -> str:
        """An order-of-magnitude estimate of what one task (or the driver) holds, for ``--dry-run``."""
        return "?"

    def run(self, config: StepConfig, inputs: StepInputs, executor: Any) -> Any:
        """Run the step on ``inputs`` with ``executor``; returns its :class:`thresher.stores.CuratedShards`."""
        raise NotImplementedError
