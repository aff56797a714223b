"""Run a pipeline spec: embed → index → steps → curated shards (+ report), cached by fingerprint.

Each artefact's fingerprint derives from its inputs' fingerprints, the step's
name and version, and its parameters (:func:`thresher.fingerprint.fingerprint_of`),
so the whole chain of fingerprints is known before any work starts: the
embeddings' from the pool's content and the encoder, every later step's from
the one before it. A step whose directory already holds an artefact of that
fingerprint is reused; changing a late step's parameters reruns only that step
and the ones after it, and embeddings are recomputed only when the pool or the
encoder changes.

Run directory::

    <out>/manifest.json      written last: the resolved spec, every step's record, the output
    <out>/events.jsonl       the event log (run/step start and end, per-partition progress with ETA)
    <out>/embeddings/        the embedding store
    <out>/index/             the FAISS index (when the spec has one)
    <out>/steps/NN-<name>/   one curated artefact per step; each sees the rows the step before kept
    <out>/report.html        the HTML report (when enabled)
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from thresher.fingerprint import fingerprint_of
from thresher.pipeline.spec import (
    PipelineSpec,
    SpecError,
    check_budget,
    load_spec,
    source_index,
    step_name,
    upper_bound_before,
)
from thresher.pipeline.steps import StepInputs, step_kind

RUN_VERSION = 1
EVENTS_NAME = "events.jsonl"
REPORT_NAME = "report.html"


def step_version(kind: str) -> int:
    """The version of a step kind: its registry entry's (:mod:`thresher.pipeline.steps`), or the index's.

    The stage and the runner read the same attribute, so bumping it (the output changed meaning)
    invalidates the runner's cache of that step and of every step downstream. Two tables once
    disagreed here (SMOTE was at 2 in its stage while the runner said 1 and kept serving outputs
    without synthetic ids).
    """
    if kind == "index":
        from thresher.stores.index import INDEX_VERSION

        return INDEX_VERSION
    return step_kind(kind).version


@dataclass
class StepPlan:
    """One step of a run as planned: where it writes, its fingerprint, whether it is cached, and what it should cost."""

    name: str
    step: str
    dir: str
    fingerprint: str
    cached: bool
    expected_rows: str
    memory_per_worker: str
    spec: Any = None
    recompute: str | None = None  # why a step whose fingerprint matches is recomputed anyway (its output failed verification)


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
    """Fingerprints, cache state, expected sizes and memory of every step, without doing any work.

    Reads the pool once (its content hash and row count) — the same pass the embed job makes — and
    returns the embed stage's inputs (:class:`thresher.pipeline.embed.EmbedInputs`) with the plan.
    """
    inputs = _embed_inputs(spec)
    n_rows = inputs.pool.n_rows
    if n_rows == 0:
        raise SpecError(f"pool {spec.pool.path}: it has no rows.")
    _check_budgets(spec, n_rows)
    fp_embed = inputs.fingerprint()
    plans = [StepPlan("embed", "embed", "embeddings", fp_embed, _manifest_fp(out / "embeddings") == fp_embed,
                      f"{n_rows:,} rows × dim", _embed_memory(spec), None)]
    fp_index = None
    if spec.index is not None:
        fp_index = fingerprint_of("index", step_version("index"), spec.index.model_dump(mode="json"), [fp_embed])
        plans.append(StepPlan("index", "index", "index", fp_index, _lineage_fp(out / "index") == fp_index,
                              f"{n_rows:,} vectors ({spec.index.type})", "the index's size (see `thresher inspect`)", None))
    step_fps: list[str] = []
    for i, step in enumerate(spec.steps):
        kind = step_kind(step)
        src = source_index(spec, i)
        upstream = [fp_embed if src is None else step_fps[src]] + ([fp_index] if kind.uses_index(step) and fp_index else [])
        fp = kind.fingerprint(upstream, kind.params(step))
        step_fps.append(fp)
        directory = f"steps/{i + 1:02d}-{step_name(step)}"
        bound = upper_bound_before(spec, i, n_rows)
        plans.append(StepPlan(step_name(step), step.step, directory, fp, _lineage_fp(out / directory) == fp,
                              kind.expected_rows(step, bound), kind.memory(step, bound), step))
    _verify_cached(plans, spec, out)
    return plans, inputs


def _verify_cached(plans: list[StepPlan], spec: PipelineSpec, out: Path) -> None:
    """Reuse a cached step only if its files are intact; recompute a damaged one and every step downstream of it.

    A shard replaced by another valid shard (or truncated, or deleted) fails
    the quick check of :func:`thresher.stores.manifest.damage` (size and mtime
    first, then the checksum). Downstream steps are recomputed too, even when
    intact: they may have been made from the damaged rows.
    """
    from thresher.stores.manifest import damage

    redone: dict[str, str] = {}  # step name → why it is recomputed
    for plan in plans:
        if plan.cached:
            problem = damage(out / plan.dir)
            if problem is not None:
                plan.cached, plan.recompute = False, f"cached output failed verification ({problem}); recomputing"
            else:
                upstream = next((u for u in _upstream(plan, spec) if u in redone), None)
                if upstream is not None:
                    plan.cached, plan.recompute = False, f"its input {upstream} is recomputed after failing verification; recomputing"
        if plan.recompute is not None:
            redone[plan.name] = plan.recompute


def _upstream(plan: StepPlan, spec: PipelineSpec) -> list[str]:
    """Names of the plans whose outputs ``plan`` reads."""
    if plan.step == "embed":
        return []
    if plan.spec is None:  # the index
        return ["embed"]
    i = spec.steps.index(plan.spec)
    src = source_index(spec, i)
    names = ["embed" if src is None else step_name(spec.steps[src])]
    if step_kind(plan.spec).uses_index(plan.spec) and spec.index is not None:
        names.append("index")
    return names


def run_pipeline(
    spec_path: str | Path,
    overrides: Sequence[str] = (),
    *,
    out: str | Path | None = None,
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
    # an --out given here is relative to the working directory; the spec's own 'out' to the spec file
    spec, resolved = load_spec(spec_path, overrides, out=str(Path(out).resolve()) if out is not None else None)
    if spec.out is None:
        raise SpecError(f"{spec_path}: no output directory: give 'out' in the spec or --out.")
    run_dir = Path(spec.out)
    _check_run_dir(run_dir, spec, spec_path)
    plans, inputs = plan_run(spec, run_dir)
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
    if executor.runs_here:
        from thresher.embeddings.encoders import check_device_available

        check_device_available(spec.embedding.device)  # the model runs on this machine; remote workers are checked by run_embed
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
                    records = _execute(spec, resolved, plans, inputs, run_dir, executor, echo)
            except BaseException as exc:
                emit("run_error", error=f"{type(exc).__name__}: {exc}")
                raise
            output = run_dir / records[-1].dir
            outputs = [r.dir for r in records if r.name in {step_name(spec.steps[i]) for i in spec.final_steps()}]
            report = None
            if spec.report.html:
                report = _write_report(run_dir, spec, records)
            _write_run_manifest(run_dir, resolved, records, plans, report, outputs)
            emit("run_end", seconds=round(time.perf_counter() - started, 3), output=str(output))
    return RunResult(run_dir, records, output, report)


def _check_run_dir(run_dir: Path, spec: PipelineSpec, spec_path: str | Path) -> None:
    """Refuse a run directory thresher must not write (see :mod:`thresher.stores.output_guard`), before the pool is read."""
    from thresher.stores.output_guard import check_output

    files = {f"steps[{i}].{key}": path for i, step in enumerate(spec.steps) for key, path in step_kind(step).input_files(step).items()}
    check_output(run_dir, "run", inputs={"spec_path": spec_path, "pool.path": spec.pool.path, **files})


def _mark_run_partial(run_dir: Path, plans: list[StepPlan]) -> None:
    """The run's partial-run marker: until its manifest is written, the directory is known as a run thresher is writing."""
    from thresher.stores.atomic import atomic_write_json
    from thresher.stores.manifest import PARTIAL_NAME

    atomic_write_json(run_dir / PARTIAL_NAME, {"artifact": "run", "fingerprint": fingerprint_of("run", RUN_VERSION, {}, [p.fingerprint for p in plans])})


