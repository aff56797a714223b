"""Gather what the explore page embeds: a bounded set of rows, where each sits on the map, and why it was kept or dropped.

The page is one file, so everything it shows is chosen here and capped by
construction, whatever the size of the run:

* the map: a seeded uniform sample of at most ``map_rows`` pool rows, plus the
  table's rows, projected to 2-D (:mod:`thresher.explore.projection`);
* the table: at most ``table_rows`` rows of the final output (a seeded
  sample, shown in rank order), plus at most ``table_rows // 4`` of SMOTE's
  synthetic rows;
* referenced rows (a removed row's kept twin, a synthetic row's parents, a
  B3 community's other members): at most ``table_rows`` more, id and text only;
* texts cut to ``text_chars`` (rows of the table and referenced rows) or
  ``map_text_chars`` (rows only on the map); numbers rounded.

Every read streams: the pool sample's texts and categories come from the
partitions that hold them, a step's per-row facts from its shards' columns
(kept only for the rows the page embeds), store positions of a few ids from
the store's id column shard by shard. Nothing holds the pool, its vectors or a
whole selection.

The per-row facts are the ones the steps stored themselves: RDS+'s
``task_scores`` and ``nearest_target`` (with ``targets.arrow``), SemDeDup's
``removed.arrow`` (``duplicate_of``, ``similarity``), SMOTE's ``parents`` and
``gap``, B3's ``batch``, ``community`` and ``position``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.exceptions import ArtifactError, ParameterError
from thresher.report.reading import check_int, clip, pool_rows_at, rows_at, sample_positions
from thresher.rng import as_generator
from thresher.stores.arrow_io import read_stream_shard
from thresher.stores.manifest import read_manifest

#: selection columns that are bookkeeping or too large for the page
_SKIP_FACTS = {"rank", "embedding"}
#: a pool column becomes a colour and filter when its name looks like a category and it holds at most this many values
MAX_CATEGORIES = 50
MEMBERS_SHOWN = 8  # other members of a B3 community listed for a row
TARGETS_FILE = "targets.arrow"


def _round(value: Any, digits: int = 4) -> Any:
    """Numbers rounded for the page (compact JSON); non-finite floats become None (JSON has no NaN)."""
    if isinstance(value, (float, np.floating)):
        return round(float(value), digits) if math.isfinite(value) else None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, list):
        return [_round(v, digits) for v in value]
    if isinstance(value, dict):
        return {str(k): _round(v, digits) for k, v in value.items()}
    return value


def _key(value: Any) -> str:
    """An id as the page's key (ids may be ints or strings; JSON object keys are strings)."""
    return str(value)


class _Run:
    """The artefacts a page is made from: the embedding store, the selection steps in order, the final output."""

    def __init__(self, path: Path, records: list[dict[str, Any]] | None = None):
        from thresher.report.gather import ReportData, pool_and_text, read_run, run_manifest

        manifest = run_manifest(path, records)
        kind = manifest["artifact"]
        final_dir = None
        if kind == "curated":
            run = (manifest.get("lineage") or {}).get("run")
            if not run:
                raise ArtifactError(f"{path} holds curated shards made outside a run, so explore cannot find the embedding store "
                                    "to map them; pass the run directory that made them.")
            final_dir, path, manifest, kind = Path(path), Path(run), read_manifest(run), "run"
        self.path = path
        self.data = ReportData(title=f"thresher explore: {Path(path).resolve().name}", path=path, kind=kind)
        if kind == "run":
            self.store, self.final = read_run(path, manifest, self.data)
            if final_dir is not None:
                from thresher.stores.curated import open_curated

                self.final = open_curated(final_dir)
                # only the steps up to the chosen artefact
                keep = []
                for s in self.data.steps:
                    keep.append(s)
                    if s.dir is not None and Path(s.dir).resolve() == final_dir.resolve():
                        break
                self.data.steps = keep
        elif kind == "embeddings":
            from thresher.stores.embedding_store import EmbeddingStore

            self.store, self.final = EmbeddingStore(path, manifest), None
        else:
            raise ArtifactError(f"{path} holds an artefact of kind {kind!r}; explore a run directory, curated shards made by a run, "
                                "or an embedding store.")
        if self.store is None:
            raise ArtifactError(f"The run at {path} has no embedding store to map.")
        self.pool, self.builder = pool_and_text(self.store, self.data)
        self.steps = [s for s in self.data.steps if s.curated is not None]
        self.chain = _chain(self.steps, self.final)


