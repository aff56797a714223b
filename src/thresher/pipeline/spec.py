"""The pipeline spec: a YAML (or TOML) file validated into typed config.

A spec names the pool, how it is embedded, the index, and a list of steps::

    pool: {path: data/pool.jsonl, id_column: id, messages_column: messages}
    embedding: {model: default}
    index: {type: auto}
    steps:
      - {step: semdedup, n_clusters: 20, eps: 0.05}
      - {step: rds, budget: 3000, targets: {travel: targets/travel.jsonl}}
      - {step: batches, batch_size: 64, community_size: 8}

Errors name the file, the line (YAML) and the key path at fault. Paths in
the spec are relative to the spec file; ``bundled:NAME`` names a file shipped
in ``thresher/data``. Command-line overrides (``--set rds.budget=500``) are
applied before validation, so they are checked like the file.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from thresher.exceptions import ParameterError
from thresher.pipeline.steps import STEPS, StepConfig, StrictModel, step_kind
from thresher.pipeline.steps.batches import BatchesStep  # noqa: F401 (the step models, re-exported)
from thresher.pipeline.steps.rds import RDSStep  # noqa: F401
from thresher.pipeline.steps.semdedup import SemDedupStep  # noqa: F401
from thresher.pipeline.steps.smote import SMOTEStep  # noqa: F401

SPEC_VERSION = 1
#: The most steps a spec may hold. Each step is a stage with its own output directory and manifest; a
#: run of more is a generated spec gone wrong, and is better split. (Validating 1,000 steps takes well under a second.)
MAX_STEPS = 1000
BUNDLED_PREFIX = "bundled:"


class SpecError(ParameterError):
    """A spec that cannot run: names the file, line and key at fault."""


_Strict = StrictModel  # the spec sections' base (kept under its old name)


class PoolSpec(_Strict):
    """Where the pool is and how each row becomes text (see :func:`thresher.pipeline.embed.embed`)."""

    path: str | list[str]
    format: Literal["auto", "jsonl", "json", "parquet", "arrow", "csv", "hf_disk"] = "auto"
    split: str | None = None
    id_column: str | None = None
    text: str | None = None
    text_column: str | None = None
    messages_column: str | None = None
    chat_format: Literal["tulu", "plain"] = "tulu"
    partition_rows: int | None = Field(default=None, gt=0)


class EmbeddingSpec(_Strict):
    """The encoder (see :class:`thresher.embeddings.EncoderSpec`) and the stored dtype, or an existing store.

    ``store: DIR`` names an embedding store made elsewhere (``thresher embed``,
    ``thresher embeddings import``): the run reads it in place instead of
    embedding the pool (see :mod:`thresher.pipeline.steps.store`). Its model,
    pooling and dim come from its manifest, so no other key goes with it.
    """

    model: str = "default"
    pooling: str | None = None
    layer: int = -1
    normalize: bool = True
    max_length: int | None = Field(default=None, gt=0)
    batch_size: int = Field(default=64, gt=0)
    device: str = "auto"
    model_dtype: str = "auto"
    padding_side: Literal["left", "right"] | None = None
    gguf_file: str | None = None
    trust_remote_code: bool = False
    backend: Literal["torch", "onnx-int8"] = "torch"  # onnx-int8: int8 ONNX Runtime on CPU (thresher[onnx]), quality-gated
    # what onnx-int8 does when its vectors fail the gate against float32: not in the store's fingerprint (see thresher.pipeline.embed)
    quality_gate: Literal["refuse", "warn"] = "refuse"
    dtype: Literal["float32", "float16"] = "float32"
    worker_resources: dict[str, float] | None = None
    store: str | None = None

    @model_validator(mode="after")
    def _store_alone(self) -> EmbeddingSpec:
        others = sorted(self.model_fields_set - {"store"})
        if self.store is not None and others:
            raise ValueError(f"give either store or the model settings, not both: embedding.store and embedding.{others[0]} were given "
                             "(a store's model, pooling and dim come from its manifest)")
        return self


class IndexSpec(_Strict):
    """The FAISS index (see :func:`thresher.stores.index.build_index`)."""

    type: str = "auto"
    metric: Literal["ip", "l2"] | None = None
    nprobe: int | None = Field(default=None, gt=0)
    ef_search: int | None = Field(default=None, gt=0)
    train_size: int | None = Field(default=None, gt=0)
    seed: int = 0

    @field_validator("type")
    @classmethod
    def _factory_survivable(cls, v: str) -> str:
        if v != "auto" and v.strip().lower() != "flat":  # the trial build needs the dim, known after embedding: build_index runs it
            from thresher.stores.index import check_factory_numbers

            try:
                check_factory_numbers(v)
            except ParameterError as exc:
                raise ValueError(str(exc).replace("The 'index_type' parameter of build_index", "the index type").rstrip(".")) from None
        return v


class ClusterSpec(_Strict):
    """Where the Dask work runs: an existing scheduler, SLURM, local worker processes, or in-process."""

    scheduler: str | None = None
    slurm: str | None = None
    workers: int | None = Field(default=None, gt=0)
    local: bool = False

    @model_validator(mode="after")
    def _one_place(self) -> ClusterSpec:
        chosen = [k for k in ("scheduler", "slurm") if getattr(self, k)] + (["local"] if self.local else [])
        if len(chosen) > 1:
            raise ValueError(f"choose one of scheduler, slurm, local; got {', '.join(chosen)}")
        return self


class ReportSpec(_Strict):
    """The pages written after the run: the static report and, linked from it, the interactive explore page.

    ``explore`` (default true) writes ``explore.html`` beside ``report.html``
    (:func:`thresher.explore.explore`) and links it from the report. It is on
    by default because a user reading the report expects to open the rows it
    summarises, and its cost is mostly fixed: one projection of a sample of at
    most 20,000 rows (PCA; UMAP when the ``explore`` extra is installed, slower,
    and compiled by numba on first use); only a few streaming passes over the
    steps' id and fact columns grow with the run (``bench/bench_explore.py``). ``explore: false`` skips it; ``explore: true`` with
    ``html: false`` is refused (the page is the report's companion; use
    ``thresher explore RUN`` for it alone).
    """

    html: bool = True
    columns: list[str] | None = None
    explore: bool = True

    @field_validator("explore")
    @classmethod
    def _with_the_report(cls, explore: bool, info: Any) -> bool:
        # runs only when the key is given (defaults are not validated), so html: false alone stays valid
        if explore and info.data.get("html") is False:
            raise ValueError("explore: true needs html: true (the explore page is written beside report.html and linked from it); "
                             "set explore: false, or run `thresher explore RUN` for the page alone")
        return explore


_Step = StepConfig  # every step's base: thresher.pipeline.steps

#: Step kind → its config model (the registry's, :mod:`thresher.pipeline.steps`); the step models are re-exported here.
STEP_MODELS: dict[str, type[StepConfig]] = {name: kind.Config for name, kind in STEPS.items()}

StepSpec = Annotated[Union[tuple(STEP_MODELS.values())], Field(discriminator="step")]  # noqa: UP007 (a union built from the registry)


class PipelineSpec(_Strict):
    """A whole run: pool → embedding → index → steps → curated shards (+ report)."""

    version: int = SPEC_VERSION
    name: str | None = None
    out: str | None = None
    pool: PoolSpec
    embedding: EmbeddingSpec = EmbeddingSpec()
    index: IndexSpec | None = None
    steps: list[StepSpec] = Field(default_factory=list)
    cluster: ClusterSpec = ClusterSpec()
    report: ReportSpec = ReportSpec()

    def step_names(self) -> list[str]:
        return [step_name(s) for s in self.steps]

    def final_steps(self) -> list[int]:
        """Steps no other step takes rows from: the run's outputs (the last one is the main output)."""
        used = {source_index(self, i) for i in range(len(self.steps))}
        return [i for i in range(len(self.steps)) if i not in used]


