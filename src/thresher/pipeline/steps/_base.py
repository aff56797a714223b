"""What every stage of a run declares, and what the runner hands it.

A run is a chain of stages: the embedding (``embed``, or an existing store read
in place), the ``index``, then the spec's steps. Each is planned, cached and
run through one protocol, :class:`StageKind`: its ``version``, the fingerprint
of its output, the plans it reads (``upstream``), how a finished output is
recognised (``is_cached``) and reopened (``open_cached``), ``run``, the rows it
outputs, and the ``--dry-run`` estimates. :mod:`thresher.pipeline.runner` calls
only these, never a branch on the kind.

A step kind (:class:`StepKind`, a stage a spec's ``steps`` list names) adds its
typed spec config (a pydantic model, ``Config``) and the checks
:mod:`thresher.pipeline.spec` makes before any row is read. Its ``version`` is
bumped when its output changes meaning: every cached output of the step, and of
the steps downstream, is then recomputed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from thresher.pipeline.spec import PipelineSpec


class StrictModel(BaseModel):
    """A frozen spec section that refuses unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StepConfig(StrictModel):
    """What every step has: an optional name (default: its kind) and the step whose rows it takes (default: the one before)."""

    name: str | None = None
    input: str | None = None


@dataclass(frozen=True)
class StepInputs:
    """What a stage runs on, as the runner (or a caller of :meth:`StepKind.run`) hands it.

    Attributes
    ----------
    store : thresher.stores.EmbeddingStore or None
        The pool's embedding store (None for the stage that makes it). In a run over an existing
        store it is that store read beside the spec's pool (:mod:`thresher.stores.pool_binding`);
        the stage functions take it as it is, in place of a path.
    out : Path
        The stage's output directory.
    run_dir : Path
        The run directory (steps may keep derived inputs there, e.g. RDS+'s per-task target files).
    index : Path, optional
        The run's FAISS index over ``store``, when the spec has one.
    subset : ndarray of int, optional
        Sorted store positions of the rows the step sees (None: every row).
    overwrite : bool
        Replace what ``out`` holds (an older version of this stage's output).
    """

    store: Any
    out: Path
    run_dir: Path
    index: Path | None = None
    subset: np.ndarray | None = None
    overwrite: bool = False


