"""The ``rds`` step: RDS+ (Ivison et al. 2025), the pool rows closest to target-task examples, round-robin over tasks.

Stage: :func:`thresher.pipeline.select.select_rds`; algorithm: :mod:`thresher.selectors.rds`.
Targets are files per task, or one JSON-lines file with a task column (split
into one file a task under ``<run>/targets/<step>/``); they are fingerprinted
by content, not by path.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from thresher.pipeline.steps._base import StepConfig, StepInputs, StepKind

VERSION = 2  # 2: nearest_target column and targets.arrow (why each row was picked)


class RDSStep(StepConfig):
    """RDS+ (Ivison et al. 2025): the pool rows closest to target-task examples, round-robin over tasks."""

    step: Literal["rds"]
    budget: int | float = Field(description="Rows to select: a count, a fraction of the pool, or 'all'.")
    targets: dict[str, str] | str = Field(description="TASK=PATH: query examples of a task (data file or embedding store); "
                                                      "repeat per task, in turn order.")
    target_task_column: str | None = Field(default=None, description="Task column of a single targets file.")
    target_text: str | None = Field(default=None, description="Text template for target files (default: the pool's).")
    target_text_column: str | None = Field(default=None, description="Column holding the targets' text.")
    target_messages_column: str | None = Field(default=None, description="Column holding the targets' chat messages.")
    aggregation: Literal["max", "mean"] = Field(default="max", description="How a row's similarities to a task's examples combine.")
    quotas: dict[str, int] | None = Field(default=None, description="TASK=N: at most N rows picked by that task (repeatable).")
    group_column: str | None = Field(default=None, description="Pool column of each row's source, for group quotas.")
    group_quotas: dict[str, int] | None = Field(default=None, description="VALUE=N: at most N rows whose group column is VALUE (repeatable).")
    dedup: bool = Field(default=False, description="Drop exact-duplicate texts before selection.")
    decontaminate: float | None = Field(default=None, gt=0, le=1, description="Drop pool rows with cosine >= this to any target example.")

    @model_validator(mode="after")
    def _groups_together(self) -> RDSStep:
        if (self.group_column is None) != (self.group_quotas is None):
            raise ValueError("group_column and group_quotas go together (per-source caps: column, and value → most rows)")
        return self

    @model_validator(mode="after")
    def _one_file_names_its_task_column(self) -> RDSStep:
        if isinstance(self.targets, str) and not self.target_task_column:
            raise ValueError(f"targets is one file ({self.targets}); name its task column with target_task_column, or map tasks to files")
        return self

    @field_validator("budget")
    @classmethod
    def _positive(cls, v: int | float) -> int | float:
        if v <= 0 or (isinstance(v, float) and v > 1):
            raise ValueError("must be a positive row count or a fraction in (0, 1]")
        return v


class RDSKind(StepKind):
    name = "rds"
    Config = RDSStep
    version = VERSION
    fingerprint_tag = "rds_plus"

    def params(self, config: RDSStep) -> dict[str, Any]:
        params = super().params(config)
        params["target_hashes"] = sorted(_hash_target(f) for f in _target_files(config))
        return params

    def pool_columns(self, config: RDSStep) -> list[str]:
        return [config.group_column] if config.group_column else []

    def input_files(self, config: RDSStep) -> dict[str, Any]:
        return {"targets": config.targets}

    def resolve_paths(self, config: RDSStep, resolve: Callable[[str], str]) -> RDSStep:
        targets = {t: resolve(p) for t, p in config.targets.items()} if isinstance(config.targets, dict) else resolve(config.targets)
        return config.model_copy(update={"targets": targets})

    def check_rows(self, config: RDSStep, bound: int) -> str | None:
        if isinstance(config.budget, int) and config.budget > bound:
            return f"budget {config.budget} is larger than the {bound} rows that at most reach this step."
        return None

    def rows_after(self, config: RDSStep, bound: int | None) -> int | None:
        if isinstance(config.budget, int):
            return config.budget if bound is None else min(bound, config.budget)
        return None if bound is None else int(config.budget * bound)

    def expected_rows(self, config: RDSStep, bound: int) -> str:
        return f"{config.budget:,}" if isinstance(config.budget, int) else f"{config.budget:.0%} of ≤ {bound:,}"

    def memory(self, config: RDSStep, bound: int | None) -> str:
        from thresher.config import runtime_config

        rows = runtime_config().block_rows
        queries = _count_targets(config)
        return f"worker: ~{rows * queries * 4 * 2 / 2**20:,.0f} MiB (score blocks of {rows:,} rows × {queries:,} target examples)"

    def run(self, config: RDSStep, inputs: StepInputs, executor: Any) -> Any:
        from thresher.pipeline.select import select_rds

        return select_rds(
            inputs.store, split_targets(config, inputs.run_dir), inputs.out, budget=config.budget, aggregation=config.aggregation,
            quotas=config.quotas, group_column=config.group_column, group_quotas=config.group_quotas, dedup=config.dedup,
            decontaminate=config.decontaminate, target_text=config.target_text, target_text_column=config.target_text_column,
            target_messages_column=config.target_messages_column, subset=inputs.subset, overwrite=inputs.overwrite, executor=executor,
        )


STEP = RDSKind()


def _target_files(config: RDSStep) -> list[str]:
    return list(config.targets.values()) if isinstance(config.targets, dict) else [config.targets]


def split_targets(config: RDSStep, run_dir: Path) -> dict[str, str]:
    """Target files per task; one file with a task column is split into one file a task (kept in the run dir)."""
    from thresher.pipeline.spec import SpecError
    from thresher.stores.atomic import atomic_write_bytes

    if isinstance(config.targets, dict):
        return config.targets
    name = config.name or config.step
    if not config.target_task_column:
        raise SpecError(f"step {name}: targets is one file ({config.targets}); name its task column with target_task_column, or map tasks to files.")
    path = Path(config.targets)
    tasks: dict[str, list[dict[str, Any]]] = {}
    for line, row in _read_jsonl(path):
        if config.target_task_column not in row:
            raise SpecError(f"{path}:{line}: no {config.target_task_column!r} key (target_task_column) in this row.")
        task = str(row[config.target_task_column])
        tasks.setdefault(task, []).append({k: v for k, v in row.items() if k != config.target_task_column})
    directory = run_dir / "targets" / name
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for task in sorted(tasks):
        file = f"task-{len(files):03d}.jsonl"  # never a name taken from row content
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in tasks[task]).encode("utf-8")
        atomic_write_bytes(directory / file, data)
        files[task] = str(directory / file)
    return files


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    import gzip

    from thresher.pipeline.spec import SpecError

    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"target file {path} cannot be read as UTF-8 JSON lines: {exc}") from exc
    rows = []
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise SpecError(f"{path}:{n}: not valid JSON: {exc.msg}.") from exc
    if not rows:
        raise SpecError(f"target file {path} has no rows.")
    return rows


def _hash_target(path: str) -> str:
    """A target file by content; an embedding store of targets by its manifest's fingerprint."""
    from thresher.fingerprint import hash_file
    from thresher.pipeline.spec import SpecError

    p = Path(path)
    if p.is_dir():
        from thresher.stores.manifest import read_manifest

        return read_manifest(p)["fingerprint"]
    if not p.is_file():
        raise SpecError(f"target file {path} does not exist.")
    return hash_file(p)


def _count_targets(config: RDSStep) -> int:
    """Target examples over all tasks (for the memory estimate)."""
    total = 0
    for f in _target_files(config):
        p = Path(f)
        if p.is_dir():
            from thresher.stores.manifest import read_manifest

            total += int(read_manifest(p).get("n_rows", 0))
        elif p.is_file():
            import gzip

            with (gzip.open(p, "rb") if p.suffix == ".gz" else open(p, "rb")) as fh:
                total += sum(1 for line in fh if line.strip())
    return max(total, 1)
