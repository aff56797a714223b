"""Run a pipeline spec: embed → index → steps → curated shards (+ report), cached by fingerprint.

A run is a chain of stages, each of a kind in the stage registry
(:mod:`thresher.pipeline.steps`): the embedding (``embed``, or ``store``: an
existing store read in place), the ``index``, then the spec's steps. The runner
plans, caches and runs every stage through its kind's protocol
(:class:`thresher.pipeline.steps.StageKind`) and holds no branch on a kind.

Each artefact's fingerprint derives from its inputs' fingerprints, the stage's
name and version, and its parameters (:func:`thresher.fingerprint.fingerprint_of`),
so the whole chain of fingerprints is known before any work starts: the
embeddings' from the pool's content and the encoder (or the existing store's),
every later stage's from the ones it reads. A stage whose directory already
holds an artefact of that fingerprint is reused; changing a late step's
parameters reruns only that step and the ones after it, and embeddings are
recomputed only when the pool or the encoder changes.

Run directory::

    <out>/manifest.json      written last: the resolved spec, every step's record, the output
                             (and, over an existing store, its path and fingerprint)
    <out>/events.jsonl       the event log (run/step start and end, per-partition progress with ETA)
    <out>/embeddings/        the embedding store (not written when the spec names an existing store)
    <out>/index/             the FAISS index (when the spec has one)
    <out>/steps/NN-<name>/   one curated artefact per step; each sees the rows the step before kept
    <out>/report.html        the HTML report (when enabled)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from thresher.fingerprint import fingerprint_of
from thresher.pipeline.spec import (
    PipelineSpec,
    SpecError,
    check_budget,
    load_spec,
    step_name,
    upper_bound_before,
)
from thresher.pipeline.steps import STAGES, StageKind, StepInputs, embedding_kind, step_kind

RUN_VERSION = 1
EVENTS_NAME = "events.jsonl"
REPORT_NAME = "report.html"


def step_version(kind: str) -> int:
    """The version of a stage kind (``embed``, ``store``, ``index`` or a step kind): its registry entry's.

    The stage and the runner read the same attribute, so bumping it (the output changed meaning)
    invalidates the runner's cache of that stage and of every stage downstream. Two tables once
    disagreed here (SMOTE was at 2 in its stage while the runner said 1 and kept serving outputs
    without synthetic ids).
    """
    return STAGES[kind].version


@dataclass
class StepPlan:
    """One stage of a run as planned: where it writes, its fingerprint, whether it is cached, and what it should cost.

    ``spec`` is what the spec says of it (a step's entry, the ``index`` section, or the prepared
    embedding source); ``kind`` its stage kind; ``upstream`` the names of the stages it reads.
    """

    name: str
    step: str
    dir: str
    fingerprint: str
    cached: bool
    expected_rows: str
    memory_per_worker: str
    spec: Any = None
    recompute: str | None = None  # why a step whose fingerprint matches is recomputed anyway (its output failed verification)
    kind: StageKind | None = field(default=None, repr=False, compare=False)
    upstream: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return self.kind.status(self.cached) if self.kind is not None else ("cached" if self.cached else "run")


@dataclass
class StepRecord:
    """One step of a run as done (stored in the run manifest)."""

    name: str
    step: str
    dir: str
    fingerprint: str
    cached: bool
    rows_in: int
    rows_out: int
    seconds: float


@dataclass
class RunResult:
    path: Path
    steps: list[StepRecord]
    output: Path
    report: Path | None


def plan_run(spec: PipelineSpec, out: Path) -> tuple[list[StepPlan], Any]:
    """Fingerprints, cache state, expected sizes and memory of every stage, without doing any work.

    Reads the pool once (its content hash and row count) — the same pass the embed job makes — and,
    over an existing store, checks the pool's ids against the store's. Returns the plans and the
    embedding source's config (for :class:`thresher.pipeline.steps.embed.EmbedKind`, the embed
    stage's :class:`~thresher.pipeline.embed.EmbedInputs` and settings).
    """
    source_kind = embedding_kind(spec)
    source = source_kind.prepare(spec, out)
    pool = source.pool
    _check_pool_columns(spec, pool.column_names)
    n_rows = pool.n_rows
    if n_rows == 0:
        raise SpecError(f"pool {spec.pool.path}: it has no rows.")
    _check_budgets(spec, n_rows)
    stages: list[tuple[str, StageKind, Any, str, int | None]] = [("embed", source_kind, source, source_kind.directory(source), n_rows)]
    if spec.index is not None:
        stages.append(("index", STAGES["index"], spec.index, "index", n_rows))
    for i, step in enumerate(spec.steps):
        stages.append((step_name(step), step_kind(step), step, f"steps/{i + 1:02d}-{step_name(step)}", upper_bound_before(spec, i, n_rows)))
    plans: list[StepPlan] = []
    fingerprints: dict[str, str] = {}
    for name, kind, config, directory, bound in stages:
        upstream = kind.upstream(config, spec)
        fp = kind.plan_fingerprint(config, [fingerprints[u] for u in upstream])
        fingerprints[name] = fp
        plans.append(StepPlan(name, kind.name, directory, fp, kind.is_cached(out / directory, fp), kind.expected_rows(config, bound),
                              kind.memory(config, bound), config, kind=kind, upstream=upstream))
    _verify_cached(plans, out)
    return plans, source


def _verify_cached(plans: list[StepPlan], out: Path) -> None:
    """Reuse a cached stage only if its files are intact; recompute a damaged one and every stage downstream of it.

    A shard replaced by another valid shard (or truncated, or deleted) fails
    the quick check of :func:`thresher.stores.manifest.damage` (size and mtime
    first, then the checksum). Downstream stages are recomputed too, even when
    intact: they may have been made from the damaged rows. A stage that cannot
    be recomputed (an existing store) refuses instead.
    """
    from thresher.stores.manifest import damage

    redone: dict[str, str] = {}  # stage name → why it is recomputed
    for plan in plans:
        if plan.cached:
            problem = damage(out / plan.dir)
            if problem is not None:
                plan.cached, plan.recompute = False, plan.kind.damaged(out / plan.dir, problem)
            else:
                upstream = next((u for u in plan.upstream if u in redone), None)
                if upstream is not None:
                    plan.cached, plan.recompute = False, f"its input {upstream} is recomputed after failing verification; recomputing"
        if plan.recompute is not None:
            redone[plan.name] = plan.recompute


def run_pipeline(
    spec_path: str | Path,
    overrides: Sequence[str] = (),
    *,
    out: str | Path | None = None,
    embeddings: str | Path | None = None,
    dry_run: bool = False,
    scheduler: str | None = None,
    workers: int | None = None,
    slurm: str | None = None,
    local: bool | None = None,
    client: Any = None,
    progress: bool = True,
    echo: Any = print,
    executor: Any = None,
) -> RunResult | list[StepPlan]:
    """Run (or, with ``dry_run``, plan) the pipeline a spec file describes.

    Parameters
    ----------
    spec_path : path
        YAML or TOML spec (see :mod:`thresher.pipeline.spec`).
    overrides : list of "KEY=VALUE"
        Applied to the spec before validation (``rds.budget=5000``).
    out : path, optional
        The run directory (default: the spec's ``out``).
    embeddings : path, optional
        An existing embedding store to use in place of the spec's ``embedding`` section
        (as ``embedding: {store: DIR}``; see :mod:`thresher.pipeline.steps.store`).
    dry_run : bool
        Print the plan — which steps run, which are cached, expected sizes and
        memory per worker — and return it without doing any work.
    scheduler, workers, slurm, local, client
        Where the Dask work runs; each overrides the spec's ``cluster`` section.
    executor : thresher.jobs.executor.Executor, optional
        Where the work runs, instead of the spec's ``cluster`` section and the options above.

    Returns
    -------
    RunResult, or the list of StepPlan with ``dry_run``.
    """
    # --out and --embeddings given here are relative to the working directory; the spec's own paths to the spec file
    spec, resolved = load_spec(spec_path, overrides, out=str(Path(out).resolve()) if out is not None else None,
                               embeddings=str(Path(embeddings).resolve()) if embeddings is not None else None)
    if spec.out is None:
        raise SpecError(f"{spec_path}: no output directory: give 'out' in the spec or --out.")
    run_dir = Path(spec.out)
    _check_run_dir(run_dir, spec, spec_path)
    plans, _ = plan_run(spec, run_dir)
    if dry_run:
        echo(format_plan(plans, run_dir))
        return plans
    from thresher.jobs.events import EventLog, current_event_log, emit
    from thresher.jobs.executor import Executor
    from thresher.stores.lock import output_lock

    if executor is None:
        cluster = spec.cluster
        executor = Executor.from_settings(
            scheduler=scheduler if scheduler is not None else cluster.scheduler,
            workers=workers if workers is not None else cluster.workers,
            slurm=slurm if slurm is not None else cluster.slurm,
            local=local if local is not None else cluster.local,
            client=client, progress=progress,
        )
    for plan in plans:
        plan.kind.preflight(plan.spec, executor)
    run_dir.mkdir(parents=True, exist_ok=True)
    with output_lock(run_dir):
        (run_dir / "manifest.json").unlink(missing_ok=True)  # the run is incomplete until its manifest is rewritten
        _mark_run_partial(run_dir, plans)
        with EventLog(run_dir / EVENTS_NAME) as log, current_event_log(log):
            emit("run_start", spec=str(spec_path), out=str(run_dir), steps=[p.name for p in plans],
                 cached=[p.name for p in plans if p.cached])
            started = time.perf_counter()
            try:
                with executor.started():
                    records, extra = _execute(plans, resolved, run_dir, executor, echo)
            except BaseException as exc:
                emit("run_error", error=f"{type(exc).__name__}: {exc}")
                raise
            output = run_dir / records[-1].dir
            outputs = [r.dir for r in records if r.name in {step_name(spec.steps[i]) for i in spec.final_steps()}]
            report = None
            if spec.report.html:
                report = _write_report(run_dir, spec, records)
            _write_run_manifest(run_dir, resolved, records, plans, report, outputs, extra)
            emit("run_end", seconds=round(time.perf_counter() - started, 3), output=str(output))
    return RunResult(run_dir, records, output, report)


def _check_run_dir(run_dir: Path, spec: PipelineSpec, spec_path: str | Path) -> None:
    """Refuse a run directory thresher must not write (see :mod:`thresher.stores.output_guard`), before the pool is read.

    It may not be, contain, or lie inside anything the run reads: the spec, the pool, an existing
    store, a step's files.
    """
    from thresher.stores.output_guard import check_output

    files = {f"steps[{i}].{key}": path for i, step in enumerate(spec.steps) for key, path in step_kind(step).input_files(step).items()}
    check_output(run_dir, "run", inputs={"spec_path": spec_path, "pool.path": spec.pool.path, **embedding_kind(spec).input_files(spec), **files})


def _mark_run_partial(run_dir: Path, plans: list[StepPlan]) -> None:
    """The run's partial-run marker: until its manifest is written, the directory is known as a run thresher is writing."""
    from thresher.stores.atomic import atomic_write_json
    from thresher.stores.manifest import PARTIAL_NAME

    atomic_write_json(run_dir / PARTIAL_NAME, {"artifact": "run", "fingerprint": fingerprint_of("run", RUN_VERSION, {}, [p.fingerprint for p in plans])})


def _execute(plans: list[StepPlan], resolved: dict[str, Any], run_dir: Path, executor: Any, echo: Any) -> tuple[list[StepRecord], dict[str, Any]]:
    """Run (or reopen, when cached) every planned stage in order; their records, and what they add to the run manifest.

    A stage reads the outputs of its ``upstream`` stages: the first is the one whose rows it takes
    (the embedding: every pool row), the embedding store is always ``embed``'s, the index ``index``'s.
    """
    from thresher.jobs.events import current_step, emit
    from thresher.stores.manifest import manifest_lineage

    records: dict[str, StepRecord] = {}
    outputs: dict[str, Any] = {}
    kept: dict[str, np.ndarray | None] = {}  # stage name → store positions of the pool rows it output (None: every row)
    extra: dict[str, Any] = {}
    n_rows = plans[0].spec.pool.n_rows  # the first plan is the embedding source (plan_run), its config holds the opened pool
    for plan in plans:
        kind = plan.kind
        upstream = [records[u] for u in plan.upstream]
        subset = kept[plan.upstream[0]] if plan.upstream else None
        lineage = {
            "run": str(run_dir), "spec": resolved, "step": plan.name, "step_kind": plan.step, "step_fingerprint": plan.fingerprint,
            "inputs": [{"step": r.name, "dir": r.dir, "fingerprint": r.fingerprint} for r in upstream],
        }
        rows_in = n_rows if subset is None else len(subset)
        out = run_dir / plan.dir
        started = time.perf_counter()
        with current_step(plan.name), manifest_lineage(lineage):
            if plan.recompute is not None:
                _demote(out)
                emit("step_recompute", reason=plan.recompute)
                echo(f"[{plan.name}] {plan.recompute}")
            emit("step_start", kind=plan.step, dir=plan.dir, cached=plan.cached, fingerprint=plan.fingerprint, rows_in=rows_in)
            echo(f"[{plan.name}] {plan.status if plan.cached else 'running'} → {out}")
            if plan.cached:
                output = kind.open_cached(plan.spec, out)
            else:
                replace = kind.holds_other(out, plan.fingerprint)
                if replace:
                    # made for other inputs: never reused, even where the stage's own fingerprint does not see the
                    # difference (a store read beside a pool whose columns changed under the same ids)
                    _demote(out)
                inputs = StepInputs(store=outputs.get("embed"), out=out, run_dir=run_dir,
                                    index=run_dir / records["index"].dir if "index" in records else None,
                                    subset=subset, overwrite=replace)
                output = kind.run(plan.spec, inputs, executor)
            rows_out = kind.rows_out(output)
            for note in kind.notes(output):
                echo(f"[{plan.name}] {note}")
            outputs[plan.name] = output
            kept[plan.name] = kind.rows_kept(output, outputs["embed"])
            extra.update(kind.run_manifest(output))
            seconds = round(time.perf_counter() - started, 3)
            emit("step_end", rows_in=rows_in, rows_out=rows_out, seconds=seconds, cached=plan.cached)
        records[plan.name] = StepRecord(plan.name, plan.step, plan.dir, plan.fingerprint, plan.cached, rows_in, rows_out, seconds)
    return list(records.values()), extra


def _demote(directory: Path) -> None:
    """Make a stage's finished output a partial run of the same fingerprint, so its stage recomputes it (see ``_verify_cached``)."""
    from thresher.stores.manifest import MANIFEST_NAME, demote_to_partial

    if (directory / MANIFEST_NAME).is_file():
        demote_to_partial(directory)


def _check_pool_columns(spec: PipelineSpec, columns: list[str]) -> None:
    """Every pool column a step reads is in the pool, checked before any work."""
    for i, step in enumerate(spec.steps):
        for column in step_kind(step).pool_columns(step):
            if column not in columns:
                raise SpecError(f"steps[{i}] ({step_name(step)}): column {column!r} is not in the pool; it has {columns}.")


def _check_budgets(spec: PipelineSpec, n_rows: int) -> None:
    for i, step in enumerate(spec.steps):
        check_budget(spec, i, n_rows, f"steps[{i}] ({step_name(step)}) (the pool has {n_rows:,} rows)")


def format_plan(plans: list[StepPlan], run_dir: Path) -> str:
    """The dry-run table."""
    header = ("step", "kind", "status", "expected rows", "memory per worker", "directory")
    rows = [(p.name, p.step, p.status, p.expected_rows, p.memory_per_worker, str(run_dir / p.dir)) for p in plans]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    todo = sum(not p.cached for p in plans)
    notes = [f"  {p.name}: {p.recompute}" for p in plans if p.recompute is not None]
    return "\n".join([f"plan for {run_dir}: {todo} of {len(plans)} steps to run", *lines, *notes])


def _write_report(run_dir: Path, spec: PipelineSpec, records: list[StepRecord]) -> Path:
    from thresher.jobs.events import emit
    from thresher.report import write_report

    path = run_dir / REPORT_NAME
    write_report(run_dir, path, columns=spec.report.columns, records=[asdict(r) for r in records], explore=spec.report.explore)
    emit("report", path=str(path), explore=str(run_dir / "explore.html") if spec.report.explore else None)
    return path


def _write_run_manifest(run_dir: Path, resolved: dict[str, Any], records: list[StepRecord], plans: list[StepPlan], report: Path | None,
                        outputs: list[str], extra: dict[str, Any]) -> None:
    from thresher.stores.manifest import write_manifest

    fingerprint = fingerprint_of("run", RUN_VERSION, {}, [p.fingerprint for p in plans])
    write_manifest(run_dir, "run", fingerprint=fingerprint, body={
        "spec": resolved,
        "steps": [asdict(r) for r in records],
        "output": records[-1].dir,
        "outputs": outputs,
        "report": report.name if report is not None else None,
        "events": EVENTS_NAME,
        **extra,
    })