def step_name(step: Any) -> str:
    return step.name or step.step


def load_spec(path: str | Path, overrides: Sequence[str] = (), *, out: str | None = None,
              embeddings: str | None = None) -> tuple[PipelineSpec, dict[str, Any]]:
    """Read, override, validate and resolve a spec file.

    ``out`` replaces the spec's ``out``; ``embeddings`` (an existing store, ``thresher run --embeddings``)
    replaces its whole ``embedding`` section with ``{store: embeddings}``. Both are taken as they are
    (the CLI makes them absolute from the working directory).

    Returns the typed spec (paths resolved to absolute paths) and its plain
    dict form, the "resolved spec" stored in every artefact's manifest.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"spec file {path} does not exist.")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"spec file {path} cannot be read as UTF-8 text: {exc}") from exc
    raw, lines = _parse(path, text)
    origins: dict[tuple, str] = {}
    raw = apply_overrides(raw, overrides, where=str(path), origins=origins)
    lines = {**lines, **{key: f"--set {item}" for key, item in origins.items()}}  # an error in a value set by --set names the --set
    if out is not None:
        raw["out"] = out
    if embeddings is not None:
        raw["embedding"] = {"store": embeddings}
        lines = {k: v for k, v in lines.items() if k[:1] != ("embedding",)} | {("embedding",): "--embeddings", ("embedding", "store"): "--embeddings"}
    spec = validate_spec(raw, where=str(path), lines=lines)
    resolved = resolve_paths(spec, base=path.parent)
    check_order(resolved, where=str(path))
    return resolved, resolved_dict(resolved)


def resolved_dict(spec: PipelineSpec) -> dict[str, Any]:
    """The plain dict of a resolved spec, as manifests record it.

    The ``embedding`` section shows what the run uses: ``{store: DIR}`` alone for an existing
    store, the encoder settings otherwise (without a ``store: null``, as before stores could be named).
    """
    data = spec.model_dump(mode="json")
    data["embedding"] = {"store": spec.embedding.store} if spec.embedding.store is not None else \
        {k: v for k, v in data["embedding"].items() if k != "store"}
    return data


def validate_spec(raw: Any, *, where: str = "spec", lines: Mapping[tuple, int | str] | None = None) -> PipelineSpec:
    """Validate a plain mapping into a :class:`PipelineSpec`; the first error names its key (and line)."""
    if not isinstance(raw, Mapping):
        raise SpecError(f"{where}: a spec must be a mapping with at least a 'pool' key; got {type(raw).__name__}.")
    raw = dict(raw)
    steps = raw.get("steps") or []
    if not isinstance(steps, list):
        raise SpecError(f"{_at(where, lines, ('steps',))}: 'steps' must be a list of steps.")
    if len(steps) > MAX_STEPS:
        raise SpecError(f"{_at(where, lines, ('steps',))}: {len(steps)} steps; a spec holds at most {MAX_STEPS} "
                        "(thresher.pipeline.spec.MAX_STEPS); split the run into several specs.")
    for i, step in enumerate(steps):
        if not isinstance(step, Mapping) or "step" not in step:
            raise SpecError(f"{_at(where, lines, ('steps', i))}: steps[{i}] must be a mapping with a 'step' key (one of {', '.join(STEP_MODELS)}).")
        if step["step"] not in STEP_MODELS:
            raise SpecError(f"{_at(where, lines, ('steps', i, 'step'))}: steps[{i}].step: unknown step {step['step']!r}; known steps: {', '.join(STEP_MODELS)}.")
    try:
        spec = PipelineSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(_first_error(exc, where, lines, steps)) from None
    names = spec.step_names()
    for i, name in enumerate(names):
        if names.index(name) != i:
            raise SpecError(f"{_at(where, lines, ('steps', i))}: two steps are named {name!r}; give one a distinct 'name'.")
        if name in _SECTIONS:
            raise SpecError(f"{_at(where, lines, ('steps', i))}: a step cannot be named {name!r} (a spec section has that name).")
    if spec.version != SPEC_VERSION:
        raise SpecError(f"{where}: spec version {spec.version} is not supported (this thresher reads version {SPEC_VERSION}).")
    return spec


def check_order(spec: PipelineSpec, *, where: str = "spec") -> None:
    """Refuse step orders that cannot work, before any work starts."""
    names = spec.step_names()
    for i, step in enumerate(spec.steps):
        label = f"{where}: steps[{i}] ({step_name(step)})"
        if step.input is not None and step.input not in names[:i]:
            known = ", ".join(names[:i]) or "none: it is the first step"
            raise SpecError(f"{label}: input {step.input!r} is not an earlier step (earlier steps: {known}).")
        src = source_index(spec, i)
        if src is not None and not step_kind(spec.steps[src]).keeps_pool_rows:
            source = spec.steps[src].step
            raise SpecError(f"{label}: cannot take its rows from {source} step {names[src]!r} — its rows are not all pool rows "
                            f"(synthetic ones); take them from an earlier step with 'input', or make {source} a final step.")
        problem = step_kind(step).check(step, has_index=spec.index is not None)
        if problem is not None:
            raise SpecError(f"{label}: {problem}")
        check_budget(spec, i, None, label)


def check_budget(spec: PipelineSpec, i: int, n_pool: int | None, label: str) -> None:
    """A step asking for more rows than can reach it is refused (with the pool's size once it is known)."""
    step = spec.steps[i]
    bound = upper_bound_before(spec, i, n_pool)
    problem = None if bound is None else step_kind(step).check_rows(step, bound)
    if problem is not None:
        raise SpecError(f"{label}: {problem}")


def source_index(spec: PipelineSpec, i: int) -> int | None:
    """Index of the step whose output step ``i`` selects from (None: the whole pool)."""
    step = spec.steps[i]
    if step.input is not None:
        return spec.step_names().index(step.input)
    return i - 1 if i > 0 else None


def upper_bound_before(spec: PipelineSpec, i: int, n_pool: int | None = None) -> int | None:
    """The most rows that can reach step ``i`` (None: unknown before the pool is read)."""
    chain = []  # the steps rows flow through before step i, nearest first (a loop, not recursion: specs may be long chains)
    src = source_index(spec, i)
    while src is not None:
        chain.append(src)
        src = source_index(spec, src)
    bound = n_pool
    for j in reversed(chain):
        bound = step_kind(spec.steps[j]).rows_after(spec.steps[j], bound)
    return bound


def upper_bound_after(spec: PipelineSpec, i: int, n_pool: int | None = None) -> int | None:
    """The most rows step ``i`` can output (None: unknown)."""
    step = spec.steps[i]
    return step_kind(step).rows_after(step, upper_bound_before(spec, i, n_pool))


def resolve_paths(spec: PipelineSpec, *, base: Path) -> PipelineSpec:
    """Make every file path in the spec absolute (relative to the spec file; ``bundled:`` → the package data)."""
    pool_paths = spec.pool.path if isinstance(spec.pool.path, list) else [spec.pool.path]
    resolved_pool = [resolve_path(p, base) for p in pool_paths]
    updates: dict[str, Any] = {"pool": spec.pool.model_copy(update={"path": resolved_pool if isinstance(spec.pool.path, list) else resolved_pool[0]})}
    updates["steps"] = [step_kind(step).resolve_paths(step, lambda p: resolve_path(p, base)) for step in spec.steps]
    if spec.embedding.store is not None:
        updates["embedding"] = spec.embedding.model_copy(update={"store": resolve_path(spec.embedding.store, base)})
    if spec.cluster.slurm:
        updates["cluster"] = spec.cluster.model_copy(update={"slurm": resolve_path(spec.cluster.slurm, base)})
    if spec.out is not None:
        updates["out"] = str((base / spec.out).resolve()) if not Path(spec.out).is_absolute() else spec.out
    return spec.model_copy(update=updates)


def resolve_path(value: str, base: Path) -> str:
    """``bundled:NAME`` → the file in thresher/data; URLs stay; relative paths are taken from ``base``."""
    if value.startswith(BUNDLED_PREFIX):
        return str(bundled_path(value[len(BUNDLED_PREFIX):]))
    if "://" in value:
        return value
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def bundled_path(name: str) -> Path:
    """A data file shipped in ``thresher/data`` (demo pool, demo targets, example specs)."""
    from importlib import resources

    data = Path(str(resources.files("thresher") / "data"))
    path = (data / name).resolve()
    if path.parent != data.resolve() or not path.is_file():
        shipped = sorted(p.name for p in data.iterdir() if p.is_file() and not p.name.startswith(("_", ".")))
        raise SpecError(f"{BUNDLED_PREFIX}{name}: no such bundled file; thresher ships {', '.join(shipped)}.")
    return path


_SECTIONS = ("version", "name", "out", "pool", "embedding", "index", "steps", "cluster", "report")


def apply_overrides(raw: Any, overrides: Sequence[str], *, where: str = "spec", origins: dict[tuple, str] | None = None) -> dict[str, Any]:
    """Apply ``KEY=VALUE`` overrides: ``embedding.batch_size=32``, ``rds.budget=500`` (a step by its name), ``steps.1.eps=0.1``.

    Values are read as YAML scalars (``500`` is an int, ``0.1`` a float, ``null`` None). ``origins``, when
    given, receives the key path (as in the spec's line map) of every value an override set or created,
    mapped to the override, so that a later error names ``--set KEY=VALUE`` rather than a spec line.
    """
    raw = copy.deepcopy(dict(raw)) if isinstance(raw, Mapping) else {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SpecError(f"--set {item!r}: expected KEY=VALUE, e.g. rds.budget=5000.")
        parts = key.strip().split(".")
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError as exc:
            raise SpecError(f"--set {item!r}: the value is not valid YAML: {exc}") from exc
        target: Any = raw
        head = parts[0]
        if head not in _SECTIONS:
            index = _step_index(raw, head)
            if index is None:
                steps = [s.get("name") or s.get("step") for s in raw.get("steps") or [] if isinstance(s, Mapping)]
                raise SpecError(f"--set {item!r}: {head!r} is neither a spec section ({', '.join(_SECTIONS)}) nor a step name ({', '.join(map(str, steps)) or 'no steps'}).")
            target = raw["steps"][index]
            path: tuple = ("steps", index)
            parts = parts[1:]
        else:
            path = ()
        for part in parts[:-1]:
            nxt = _child(target, part, item)
            path += (int(part) if isinstance(target, list) else part,)
            if nxt is None:
                nxt = {}
                _set(target, part, nxt, item)
                if origins is not None:
                    origins[path] = item
            target = nxt
        if not parts:
            raise SpecError(f"--set {item!r}: name a key inside the step, e.g. {head}.budget=...")
        _set(target, parts[-1], parsed, item)
        if origins is not None:
            origins[path + (int(parts[-1]) if isinstance(target, list) else parts[-1],)] = item
    return raw


def _step_index(raw: Mapping[str, Any], name: str) -> int | None:
    for i, step in enumerate(raw.get("steps") or []):
        if isinstance(step, Mapping) and (step.get("name") or step.get("step")) == name:
            return i
    return None


def _child(target: Any, part: str, item: str) -> Any:
    if isinstance(target, list):
        try:
            return target[int(part)]
        except (ValueError, IndexError):
            raise SpecError(f"--set {item!r}: {part!r} is not an index of a list of {len(target)}.") from None
    if isinstance(target, dict):
        return target.get(part)
    raise SpecError(f"--set {item!r}: cannot set {part!r} inside a {type(target).__name__}.")


def _set(target: Any, part: str, value: Any, item: str) -> None:
    if isinstance(target, list):
        try:
            target[int(part)] = value
            return
        except (ValueError, IndexError):
            raise SpecError(f"--set {item!r}: {part!r} is not an index of a list of {len(target)}.") from None
    if not isinstance(target, dict):
        raise SpecError(f"--set {item!r}: cannot set {part!r} inside a {type(target).__name__}.")
    target[part] = value


def _parse(path: Path, text: str) -> tuple[Any, dict[tuple, int]]:
    if path.suffix.lower() == ".toml":
        import tomllib

        try:
            return tomllib.loads(text), {}
        except tomllib.TOMLDecodeError as exc:
            raise SpecError(f"{path}: not valid TOML: {exc}") from exc
    from thresher.yaml_files import load_yaml

    raw, node = load_yaml(text, path, error=SpecError)
    lines: dict[tuple, int | str] = {}
    if node is not None:
        _collect_lines(node, (), lines)
    return raw, lines


def _collect_lines(node: Any, key: tuple, out: dict[tuple, int | str]) -> None:
    out[key] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            child = key + (k.value,)
            _collect_lines(v, child, out)
            out[child] = k.start_mark.line + 1  # a key's line, not its value's
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _collect_lines(v, key + (i,), out)


def _at(where: str, lines: Mapping[tuple, int | str] | None, key: tuple) -> str:
    """Where ``key`` comes from: ``spec.yaml:12`` (its line, or its nearest parent's), or ``--set KEY=VALUE`` (a str entry)."""
    if not lines:
        return where
    for n in range(len(key), -1, -1):
        line = lines.get(tuple(key[:n]))
        if isinstance(line, str):
            return line
        if line is not None:
            return f"{where}:{line}"
    return where


def _first_error(exc: ValidationError, where: str, lines: Mapping[tuple, int | str] | None, steps: list[Any]) -> str:
    err = exc.errors()[0]
    loc = list(err["loc"])
    # pydantic names the union member tried for a step ("steps", 0, "rds", "budget"): drop that tag
    if len(loc) >= 3 and loc[0] == "steps" and isinstance(loc[1], int) and loc[2] in STEP_MODELS:
        loc.pop(2)
    # ... and the member of a value's union it tried last ("pool", "path", "list[str]")
    while loc and isinstance(loc[-1], str) and (loc[-1] in ("str", "int", "float", "bool") or "[" in loc[-1]):
        loc.pop()
    key = tuple(loc)
    dotted = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(loc))
    message = err["msg"]
    if err["type"] == "extra_forbidden":
        message = "unknown key"
        section = loc[:-1]
        allowed = _allowed_keys(section, steps)
        if allowed:
            message += f" (allowed: {', '.join(allowed)})"
    elif err["type"] == "missing":
        message = "required key is missing"
    return f"{_at(where, lines, key)}: {dotted or 'spec'}: {message}."


def _allowed_keys(section: list[Any], steps: list[Any]) -> list[str]:
    model: Any = PipelineSpec
    if len(section) >= 2 and section[0] == "steps" and isinstance(section[1], int):
        model = STEP_MODELS.get(steps[section[1]].get("step")) if section[1] < len(steps) else None
        section = section[2:]
    for part in section:
        field = model.model_fields.get(part) if model is not None and hasattr(model, "model_fields") else None
        ann = getattr(field, "annotation", None)
        model = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return list(model.model_fields) if model is not None else []