def _chain(steps: list[Any], final: Any) -> set[str]:
    """Names of the selection steps a row passed through to reach the final output (following each manifest's lineage inputs).

    A step on a branch (SMOTE with ``input: rds`` beside B3) is not on it. Without lineage (artefacts made outside
    ``thresher run``), every step is taken to be on it, in order.
    """
    if final is None:
        return set()
    by_dir = {Path(s.dir).resolve(): s for s in steps}
    current = by_dir.get(Path(final.path).resolve())
    if current is None or not (current.curated.manifest.get("lineage") or {}).get("inputs"):
        return {s.name for s in steps}
    names: set[str] = set()
    while current is not None and current.name not in names:
        names.add(current.name)
        lineage = current.curated.manifest.get("lineage") or {}
        parents = [by_dir.get((Path(lineage["run"]) / i["dir"]).resolve()) for i in lineage.get("inputs") or [] if lineage.get("run")]
        current = next((p for p in parents if p is not None), None)
    return names


def gather_explore(
    path: str | Path,
    *,
    map_rows: int = 20_000,
    table_rows: int = 5_000,
    text_chars: int = 500,
    map_text_chars: int = 200,
    method: str = "auto",
    seed: int = 0,
    records: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The explore page's data for the run (or curated output of a run, or embedding store) at ``path``.

    Parameters
    ----------
    map_rows : int, default 20,000
        At most this many pool rows (a seeded uniform sample) on the map.
    table_rows : int, default 5,000
        At most this many rows of the final output embedded in the table
        (a seeded sample, in rank order); the page says how many of how many.
    text_chars, map_text_chars : int
        Texts are cut to these many characters (table rows; rows only on the map).
    method : "auto", "umap" or "pca"
        The 2-D projection (see :func:`thresher.explore.projection.fit_projection`).
    seed : int
        Seeds every sample and the projection.
    records : list of dict, optional
        The run's steps as the run manifest will list them, for a run whose
        manifest is not written yet (``thresher run`` writes its pages first).

    Returns
    -------
    dict
        The JSON-ready payload the page embeds (see :mod:`thresher.explore.page`).
    """
    from thresher.explore.projection import METHODS

    for name, value, low in (("map_rows", map_rows, 2), ("table_rows", table_rows, 0), ("text_chars", text_chars, 1),
                             ("map_text_chars", map_text_chars, 1), ("seed", seed, 0)):
        check_int("explore", name, value, low)
    if method not in METHODS:
        raise ParameterError(f"The 'method' parameter of explore must be one of {list(METHODS)}; got {method!r}.")
    run = _Run(Path(path), records)
    store, final = run.store, run.final
    rng = as_generator(seed, "explore")

    records = _Records()
    # 1. the map's pool sample (store positions known)
    sample = np.sort(rng.choice(store.n_rows, size=min(map_rows, store.n_rows), replace=False)) if store.n_rows else np.empty(0, np.int64)
    from thresher.stores.ids import store_ids_at

    for position, row_id in zip(sample.tolist(), store_ids_at(store, sample).tolist() if len(sample) else []):
        records.add(row_id, position=position, on_map=True, limit=map_text_chars)["sampled"] = True
    # 2. the table: a sample of the final output's pool rows, in rank order, and of SMOTE's synthetic rows (with their vectors)
    n_final = final.n_rows if final is not None else 0
    n_final_pool, n_synthetic = 0, 0
    if final is not None:
        n_final_pool, picked = _sample_rows(final, table_rows, rng, synthetic=False)
        for row in picked:
            r = records.add(row["id"], position=None, on_map=True, limit=text_chars)
            r["in_table"], r["rank"] = True, row["rank"]
    synthetic_vectors: dict[str, np.ndarray] = {}
    smote_steps = [s for s in run.steps if _step_kind(s) == "smote"]
    category_columns = _category_columns(run)
    for step in smote_steps:
        n, picked = _sample_rows(step.curated, (table_rows // 4) // len(smote_steps), rng, synthetic=True, columns=tuple(category_columns))
        n_synthetic += n
        for row in picked:
            r = records.add(row["id"], position=None, on_map=True, limit=text_chars, synthetic=True)
            r["in_table"], r["rank"], r["made_by"], r["categories"] = True, None, step.name, row["values"]
            if row["embedding"] is not None:
                synthetic_vectors[_key(row["id"])] = row["embedding"]
    # 3. per-step facts and each row's outcome
    facts = _step_facts(run, records)
    # 4. referenced rows (twins, parents, community members), bounded
    refs = _references(records, facts, limit=table_rows)
    # 5. store positions, texts and categories of everything embedded
    _fill_pool_rows(run, records, refs, category_columns, text_chars)
    # 6. the map
    projection = _project(run, records, synthetic_vectors, method=method, seed=seed, fit_rows=map_rows)
    targets = _target_texts(run, records, text_chars)
    return _payload(run, records, refs, facts, projection, targets, category_columns,
                    counts={"n_pool": store.n_rows, "n_map_sample": int(len(sample)), "n_final": n_final, "n_final_pool": n_final_pool,
                            "n_synthetic": n_synthetic, "table_rows": table_rows, "map_rows": map_rows,
                            "text_chars": text_chars, "map_text_chars": map_text_chars, "seed": seed})


class _Records:
    """The rows the page embeds, by id, in insertion order."""

    def __init__(self) -> None:
        self.by_key: dict[str, dict[str, Any]] = {}

    def add(self, row_id: Any, *, position: int | None, on_map: bool, limit: int, synthetic: bool = False) -> dict[str, Any]:
        key = _key(row_id)
        record = self.by_key.get(key)
        if record is None:
            record = {"id": row_id, "position": position, "on_map": on_map, "limit": limit, "synthetic": synthetic, "in_table": False,
                      "rank": None, "text": "", "categories": {}}
            self.by_key[key] = record
        else:
            record["limit"] = max(record["limit"], limit)
            if position is not None:
                record["position"] = position
        return record

    def __iter__(self):
        return iter(self.by_key.values())

    def __len__(self) -> int:
        return len(self.by_key)


def _sample_rows(curated: Any, k: int, rng: np.random.Generator, *, synthetic: bool,
                 columns: tuple[str, ...] = ()) -> tuple[int, list[dict[str, Any]]]:
    """A seeded sample of at most ``k`` of the pool rows (or of the synthetic rows) of a curated output, in rank order.

    Returns (how many such rows the output has, the sampled rows: id, rank,
    the embedding of a synthetic row, and the values of ``columns``).
    """
    n, picks = sample_positions(curated, k, rng, rows="synthetic" if synthetic else "pool")
    names = ("id", "rank", *(("embedding",) if synthetic else ()), *columns)
    out: list[dict[str, Any]] = []
    for table in rows_at(curated, picks, names):
        for row in table.to_pylist():
            vector = row.get("embedding")
            out.append({"id": row["id"], "rank": row.get("rank"), "embedding": None if vector is None else np.asarray(vector, dtype=np.float64),
                        "values": {c: None if row.get(c) is None else str(row[c]) for c in columns if c in row}})
    return n, out


def _step_kind(step: Any) -> str:
    selector = step.selector or ""
    return {"rds_plus": "rds", "semdedup": "semdedup", "smote": "smote", "b3": "batches"}.get(selector, step.step)


def _step_facts(run: _Run, records: _Records) -> list[dict[str, Any]]:
    """Per selection step: its kind, its fact columns, and for each embedded row present in its output those columns' values.

    Also sets each record's ``outcome`` (the step that dropped it, or kept/selected/synthetic) and ``task``.
    """
    wanted = set(records.by_key)
    out = []
    for step in run.steps:
        kind = _step_kind(step)
        columns = [c for c in step.curated.manifest.get("selection_columns", []) if c not in _SKIP_FACTS]
        present: dict[str, dict[str, Any]] = {}
        for f in step.curated.files:
            table = read_stream_shard(f)
            names = ["id"] + [c for c in columns if c in table.column_names]
            ids = table.column("id").combine_chunks()
            mask = pc.is_in(ids.cast(pa.string()), value_set=pa.array(sorted(wanted), pa.string()))
            if not pc.any(mask).as_py():
                continue
            for row in table.select(names).filter(mask).to_pylist():
                key = _key(row.pop("id"))
                present[key] = _round(row)
        removed: dict[str, dict[str, Any]] = {}
        if step.removed is not None:
            table = read_stream_shard(step.removed)
            mask = pc.is_in(table.column("id").cast(pa.string()), value_set=pa.array(sorted(wanted), pa.string()))
            for row in table.filter(mask).to_pylist():
                key = _key(row.pop("id"))
                removed[key] = _round(row)
        info = {"name": step.name, "step": step.step, "kind": kind, "selector": step.selector, "rows_in": step.rows_in,
                "rows_out": step.rows_out, "columns": columns, "present": present, "removed": removed,
                "params": _round(step.curated.manifest.get("params") or {}), "curated": step.curated}
        if kind == "rds":
            info["tasks"] = [str(t) for t in (info["params"].get("targets") or info["params"].get("tasks") or [])]
        if kind == "batches":
            info["members"] = {}
        out.append(info)
    for info in out:  # a synthetic row has no text of its own: say what it is
        if info["kind"] == "smote":
            for key, facts in info["present"].items():
                record = records.by_key.get(key)
                if record is not None and record["synthetic"] and facts.get("parents"):
                    first, second = facts["parents"]
                    record["text"] = f"(synthetic row made by {info['name']}: {first} + {facts.get('gap')} x ({second} - {first}) in embedding space)"
    chain = [info for info in out if info["name"] in run.chain]
    for record in records:
        key = _key(record["id"])
        record["outcome"] = f"synthetic ({record['made_by']})" if record["synthetic"] else None
        record["task"] = None
        for info in out:
            if info["kind"] == "rds" and key in info["present"]:
                record["task"] = info["present"][key].get("task")
        if record["synthetic"]:
            continue
        for info in chain:  # the steps that lead to the final output, in order: the first one without the row dropped it
            if key not in info["present"]:
                record["outcome"] = f"removed as duplicate ({info['name']})" if key in info["removed"] else f"dropped by {info['name']}"
                break
        if record["outcome"] is None:
            if not chain:
                record["outcome"] = "pool"
            elif record["task"] is not None and any(info["kind"] == "rds" for info in chain):
                record["outcome"] = f"selected for {record['task']}"
            else:
                record["outcome"] = "kept"
    return out


def _references(records: _Records, facts: list[dict[str, Any]], *, limit: int) -> dict[str, dict[str, Any]]:
    """Rows the embedded rows point to (kept twins, SMOTE parents, B3 community members): at most ``limit`` of them, ids and texts."""
    refs: dict[str, dict[str, Any]] = {}

    def want(row_id: Any) -> None:
        key = _key(row_id)
        if row_id is None or key in records.by_key or key in refs or len(refs) >= limit:
            return
        refs[key] = {"id": row_id, "position": None, "text": ""}

    for info in facts:
        if info["kind"] == "semdedup":
            for row in info["removed"].values():
                want(row.get("duplicate_of"))
        elif info["kind"] == "smote":
            for row in info["present"].values():
                for parent in row.get("parents") or []:
                    want(parent)
        elif info["kind"] == "batches":
            _community_members(info, records)
            for members in info["members"].values():
                for member in members:
                    want(member)
    return refs


def _community_members(info: dict[str, Any], records: _Records) -> None:
    """For each community of an embedded row in a B3 output, up to ``MEMBERS_SHOWN + 1`` member ids (one pass over its shards)."""
    communities = {row.get("community") for row in info["present"].values() if row.get("community") is not None}
    members: dict[int, list[Any]] = {int(c): [] for c in communities}
    info["members"] = members
    if not members:
        return
    for f in info["curated"].files:
        table = read_stream_shard(f).select(["id", "community"])
        column = table.column("community").combine_chunks()
        mask = pc.is_in(column, value_set=pa.array(sorted(members), column.type))
        for row in table.filter(mask).to_pylist():
            group = members[int(row["community"])]
            if len(group) <= MEMBERS_SHOWN:
                group.append(row["id"])


def _category_columns(run: _Run) -> list[str]:
    """Pool columns to colour and filter by: named like source/label/task/category/class, holding strings, ints or bools."""
    from thresher.report.gather import COMPOSITION_NAME, is_category_type

    pool = run.pool
    if pool is None:
        return []
    names = [n for n in pool.column_names if n != "id" and COMPOSITION_NAME.search(n) and is_category_type(pool.schema.field(n).type)]
    for step in run.steps:  # SMOTE's label column, whatever its name
        label = (step.curated.manifest.get("params") or {}).get("labels")
        if isinstance(label, str) and label in pool.column_names and label not in names:
            names.append(label)
    return names


def _fill_pool_rows(run: _Run, records: _Records, refs: dict[str, dict[str, Any]], columns: list[str], text_chars: int) -> None:
    """Store positions, texts and category values of the embedded pool rows and references, partition by partition."""
    from thresher.stores.ids import find_positions

    store, pool, builder = run.store, run.pool, run.builder
    unknown = [r["id"] for r in records if r["position"] is None and not r["synthetic"]] + [r["id"] for r in refs.values()]
    found = find_positions(store, unknown) if unknown else {}
    rows = [r for r in records if not r["synthetic"]] + list(refs.values())
    for r in rows:
        if r["position"] is None:
            r["position"] = found.get(r["id"])
    located = [r for r in rows if r["position"] is not None]
    if pool is None or not located:
        return
    needed = (builder.required_columns if builder is not None else []) + columns
    for sel, table in pool_rows_at(store, pool, [r["position"] for r in located], needed):
        texts = builder.build(table) if builder is not None else [""] * table.num_rows
        values = {c: table.column(c).to_pylist() for c in columns}
        for j, row_index in enumerate(sel):
            r = located[row_index]
            r["text"] = clip(texts[j], r.get("limit", text_chars))
            if "categories" in r:
                r["categories"] = {c: (None if values[c][j] is None else str(values[c][j])) for c in columns}


def _project(run: _Run, records: _Records, synthetic_vectors: dict[str, np.ndarray], *, method: str, seed: int, fit_rows: int,
             block_rows: int = 4096) -> dict[str, Any]:
    """2-D coordinates of every embedded row with a vector: fitted on the pool sample, applied to all rows block by block.

    Memory: the sample's vectors (at most ``fit_rows`` x dim, float32) and one block of ``block_rows``.
    """
    from thresher.explore.projection import fit_projection

    store = run.store
    located = sorted((r for r in records if r["position"] is not None), key=lambda r: r["position"])
    synthetic = [r for r in records if r["synthetic"] and synthetic_vectors.get(_key(r["id"])) is not None]
    fitting = [r["position"] for r in located if r.get("sampled")] or [r["position"] for r in located]  # the uniform pool sample
    fitting = fitting[:fit_rows]
    if len(fitting) < 2:
        return {"method": "none", "note": "fewer than two rows to map."}
    transform, info = fit_projection(store.take(np.array(fitting, dtype=np.int64)), method=method, seed=seed)
    xy = np.empty((len(located) + len(synthetic), 2))
    for lo in range(0, len(located), block_rows):
        block = located[lo : lo + block_rows]
        xy[lo : lo + len(block)] = transform(store.take(np.array([r["position"] for r in block], dtype=np.int64)))
    if synthetic:
        xy[len(located) :] = transform(np.stack([synthetic_vectors[_key(r["id"])] for r in synthetic]))
    if not len(xy):
        return info
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    xy = (xy - lo) / np.where(hi > lo, hi - lo, 1.0)
    for r, (x, y) in zip(located + synthetic, xy.tolist()):
        r["xy"] = (round(x, 4), round(y, 4))
    return info


def _target_texts(run: _Run, records: _Records, text_chars: int) -> dict[str, dict[str, str]]:
    """Texts of the target examples that embedded rows are closest to (from RDS+'s ``targets.arrow``)."""
    from thresher.stores.manifest import artifact_file

    out: dict[str, dict[str, str]] = {}
    for step in run.steps:
        if _step_kind(step) != "rds" or not any(a.get("file") == TARGETS_FILE for a in step.curated.manifest.get("attachments", [])):
            continue
        file = artifact_file(step.dir, TARGETS_FILE, key="attachments")
        if not file.is_file():
            continue
        table = read_stream_shard(file)
        for row in table.to_pylist():
            if row.get("text") is not None:
                out.setdefault(str(row["task"]), {})[str(row["position"])] = clip(row["text"], text_chars)
    return out


def _payload(run: _Run, records: _Records, refs: dict[str, dict[str, Any]], facts: list[dict[str, Any]], projection: dict[str, Any],
             targets: dict[str, dict[str, str]], category_columns: list[str], counts: dict[str, Any]) -> dict[str, Any]:
    """The page's JSON: columnar rows (codes for categories), per-step facts, references and counts."""
    rows = list(records)
    codes: dict[str, dict[str, int]] = {"outcome": {}, "task": {}, **{c: {} for c in category_columns}}

    def code(field: str, value: Any) -> int | None:
        if value is None:
            return None
        table = codes[field]
        return table.setdefault(str(value), len(table))

    columns = {
        "id": [r["id"] for r in rows],
        "text": [r["text"] for r in rows],
        "x": [r.get("xy", (None, None))[0] for r in rows],
        "y": [r.get("xy", (None, None))[1] for r in rows],
        "rank": [r["rank"] for r in rows],
        "in_table": [1 if r["in_table"] else 0 for r in rows],
        "synthetic": [1 if r["synthetic"] else 0 for r in rows],
        "outcome": [code("outcome", r["outcome"]) for r in rows],
        "task": [code("task", r["task"]) for r in rows],
        "categories": {c: [code(c, r["categories"].get(c)) for r in rows] for c in category_columns},
    }
    steps = []
    for info in facts:
        facts_of = {}
        for i, r in enumerate(rows):
            key = _key(r["id"])
            if key in info["present"]:
                facts_of[str(i)] = info["present"][key]
            elif key in info["removed"]:
                facts_of[str(i)] = {"removed": True, **info["removed"][key]}
        steps.append({"name": info["name"], "step": info["step"], "kind": info["kind"], "rows_in": info["rows_in"], "rows_out": info["rows_out"],
                      "columns": info["columns"], "tasks": info.get("tasks"), "facts": facts_of,
                      "members": {str(k): v for k, v in info.get("members", {}).items()}})
    return {
        "version": 1,
        "title": run.data.title,
        "path": str(run.path),
        "kind": run.data.kind,
        "projection": projection,
        "counts": {**counts, "n_rows": len(rows), "n_table": sum(1 for r in rows if r["in_table"] and not r["synthetic"]),
                   "n_synthetic_shown": sum(1 for r in rows if r["synthetic"]), "n_refs": len(refs)},
        "dictionaries": {field: list(table) for field, table in codes.items()},
        "category_columns": category_columns,
        "rows": columns,
        "steps": steps,
        "refs": {k: v["text"] for k, v in refs.items()},
        "targets": targets,
        "notes": dict(run.data.notes),
    }