def _execute(spec: PipelineSpec, resolved: dict[str, Any], plans: list[StepPlan], inputs: Any, run_dir: Path,
             executor: Any, echo: Any) -> list[StepRecord]:
    from thresher.jobs.events import current_step, emit
    from thresher.stores.manifest import manifest_lineage

    records: list[StepRecord] = []
    kept: dict[str, np.ndarray] = {}  # step name → store positions of the pool rows it output
    store = None
    n_rows = inputs.pool.n_rows
    for plan in plans:
        subset, source = None, None
        if plan.spec is not None:
            i = spec.steps.index(plan.spec)
            src = source_index(spec, i)
            source = records[0] if src is None else next(r for r in records if r.name == step_name(spec.steps[src]))
            subset = None if src is None else kept[source.name]
        elif records:
            source = records[0]
        lineage = {
            "run": str(run_dir), "spec": resolved, "step": plan.name, "step_kind": plan.step, "step_fingerprint": plan.fingerprint,
            "inputs": ([{"step": source.name, "dir": source.dir, "fingerprint": source.fingerprint}] if source is not None else [])
            + ([{"step": "index", "dir": "index", "fingerprint": next(p.fingerprint for p in plans if p.step == "index")}]
               if plan.spec is not None and step_kind(plan.spec).uses_index(plan.spec) and spec.index is not None else []),
        }
        rows_in = n_rows if subset is None else len(subset)
        started = time.perf_counter()
        with current_step(plan.name), manifest_lineage(lineage):
            if plan.recompute is not None:
                _demote(run_dir / plan.dir)
                emit("step_recompute", reason=plan.recompute)
                echo(f"[{plan.name}] {plan.recompute}")
            emit("step_start", kind=plan.step, dir=plan.dir, cached=plan.cached, fingerprint=plan.fingerprint, rows_in=rows_in)
            echo(f"[{plan.name}] {'cached' if plan.cached else 'running'} → {run_dir / plan.dir}")
            if plan.step == "embed":
                store = _run_embed(spec, inputs, run_dir / plan.dir, plan, executor)
                rows_out = store.n_rows
                skipped = (store.manifest.get("pool") or {}).get("skipped") or []
                if skipped:
                    echo(f"[{plan.name}] skipped {len(skipped)} path{'s' if len(skipped) > 1 else ''} in the pool's directories: "
                         + ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more (see its manifest.json)" if len(skipped) > 5 else ""))
            elif plan.step == "index":
                rows_out = _run_index(spec, store, run_dir / plan.dir, plan)
            else:
                curated = _run_step(spec, store, run_dir, plan, subset, executor)
                rows_out = curated.n_rows
                rounding = (curated.manifest.get("summary") or {}).get("budget_rounding")
                if rounding:
                    echo(f"[{plan.name}] {rounding}")
                if step_kind(plan.spec).keeps_pool_rows:
                    kept[plan.name] = _positions(store, curated)
            seconds = round(time.perf_counter() - started, 3)
            emit("step_end", rows_in=rows_in, rows_out=rows_out, seconds=seconds, cached=plan.cached)
        records.append(StepRecord(plan.name, plan.step, plan.dir, plan.fingerprint, plan.cached, rows_in, rows_out, seconds))
    return records


def _demote(directory: Path) -> None:
    """Make a step's finished output a partial run of the same fingerprint, so its stage recomputes it (see ``_verify_cached``)."""
    from thresher.stores.manifest import MANIFEST_NAME, demote_to_partial

    if (directory / MANIFEST_NAME).is_file():
        demote_to_partial(directory)


def _run_embed(spec: PipelineSpec, inputs: Any, out: Path, plan: StepPlan, executor: Any) -> Any:
    from thresher.pipeline.embed import run_embed
    from thresher.stores.embedding_store import open_embedding_store

    if plan.cached:
        return open_embedding_store(out)
    return run_embed(inputs, out, executor=executor, resources=spec.embedding.worker_resources,
                     overwrite=_holds_other(out, plan.fingerprint, lineage=False))


def _run_index(spec: PipelineSpec, store: Any, out: Path, plan: StepPlan) -> int:
    from thresher.stores.index import build_index, open_index

    if plan.cached:
        return len(open_index(out))
    ix = spec.index
    index = build_index(store, out, index_type=ix.type, metric=ix.metric, nprobe=ix.nprobe, ef_search=ix.ef_search,
                        train_size=ix.train_size, seed=ix.seed, overwrite=_holds_other(out, plan.fingerprint))
    return len(index)


def _run_step(spec: PipelineSpec, store: Any, run_dir: Path, plan: StepPlan, subset: np.ndarray | None, executor: Any) -> Any:
    from thresher.stores.curated import open_curated

    out = run_dir / plan.dir
    if plan.cached:
        return open_curated(out)
    inputs = StepInputs(store=store, out=out, run_dir=run_dir, index=run_dir / "index" if spec.index is not None else None,
                        subset=subset, overwrite=_holds_other(out, plan.fingerprint))
    return step_kind(plan.spec).run(plan.spec, inputs, executor)


def _positions(store: Any, curated: Any) -> np.ndarray:
    ids = np.concatenate([t.column("id").to_numpy(zero_copy_only=False) for t in curated.tables()]) if curated.n_rows else np.empty(0, object)
    return np.unique(store.positions_of(ids)).astype(np.int64)


def _embed_inputs(spec: PipelineSpec) -> Any:
    """The embed stage's inputs from the spec (the pool opened once), and the columns later steps need checked."""
    from thresher.pipeline.embed import prepare_embed

    p, e = spec.pool, spec.embedding
    inputs = prepare_embed(
        p.path, text=p.text, text_column=p.text_column, messages_column=p.messages_column, chat_format=p.chat_format,
        id_column=p.id_column, format=p.format, split=p.split, model=e.model, pooling=e.pooling, layer=e.layer,
        normalize=e.normalize, max_length=e.max_length, batch_size=e.batch_size, device=e.device, model_dtype=e.model_dtype,
        padding_side=e.padding_side, gguf_file=e.gguf_file, trust_remote_code=e.trust_remote_code, dtype=e.dtype,
        partition_rows=p.partition_rows,
    )
    columns = inputs.pool.column_names
    for i, step in enumerate(spec.steps):
        for column in step_kind(step).pool_columns(step):
            if column not in columns:
                raise SpecError(f"steps[{i}] ({step_name(step)}): column {column!r} is not in the pool; it has {columns}.")
    return inputs


def _check_budgets(spec: PipelineSpec, n_rows: int) -> None:
    for i, step in enumerate(spec.steps):
        check_budget(spec, i, n_rows, f"steps[{i}] ({step_name(step)}) (the pool has {n_rows:,} rows)")


def _manifest_fp(directory: Path) -> str | None:
    try:
        return json.loads((directory / "manifest.json").read_text(encoding="utf-8")).get("fingerprint")
    except (OSError, ValueError):
        return None


def _lineage_fp(directory: Path) -> str | None:
    try:
        return json.loads((directory / "manifest.json").read_text(encoding="utf-8")).get("lineage", {}).get("step_fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


def _holds_other(directory: Path, fingerprint: str, *, lineage: bool = True) -> bool:
    """True when the step's directory holds an artefact (or partial run) of an older version of this step: it is replaced."""
    if not directory.is_dir():
        return False
    found = _lineage_fp(directory) if lineage else _manifest_fp(directory)
    if (directory / "manifest.json").is_file():
        return found != fingerprint
    try:
        marker = json.loads((directory / ".thresher-partial.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return any(directory.iterdir())
    return lineage or marker.get("fingerprint") != fingerprint


def _embed_memory(spec: PipelineSpec) -> str:
    e = spec.embedding
    tokens = e.batch_size * (e.max_length or 256)
    return f"model weights + ~{tokens * 4 * 4096 / 2**20:,.0f} MiB activations (batch {e.batch_size} × {e.max_length or 256} tokens)"


def format_plan(plans: list[StepPlan], run_dir: Path) -> str:
    """The dry-run table."""
    header = ("step", "kind", "status", "expected rows", "memory per worker", "directory")
    rows = [(p.name, p.step, "cached" if p.cached else "run", p.expected_rows, p.memory_per_worker, str(run_dir / p.dir)) for p in plans]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    todo = sum(not p.cached for p in plans)
    notes = [f"  {p.name}: {p.recompute}" for p in plans if p.recompute is not None]
    return "\n".join([f"plan for {run_dir}: {todo} of {len(plans)} steps to run", *lines, *notes])


def _write_report(run_dir: Path, spec: PipelineSpec, records: list[StepRecord]) -> Path:
    from thresher.jobs.events import emit
    from thresher.report import write_report

    path = run_dir / REPORT_NAME
    write_report(run_dir, path, columns=spec.report.columns, records=[asdict(r) for r in records])
    emit("report", path=str(path))
    return path


def _write_run_manifest(run_dir: Path, resolved: dict[str, Any], records: list[StepRecord], plans: list[StepPlan], report: Path | None,
                        outputs: list[str]) -> None:
    from thresher.stores.manifest import write_manifest

    fingerprint = fingerprint_of("run", RUN_VERSION, {}, [p.fingerprint for p in plans])
    write_manifest(run_dir, "run", fingerprint=fingerprint, body={
        "spec": resolved,
        "steps": [asdict(r) for r in records],
        "output": records[-1].dir,
        "outputs": outputs,
        "report": report.name if report is not None else None,
        "events": EVENTS_NAME,
    })