def recorded_fingerprint(directory: Path, by: Literal["manifest", "lineage"]) -> str | None:
    """The fingerprint the finished artefact in ``directory`` carries: its manifest's own, or the run step's that made it."""
    try:
        manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
        return manifest.get("fingerprint") if by == "manifest" else manifest.get("lineage", {}).get("step_fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


class StageKind:
    """One kind of stage of a run, as the runner plans, caches and runs it; subclasses override what differs.

    ``config`` is what the spec says of the stage: a step's validated entry, the ``index``
    section, or the embedding source an embedding kind prepared (:class:`SourceKind`).
    """

    name: ClassVar[str]
    version: int
    #: What marks a finished output in the stage's directory as this plan's: the manifest's own
    #: ``fingerprint`` (an embedding store records the inputs it was made from), or the fingerprint
    #: of the run step that made it (``lineage``, stamped by the runner on steps' and the index's outputs).
    cached_by: ClassVar[Literal["manifest", "lineage"]] = "lineage"
    #: False when the output holds rows that are not pool rows (SMOTE's synthetic rows) or no rows: no step may take its rows.
    keeps_pool_rows: ClassVar[bool] = True

    def upstream(self, config: Any, spec: PipelineSpec) -> list[str]:
        """Names of the stages whose outputs this one reads (their fingerprints, in this order, make its own)."""
        return []

    def plan_fingerprint(self, config: Any, upstream: list[str]) -> str:
        """The identity of the output, from ``config`` and the ``upstream`` stages' fingerprints, before any work."""
        raise NotImplementedError

    def expected_rows(self, config: Any, bound: int) -> str:
        """The rows ``--dry-run`` announces when at most ``bound`` reach the stage."""
        return f"≤ {bound:,}"

    def memory(self, config: Any, bound: int | None) -> str:
        """An order-of-magnitude estimate of what one task (or the driver) holds, for ``--dry-run``."""
        return "?"

    def status(self, cached: bool) -> str:
        """The plan's status column in ``--dry-run``."""
        return "cached" if cached else "run"

    def is_cached(self, directory: Path, fingerprint: str) -> bool:
        """True when ``directory`` holds this plan's finished output."""
        return recorded_fingerprint(directory, self.cached_by) == fingerprint

    def holds_other(self, directory: Path, fingerprint: str) -> bool:
        """True when ``directory`` holds an artefact (or partial run) of an older version of this stage: it is replaced."""
        if not directory.is_dir():
            return False
        if (directory / "manifest.json").is_file():
            return recorded_fingerprint(directory, self.cached_by) != fingerprint
        try:
            marker = json.loads((directory / ".thresher-partial.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return any(directory.iterdir())
        # a partial run of a step is the runner's to replace; an embedding store's resumes when its fingerprint is the plan's
        return self.cached_by == "lineage" or marker.get("fingerprint") != fingerprint

    def damaged(self, directory: Path, problem: str) -> str:
        """Why a cached output that failed verification (``problem``) is recomputed; a stage that cannot recompute it raises."""
        return f"cached output failed verification ({problem}); recomputing"

    def preflight(self, config: Any, executor: Any) -> None:
        """Refuse, before any work, what this stage cannot do where ``executor`` runs (e.g. a device this machine lacks)."""

    def open_cached(self, config: Any, directory: Path) -> Any:
        """The finished output in ``directory``."""
        raise NotImplementedError

    def run(self, config: Any, inputs: StepInputs, executor: Any) -> Any:
        """Run the stage on ``inputs`` with ``executor``; returns its output."""
        raise NotImplementedError

    def rows_out(self, output: Any) -> int:
        """The rows (or vectors) the output holds."""
        return int(output.n_rows)

    def rows_kept(self, output: Any, store: Any) -> np.ndarray | None:
        """Sorted store positions of the pool rows a step taking this output's rows sees (None: every row)."""
        return None

    def notes(self, output: Any) -> list[str]:
        """Lines the runner prints after the stage (what it skipped, how it rounded a budget)."""
        return []

    def run_manifest(self, output: Any) -> dict[str, Any]:
        """Fields the stage adds to the run manifest."""
        return {}


class SourceKind(StageKind):
    """A stage that provides the run's embedding store: ``embed`` (the pool embedded) or ``store`` (an existing one, in place).

    The spec's ``embedding`` section chooses it (:func:`thresher.pipeline.steps.embedding_kind`).
    """

    def prepare(self, spec: PipelineSpec, run_dir: Path) -> Any:
        """Open the pool (one streaming pass) and everything the fingerprint needs; the ``config`` of the plan. Nothing is written."""
        raise NotImplementedError

    def directory(self, config: Any) -> str:
        """Where the store lies: a path relative to the run directory, or an absolute one outside it."""
        raise NotImplementedError

    def input_files(self, spec: PipelineSpec) -> dict[str, Any]:
        """User files and directories the stage reads, by spec key (a run directory may not be, contain or lie inside one)."""
        return {}


class StepKind(StageKind):
    """One kind of pipeline step (an entry of the spec's ``steps``); subclasses set the class attributes and override what differs.

    ``fingerprint_tag`` is the name its artefacts' fingerprints carry (the stage's own name,
    e.g. ``rds_plus``), so a step run by the runner and the same stage run alone agree.
    """

    Config: ClassVar[type[StepConfig]]
    fingerprint_tag: ClassVar[str]

    def fingerprint(self, inputs: list[str], params: dict[str, Any]) -> str:
        """The identity of this step's output: ``inputs``' fingerprints, the step's tag and version, ``params``."""
        from thresher.fingerprint import fingerprint_of

        return fingerprint_of(self.fingerprint_tag, self.version, params, inputs)

    def plan_fingerprint(self, config: StepConfig, upstream: list[str]) -> str:
        return self.fingerprint(upstream, self.params(config))

    def upstream(self, config: StepConfig, spec: PipelineSpec) -> list[str]:
        """The step whose rows it takes (the embedding when none), then the index when the step reads it."""
        from thresher.pipeline.spec import source_index, step_name

        position = next(i for i, s in enumerate(spec.steps) if s is config)
        src = source_index(spec, position)
        return ["embed" if src is None else step_name(spec.steps[src])] + (["index"] if self.uses_index(config) and spec.index is not None else [])

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

    def open_cached(self, config: Any, directory: Path) -> Any:
        from thresher.stores.curated import open_curated

        return open_curated(directory)

    def rows_kept(self, output: Any, store: Any) -> np.ndarray | None:
        if not self.keeps_pool_rows:
            return None  # no step takes its rows (refused by thresher.pipeline.spec.check_order)
        from thresher.stores.ids import ids_to_numpy

        ids = np.concatenate([ids_to_numpy(t.column("id")) for t in output.tables()]) if output.n_rows else np.empty(0, object)
        return np.unique(store.positions_of(ids)).astype(np.int64)

    def notes(self, output: Any) -> list[str]:
        rounding = (output.manifest.get("summary") or {}).get("budget_rounding")
        return [rounding] if rounding else []

    def run(self, config: StepConfig, inputs: StepInputs, executor: Any) -> Any:
        """Run the step on ``inputs`` with ``executor``; returns its :class:`thresher.stores.CuratedShards`."""
        raise NotImplementedError
