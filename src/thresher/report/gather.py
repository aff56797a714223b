"""Gather what a report shows from finished artefacts, reading only what it needs.

A report can be made from a run directory (``thresher run``'s output, whose
``manifest.json`` is of kind "run"), a curated-shard directory, or an
embedding store. Everything here streams: per-step counts come from
manifests; histograms and composition counts read single columns shard by
shard (memory-mapped); the 2-D map projects a seeded sample of at most
``map_rows`` store rows; duplicate texts are rebuilt for a handful of rows
only. Nothing holds the pool or its vectors whole.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from thresher.exceptions import ArtifactError, ParameterError, ThresherError
from thresher.report.reading import check_int, clip, pool_rows_at, rows_at, sample_positions
from thresher.rng import as_generator
from thresher.stores.arrow_io import read_stream_shard
from thresher.stores.ids import find_positions as positions_of_ids  # a few ids' positions, streamed
from thresher.stores.manifest import read_manifest

#: Pool columns whose names look like these are composition columns (when they hold few distinct values).
COMPOSITION_NAME = re.compile(r"source|label|task|categor|class", re.IGNORECASE)
MAX_DISTINCT = 50
MAX_NAMED_DISTINCT = 1000  # a column named in report.columns may hold this many values
EXACT_PCA_LIMIT = 1024  # a sample smaller than this in either direction gets an exact SVD
TEXT_CHARS = 600
_SKIP_HISTOGRAM = {"rank", "batch", "cluster", "round"}
_NULL = "(null)"


@dataclass
class StepInfo:
    """One step of a run: what the run manifest says, plus its artefact when it has one."""

    name: str
    step: str
    dir: Path | None
    rows_in: int | None
    rows_out: int | None
    seconds: float | None = None
    cached: bool | None = None
    selector: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    curated: Any = None  # CuratedShards of a selection step
    removed: Path | None = None  # semdedup's removed.arrow

    @property
    def dropped(self) -> int | None:
        """Rows the step saw and did not keep (0 for a step that only adds rows)."""
        if self.rows_in is None or self.rows_out is None:
            return None
        return max(self.rows_in - self.rows_out, 0)

    @property
    def added(self) -> int | None:
        """Rows out beyond the rows in (SMOTE's synthetic rows); 0 for a step that only drops."""
        if self.rows_in is None or self.rows_out is None:
            return None
        return max(self.rows_out - self.rows_in, 0)


@dataclass
class Histogram:
    """Exact counts of one numeric column in ``len(counts)`` equal bins over [min, max]."""

    title: str
    edges: np.ndarray
    counts: np.ndarray
    n: int
    mean: float


@dataclass
class Composition:
    """Counts of a column's values at each stage; a stage lacking the column maps to None."""

    column: str
    stages: list[str]
    counts: dict[str, dict[str, int] | None]

    def values(self) -> list[str]:
        """Values in order of their count at the first stage that has the column (then the later stages)."""
        order: dict[str, None] = {}
        for stage in self.stages:
            for value, _ in sorted((self.counts.get(stage) or {}).items(), key=lambda kv: (-kv[1], kv[0])):
                order.setdefault(value)
        return list(order)


@dataclass
class Projection:
    """A 2-D PCA map: a seeded sample of the pool, and one of the selection, projected the same way."""

    pool_xy: np.ndarray
    selected_xy: np.ndarray | None
    n_pool: int
    n_selected: int | None
    explained_variance: list[float]
    positions: np.ndarray | None = None  # store positions of the pool sample


@dataclass
class DuplicatePair:
    removed_id: Any
    removed_text: str
    kept_id: Any
    kept_text: str
    similarity: float | None
    cluster: Any


@dataclass
class ReportData:
    """Everything the report shows; ``notes`` says, per section, why something is missing."""

    title: str
    path: Path
    kind: str
    steps: list[StepInfo] = field(default_factory=list)
    n_pool: int | None = None
    n_final: int | None = None
    histograms: list[Histogram] = field(default_factory=list)
    compositions: list[Composition] = field(default_factory=list)
    projection: Projection | None = None
    duplicates: list[DuplicatePair] = field(default_factory=list)
    n_removed: int | None = None
    sample_columns: list[str] = field(default_factory=list)
    sample_rows: list[dict[str, Any]] = field(default_factory=list)
    n_sample_from: int | None = None
    notes: dict[str, str] = field(default_factory=dict)


def gather_report(
    path: str | Path,
    *,
    columns: Sequence[str] | None = None,
    map_rows: int = 5000,
    n_duplicates: int = 10,
    n_sample_rows: int = 20,
    bins: int = 40,
    seed: int = 0,
    records: Sequence[dict[str, Any]] | None = None,
) -> ReportData:
    """Read the artefact at ``path`` (a run, a curated output or an embedding store) into a :class:`ReportData`.

    Parameters
    ----------
    columns : sequence of str, optional
        Composition columns. Default: the run spec's ``report.columns``, else
        every pool or selection column named like source/label/task/category/class
        that holds ints, strings or bools with at most 50 distinct values.
    map_rows : int
        At most this many pool rows (a seeded uniform sample) are projected on
        the 2-D map, and at most half as many selected rows.
    seed : int
        Seeds every sample the report draws.
    records : list of dict, optional
        The run's steps as the run manifest will list them ({"name", "step",
        "dir", "rows_in", "rows_out", …}), for a run whose manifest is not
        written yet; ``path`` is then its run directory.
    """
    for name, value, low in (("map_rows", map_rows, 2), ("n_duplicates", n_duplicates, 0), ("n_sample_rows", n_sample_rows, 0), ("bins", bins, 1)):
        check_int("the report", name, value, low)
    if columns is not None and (isinstance(columns, str) or not all(isinstance(c, str) and c for c in columns)):
        raise ParameterError(f"The 'columns' parameter of the report must be a list of column names; got {columns!r}.")
    path = Path(path)
    manifest = run_manifest(path, records)
    kind = manifest["artifact"]
    data = ReportData(title=f"thresher report: {path.resolve().name}", path=path, kind=kind)
    store = None
    final = None
    if kind == "run":
        store, final = read_run(path, manifest, data)
        spec_columns = ((manifest.get("spec") or {}).get("report") or {}).get("columns")
        if columns is None and spec_columns is not None:
            if isinstance(spec_columns, str) or not isinstance(spec_columns, list):
                raise ParameterError(f"report.columns in the spec of {path} must be a list of column names; got {spec_columns!r}.")
            columns = spec_columns
    elif kind == "curated":
        from thresher.stores.curated import CuratedShards

        final = CuratedShards(path, manifest)
        summary = manifest.get("summary") or {}
        rows_in = summary.get("rows_in", manifest.get("n_pool"))
        data.steps = [StepInfo(name=path.name, step=str(manifest.get("selector")), dir=path, rows_in=rows_in, rows_out=final.n_rows,
                               selector=manifest.get("selector"), summary=summary, curated=final, removed=_removed_file(path))]
        data.n_pool = manifest.get("n_pool")
        data.notes["map"] = "a curated output alone does not name its embedding store's path; report on the run directory for the map."
    elif kind == "embeddings":
        from thresher.stores.embedding_store import EmbeddingStore

        store = EmbeddingStore(path, manifest)
        data.n_pool = store.n_rows
        data.notes["steps"] = "an embedding store alone: no selection steps."
    else:
        raise ArtifactError(f"{path} holds an artefact of kind {kind!r}; a report is made from a run directory, curated shards or an embedding store.")
    if final is not None:
        data.n_final = final.n_rows

    pool, builder = pool_and_text(store, data)
    if pool is None and store is None and final is not None:
        pool = _reopen_described(final.manifest.get("pool"), str(final.path), data)
    selection_steps = [s for s in data.steps if s.curated is not None]
    data.histograms = _histograms(selection_steps, bins)
    if not data.histograms:
        data.notes.setdefault("scores", "no step wrote a numeric score column.")
    data.compositions = _compositions(pool, selection_steps, columns, data)
    if store is not None:
        data.projection = _projection(store, final, map_rows, seed)
    _duplicates(store, pool, builder, selection_steps, n_duplicates, seed, data)
    _sample(final, builder, n_sample_rows, seed, data)
    return data


# -- the artefacts -------------------------------------------------------------------------------


def run_manifest(path: Path, records: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The manifest of the artefact at ``path``; with ``records``, the run manifest a run that is still writing will have.

    The runner writes its pages before the run manifest (which comes last), so it passes its steps' records.
    """
    if records is not None:
        return {"artifact": "run", "steps": list(records), "output": records[-1]["dir"] if records else None}
    return read_manifest(path)


def read_run(path: Path, manifest: dict[str, Any], data: ReportData) -> tuple[Any, Any]:
    """Steps of a run manifest, each with its artefact; returns (embedding store or None, final curated shards or None)."""
    from thresher.stores.curated import CuratedShards
    from thresher.stores.embedding_store import EmbeddingStore

    steps = manifest.get("steps")
    if not isinstance(steps, list):
        raise ArtifactError(f"The run manifest of {path} has no 'steps' list.")
    store = None
    for i, entry in enumerate(steps):
        if not isinstance(entry, dict) or "dir" not in entry:
            raise ArtifactError(f"Step {i} of the run manifest of {path} is not an object with a 'dir'.")
        directory = path / entry["dir"]
        info = StepInfo(name=str(entry.get("name", entry["dir"])), step=str(entry.get("step", "?")), dir=directory,
                        rows_in=entry.get("rows_in"), rows_out=entry.get("rows_out"), seconds=entry.get("seconds"), cached=entry.get("cached"))
        sub = read_manifest(directory)
        if sub["artifact"] == "curated":
            info.curated = CuratedShards(directory, sub)
            info.selector = sub.get("selector")
            info.summary = sub.get("summary") or {}
            info.removed = _removed_file(directory)
        elif sub["artifact"] == "embeddings" and store is None:
            store = EmbeddingStore(directory, sub)
        data.steps.append(info)
    if store is None and (path / "embeddings").is_dir():
        store = EmbeddingStore(path / "embeddings", read_manifest(path / "embeddings", "embeddings"))
    if store is not None:
        data.n_pool = store.n_rows
    final = None
    if manifest.get("output"):
        output = read_manifest(path / manifest["output"])
        if output["artifact"] == "curated":  # a run with no selection step ends on its store or index
            final = CuratedShards(path / manifest["output"], output)
    elif any(s.curated is not None for s in data.steps):
        final = [s for s in data.steps if s.curated is not None][-1].curated
    return store, final


def _removed_file(directory: Path) -> Path | None:
    from thresher.stores.manifest import artifact_file

    removed = artifact_file(directory, "removed.arrow", key="attachments")  # never a link out of the directory
    return removed if removed.is_file() else None


def pool_and_text(store: Any, data: ReportData) -> tuple[Any, Any]:
    """The pool behind the store and the store's text builder; (None, None) with a note when unavailable."""
    if store is None:
        return None, None
    from thresher.pipeline.text import TextBuilder

    text = store.manifest.get("text") or {}
    builder = None
    if text.get("kind") == "template":
        builder = TextBuilder(text["template"])
    elif text.get("kind") == "column":
        builder = TextBuilder(text_column=text["text_column"])
    elif text.get("kind") == "messages":
        builder = TextBuilder(messages_column=text["messages_column"], chat_format=text.get("chat_format", "tulu"))
    pool = _reopen(store, data)
    if pool is not None and [p.n_rows for p in pool.partitions] != [s.rows for s in store.shards]:
        data.notes["composition"] = f"the pool's partitions no longer line up with the shards of {store.path}; pool composition is left out."
        return None, builder
    return pool, builder


def _reopen_described(description: dict[str, Any] | None, where: str, data: ReportData) -> Any:
    """The pool a manifest describes, checked against the files it recorded; None with a note when it cannot be read or changed."""
    from thresher.stores.pool import check_pool_files, reopen_pool

    if not description:
        return None
    try:
        pool = reopen_pool(description)
        check_pool_files(pool, where)
        return pool
    except (ThresherError, KeyError, OSError) as exc:
        data.notes["composition"] = f"the pool cannot be read ({exc}); its composition and the duplicates' texts are left out."
        return None


def _reopen(store: Any, data: ReportData) -> Any:
    """The pool ``store`` was embedded from, or None with a note saying why it cannot be read (files changed since included)."""
    if not store.manifest.get("pool"):
        return None
    try:
        return store.reopen_pool()
    except (ThresherError, KeyError, OSError) as exc:
        data.notes["composition"] = f"the pool cannot be read ({exc}); its composition and the duplicates' texts are left out."
        return None


# -- histograms ----------------------------------------------------------------------------------


def _numeric_columns(curated: Any) -> list[str]:
    schema = read_stream_shard(curated.files[0]).schema if curated.files else pa.schema([])
    names = []
    for name in curated.manifest.get("selection_columns", []):
        if name in _SKIP_HISTOGRAM or name not in schema.names:
            continue
        kind = schema.field(name).type
        if pa.types.is_floating(kind) or (pa.types.is_integer(kind) and name in ("score", "weight")):
            names.append(name)
    return names


def _column_chunks(files: Iterable[str | Path], name: str) -> Iterator[np.ndarray]:
    """Non-null values of a numeric column, shard by shard, as float64."""
    for f in files:
        table = read_stream_shard(f)
        if name not in table.column_names:
            continue
        column = table.column(name).drop_null().combine_chunks()
        yield column.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)


def streaming_histogram(files: Sequence[str | Path], name: str, bins: int, title: str) -> Histogram | None:
    """Exact histogram of a column over shards in two streaming passes (range, then counts); None when it holds no finite value."""
    lo, hi, n, total = np.inf, -np.inf, 0, 0.0
    for values in _column_chunks(files, name):
        values = values[np.isfinite(values)]
        if len(values):
            lo, hi = min(lo, float(values.min())), max(hi, float(values.max()))
            n += len(values)
            total += float(values.sum())
    if n == 0:
        return None
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts = np.zeros(bins, dtype=np.int64)
    for values in _column_chunks(files, name):
        counts += np.histogram(values[np.isfinite(values)], bins=bins, range=(lo, hi))[0]
    return Histogram(title=title, edges=np.linspace(lo, hi, bins + 1), counts=counts, n=n, mean=total / n)


def _histograms(steps: list[StepInfo], bins: int) -> list[Histogram]:
    out = []
    for s in steps:
        for name in _numeric_columns(s.curated):
            h = streaming_histogram(s.curated.files, name, bins, f"{s.name}: {name}")
            if h is not None:
                out.append(h)
        if s.removed is not None:
            h = streaming_histogram([s.removed], "similarity", bins, f"{s.name}: similarity of removed rows to their duplicate")
            if h is not None:
                out.append(h)
    return out


# -- composition ---------------------------------------------------------------------------------


def is_category_type(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_integer(kind) or pa.types.is_boolean(kind)


def _count(column: pa.ChunkedArray | pa.Array, into: Counter) -> None:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    for item in column.value_counts().to_pylist():
        into[_NULL if item["values"] is None else str(item["values"])] += int(item["counts"])


def _count_curated(curated: Any, names: list[str], limit: int) -> dict[str, Counter | None]:
    """Value counts of ``names`` in a curated output, shard by shard; None for a column it lacks or one past ``limit`` values."""
    schema = read_stream_shard(curated.files[0]).schema if curated.files else pa.schema([])
    out: dict[str, Counter | None] = {name: Counter() if name in schema.names else None for name in names}
    for f in curated.files:
        table = read_stream_shard(f)
        for name, counter in out.items():
            if counter is not None:
                _count(table.column(name), counter)
                if len(counter) > limit:
                    out[name] = None
    return out


def _compositions(pool: Any, steps: list[StepInfo], columns: Sequence[str] | None, data: ReportData) -> list[Composition]:
    """Counts per value of each composition column: in the pool, then in each selection step's output.

    Counting streams (pool partitions, curated shards: one column each) and
    stops for a column once it passes its distinct-value limit: 50 for
    auto-detected columns (more makes it an id, not a category), 1,000 for
    named ones; such a column is left out with a note.
    """
    pool_types = {n: pool.schema.field(n).type for n in pool.column_names} if pool is not None else {}
    step_types: dict[str, pa.DataType] = {}
    for s in steps:
        if s.curated.files:
            for f in read_stream_shard(s.curated.files[0]).schema:
                step_types.setdefault(f.name, f.type)
    if columns is not None:
        unknown = [c for c in columns if c not in pool_types and c not in step_types]
        if unknown:
            raise ParameterError(f"The report's composition columns {unknown} are in neither the pool ({list(pool_types)}) nor any step's output "
                                 f"({sorted(step_types)}).")
        wanted, limit = list(dict.fromkeys(columns)), MAX_NAMED_DISTINCT
    else:
        types = {**pool_types, **{n: t for n, t in step_types.items() if n not in pool_types}}
        wanted = [n for n, t in types.items() if n != "id" and COMPOSITION_NAME.search(n) and is_category_type(t)]
        limit = MAX_DISTINCT
    if not wanted:
        data.notes.setdefault("composition", "no column named like source/label/task/category/class holds categories; name some with report.columns.")
        return []

    too_many: set[str] = set()
    counts: dict[str, dict[str, dict[str, int] | None]] = {c: {"pool": None} for c in wanted}
    if pool is not None:
        live = {c: Counter() for c in wanted if c in pool_types}
        for i in range(pool.n_partitions):
            if not live:
                break
            table = pool.read_partition(i, columns=list(live))
            for c in list(live):
                _count(table.column(c), live[c])
                if len(live[c]) > limit:
                    too_many.add(c)
                    del live[c]
        for c, counter in live.items():
            counts[c]["pool"] = dict(counter)
    for s in steps:
        present = read_stream_shard(s.curated.files[0]).schema.names if s.curated.files else []
        for c, counter in _count_curated(s.curated, [c for c in wanted if c not in too_many], limit).items():
            if counter is None and c in present:
                too_many.add(c)
            counts[c][s.name] = None if counter is None else dict(counter)
    stages = ["pool"] + [s.name for s in steps]
    out = [Composition(column=c, stages=stages, counts=counts[c]) for c in wanted
           if c not in too_many and any(v is not None for v in counts[c].values())]
    named_too_many = sorted(too_many) if columns is not None else []
    if named_too_many:
        data.notes["composition"] = f"the columns {named_too_many} hold more than {limit} distinct values; they are left out."
    elif not out:
        data.notes.setdefault("composition", f"no candidate column holds at most {limit} distinct values.")
    return out


# -- the 2-D map ---------------------------------------------------------------------------------


def _sample_curated_ids(curated: Any, k: int, rng: np.random.Generator) -> tuple[list[Any], int]:
    """A uniform sample of at most ``k`` ids of the curated pool rows, and how many pool rows there are."""
    n, picks = sample_positions(curated, k, rng, rows="pool")
    ids = [i for table in rows_at(curated, picks, ["id"]) for i in table.column("id").to_pylist()]
    return ids, n


def pca_2d(vectors: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first two principal axes of ``vectors`` (n, dim): (mean, components (2, dim), explained-variance ratios (2,)).

    Exact when the sample is small in either direction (no scikit-learn import
    for a 20k x 384 matrix): for a tall sample, the eigenvectors of the dim x dim
    scatter matrix in float64 (one matrix product, 10x cheaper than an SVD of
    the n rows); otherwise an SVD. Above ``EXACT_PCA_LIMIT`` in both, a seeded
    randomised SVD (Halko et al. 2011: range finder with power iterations),
    which costs n x dim x 12 per pass instead of a full decomposition. Each
    axis's sign is fixed so its largest-magnitude loading is positive, making
    the map the same on every machine.
    """
    mean = vectors.mean(axis=0)
    centred = vectors - mean
    if centred.shape[1] <= EXACT_PCA_LIMIT and centred.shape[0] > centred.shape[1]:
        tall = centred.astype(np.float64, copy=False)
        values, axes = np.linalg.eigh(tall.T @ tall)  # ascending
        s, vt = np.sqrt(np.clip(values[::-1], 0.0, None)), axes[:, ::-1].T
    elif min(centred.shape) <= EXACT_PCA_LIMIT:
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
    else:
        basis = centred @ as_generator(seed, "report").standard_normal((centred.shape[1], 12))
        for _ in range(8):
            basis = centred @ (centred.T @ np.linalg.qr(basis)[0])
        _, s, vt = np.linalg.svd(np.linalg.qr(basis)[0].T @ centred, full_matrices=False)
    components = vt[:2]
    signs = np.sign(components[np.arange(len(components)), np.abs(components).argmax(axis=1)])
    components = components * np.where(signs == 0, 1.0, signs)[:, None]
    total = float((centred**2).sum())
    ratio = s[:2] ** 2 / total if total > 0 else np.zeros(len(components))
    return mean, components, ratio


def _projection(store: Any, final: Any, map_rows: int, seed: int) -> Projection | None:
    """PCA of a seeded sample of at most ``map_rows`` store rows, with a sample of the final selection projected on it."""
    if store.n_rows < 2:
        return None
    rng = as_generator(seed, "report")
    positions = np.sort(rng.choice(store.n_rows, size=min(map_rows, store.n_rows), replace=False))
    vectors = store.take(positions, dtype=np.float64)
    mean, components, ratio = pca_2d(vectors, seed)
    selected_xy, n_selected = None, None
    if final is not None:
        ids, n_selected = _sample_curated_ids(final, map_rows // 2, rng)
        found = positions_of_ids(store, ids)
        chosen = np.array(sorted(found.values()), dtype=np.int64)
        selected_xy = (store.take(chosen, dtype=np.float64) - mean) @ components.T if len(chosen) else np.empty((0, 2))
    return Projection(pool_xy=(vectors - mean) @ components.T, selected_xy=selected_xy, n_pool=store.n_rows, n_selected=n_selected,
                      explained_variance=[float(v) for v in ratio], positions=positions)


# -- rows and texts ------------------------------------------------------------------------------


def texts_at(store: Any, pool: Any, builder: Any, positions: Sequence[int]) -> list[str]:
    """The embedded texts of a few store positions, rebuilt from their pool partitions (store shard i = pool partition i)."""
    out = [""] * len(positions)
    for sel, rows in pool_rows_at(store, pool, positions, builder.required_columns):
        for j, text in zip(sel, builder.build(rows)):
            out[j] = clip(text, TEXT_CHARS)
    return out


def _duplicates(store: Any, pool: Any, builder: Any, steps: list[StepInfo], k: int, seed: int, data: ReportData) -> None:
    """Up to ``k`` (removed, kept) pairs from the semdedup steps' removed.arrow, a seeded sample shown by similarity."""
    removed = [s for s in steps if s.removed is not None]
    if not removed:
        data.notes["duplicates"] = "no semdedup step in this run (no removed.arrow)."
        return
    table = pa.concat_tables([read_stream_shard(s.removed) for s in removed], promote_options="permissive")
    data.n_removed = table.num_rows
    missing = [c for c in ("id", "duplicate_of") if c not in table.column_names]
    if missing:
        raise ArtifactError(f"{removed[0].removed} lacks the columns {missing}; it has {table.column_names}.")
    if table.num_rows == 0 or k == 0:
        return
    rng = as_generator(seed, "report")
    take = np.sort(rng.choice(table.num_rows, size=min(k, table.num_rows), replace=False))
    rows = table.take(pa.array(take)).to_pylist()
    rows.sort(key=lambda r: -(r.get("similarity") or 0.0))
    texts: dict[Any, str] = {}
    if store is not None and pool is not None and builder is not None:
        keys = list(dict.fromkeys([r["id"] for r in rows] + [r["duplicate_of"] for r in rows]))
        found = positions_of_ids(store, keys)
        known = [key for key in keys if key in found]
        texts = dict(zip(known, texts_at(store, pool, builder, [found[key] for key in known])))
    else:
        data.notes["duplicates"] = "the pool's texts are unavailable here; only ids are shown."
    for r in rows:
        data.duplicates.append(DuplicatePair(removed_id=r["id"], removed_text=texts.get(r["id"], ""), kept_id=r["duplicate_of"],
                                             kept_text=texts.get(r["duplicate_of"], ""), similarity=r.get("similarity"), cluster=r.get("cluster")))


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, (list, dict)):
        text = repr(value)
        return text if len(text) <= 80 else text[:80] + "…"
    if isinstance(value, str):
        return clip(value, TEXT_CHARS)
    return value


def _sample(final: Any, builder: Any, k: int, seed: int, data: ReportData) -> None:
    """A seeded sample of ``k`` rows of the final output, in rank order, with their text and scalar columns."""
    if final is None:
        data.notes["sample"] = "no selection output."
        return
    data.n_sample_from = final.n_rows
    if final.n_rows == 0 or k == 0:
        return
    _, picks = sample_positions(final, k, as_generator(seed, "report"))
    selection = set(final.manifest.get("selection_columns", []))
    for table in rows_at(final, picks):
        if not data.sample_columns:
            used = set(builder.required_columns) if builder is not None else set()
            keep = [c for c in table.column_names if c not in used and not pa.types.is_nested(table.schema.field(c).type)]
            shown = ["id"] + [c for c in keep if c in selection] + [c for c in keep if c not in selection and c != "id"]
            data.sample_columns = (["text"] if builder is not None else []) + [c for c in shown if c in table.column_names]
        texts = _row_texts(builder, table)
        for j, row in enumerate(table.to_pylist()):
            cells = {c: _cell(row.get(c)) for c in data.sample_columns if c != "text"}
            if builder is not None:
                cells["text"] = texts[j]
            data.sample_rows.append(cells)


def _row_texts(builder: Any, table: pa.Table) -> list[str]:
    """Texts of curated rows rebuilt from their own pool columns; a row without them (a synthetic one) gets a note."""
    if builder is None:
        return [""] * table.num_rows
    if any(c not in table.column_names for c in builder.required_columns):
        return ["(the text's columns are not in the output)"] * table.num_rows
    out = []
    for j in range(table.num_rows):
        row = table.slice(j, 1)
        try:
            out.append(clip(builder.build(row)[0], TEXT_CHARS))
        except ThresherError:
            out.append("(no text: a synthetic row)")
    return out
