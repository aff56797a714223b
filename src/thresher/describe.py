"""Human-readable descriptions of artefacts, for ``thresher inspect``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from thresher.stores.manifest import read_manifest, verify_shards


def describe_artifact(path: Path, *, n_rows: int = 5, as_json: bool = False, verify: bool = False) -> str:
    """Describe the artefact at ``path`` (a directory with a manifest, or one of its shard files)."""
    path = Path(path)
    if path.is_file():
        return _describe_shard_file(path, n_rows)
    manifest = read_manifest(path)
    verified_steps = None
    if verify:
        verify_shards(path, manifest)
        if manifest.get("artifact") == "run":
            verified_steps = verify_run(path, manifest)
    if as_json:
        return json.dumps(manifest, indent=2, sort_keys=True)
    kind = manifest["artifact"]
    lines = [f"{kind} artefact at {path}", f"  fingerprint {manifest['fingerprint']}  created {manifest.get('created_at')}"]
    if verified_steps is not None:
        lines.append(f"  verified: {verified_steps[0]} step artefacts, {verified_steps[1]} file checksums match")
    elif verify:
        lines.append(f"  verified: {len(manifest.get('shards', []))} shard checksums match")
    lines += {"embeddings": _embeddings, "index": _index, "curated": _curated, "run": _run}.get(kind, lambda p, m, n: [])(path, manifest, n_rows)
    lines += _lineage_lines(path, manifest)
    return "\n".join(lines)


def verify_run(path: Path, manifest: dict[str, Any]) -> tuple[int, int]:
    """Verify every step artefact a run manifest lists: present, finished, made by that step, every file intact.

    Returns (steps checked, files checked). Raises ArtifactError naming the first step directory that is
    missing, unfinished, holds another step's output, or has a file whose checksum differs.
    """
    from thresher.exceptions import ArtifactError
    from thresher.stores.manifest import listed_files

    path = Path(path)
    steps = manifest.get("steps")
    if not isinstance(steps, list) or not all(isinstance(s, dict) and isinstance(s.get("dir"), str) for s in steps):
        raise ArtifactError(f"{path / 'manifest.json'} has a malformed 'steps' list.")
    root = path.resolve()
    # a run over an existing store reads it in place: its one step outside the run directory, recorded as the run's store
    store = (manifest.get("embedding_store") or {}).get("path")
    n_files = 0
    for step in steps:
        name, directory = step.get("name", "?"), path / step["dir"]
        if not directory.resolve().is_relative_to(root) and not (store is not None and step["dir"] == store):
            raise ArtifactError(f"The run at {path} lists step {name!r} in {step['dir']!r}, outside the run directory.")
        if not directory.is_dir():
            raise ArtifactError(f"The run at {path} lists step {name!r} in {directory}, which is missing; run the spec again to rebuild it.")
        try:
            step_manifest = read_manifest(directory)
        except ArtifactError as exc:
            raise ArtifactError(f"Step {name!r} of the run at {path}: {exc}") from None
        made_by = (step_manifest.get("lineage") or {}).get("step_fingerprint")
        if made_by is not None and step.get("fingerprint") is not None and made_by != step["fingerprint"]:
            raise ArtifactError(
                f"Step {name!r} of the run at {path}: {directory} holds the output of step fingerprint {made_by}, not the "
                f"run's {step['fingerprint']}; run the spec again to rebuild it."
            )
        verify_shards(directory, step_manifest)
        n_files += len(listed_files(directory, step_manifest))
    return len(steps), n_files


def lineage_chain(path: Path, manifest: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The chain of artefacts that made ``path``, newest first, back to the pool's files.

    Follows the ``lineage`` a pipeline run records in each manifest (the step,
    its fingerprint and its inputs' directories); for an index made outside a
    run, its embedding store. Each link: step, kind, path, fingerprint, rows.
    """
    path = Path(path)
    manifest = manifest if manifest is not None else read_manifest(path)
    chain: list[dict[str, Any]] = []
    seen: set[str] = set()
    todo = [(path, manifest)]
    while todo:
        here, m = todo.pop(0)
        if str(here) in seen:
            continue
        seen.add(str(here))
        lineage = m.get("lineage") or {}
        chain.append({"step": lineage.get("step", m["artifact"]), "kind": m["artifact"], "path": str(here),
                      "fingerprint": m.get("fingerprint"), "rows": m.get("n_rows")})
        parents = []
        if lineage.get("inputs"):
            run = Path(lineage["run"])
            parents = [run / i["dir"] for i in lineage["inputs"]]
        elif m["artifact"] == "index" and m.get("embedding_store", {}).get("path"):
            parents = [Path(m["embedding_store"]["path"])]
        elif m["artifact"] == "curated" and lineage.get("run"):
            parents = [Path(lineage["run"]) / "embeddings"]
        for parent in parents:
            try:
                todo.append((parent, read_manifest(parent)))
            except Exception as exc:  # a moved or deleted upstream artefact: say so, keep the rest
                chain.append({"step": "?", "kind": "missing", "path": str(parent), "fingerprint": None, "rows": None, "error": str(exc)})
        if m["artifact"] == "embeddings":
            sources = sorted({str(p.get("source")) for p in (m.get("pool") or {}).get("partitions", [])})
            chain.append({"step": "pool", "kind": "pool", "path": json.dumps(sources)[:300] if sources else None,
                          "fingerprint": (m.get("pool") or {}).get("fingerprint"), "rows": m.get("n_rows")})
    return chain


def _lineage_lines(path: Path, manifest: dict[str, Any]) -> list[str]:
    if manifest["artifact"] == "run":
        return []
    chain = lineage_chain(path, manifest)
    if len(chain) < 2:
        return []
    lines = ["  lineage (newest first):"]
    for link in chain:
        fp = (link["fingerprint"] or "")[:16]
        rows = f"{link['rows']:,} rows" if isinstance(link["rows"], int) else ""
        lines.append(f"    {link['step']:<12} {link['kind']:<10} {rows:>14}  {fp}  {link['path']}" + (f"  ({link['error']})" if link.get("error") else ""))
    return lines


def _run(path: Path, m: dict[str, Any], n_rows: int) -> list[str]:
    spec = m.get("spec", {})
    lines = [f"  spec {spec.get('name') or ''}  output {path / m.get('output', '')}  report {m.get('report')}  events {m.get('events')}", "  steps:"]
    for s in m.get("steps", []):
        took = "cached" if s["cached"] else f"{s['seconds']:.1f} s"
        lines.append(f"    {s['name']:<12} {s['step']:<9} {took:>9}  {s['rows_in']:>10,} → {s['rows_out']:>10,} rows  {s['dir']}")
    return lines


def _embeddings(path: Path, m: dict[str, Any], n_rows: int) -> list[str]:
    from thresher.stores.embedding_store import EmbeddingStore

    store = EmbeddingStore(path, m)
    lines = [
        f"  rows {store.n_rows} in {store.n_shards} shards; dim {store.dim}, {store.dtype}, {'L2-normalised' if store.normalized else 'not normalised'}",
        f"  model {store.model}  pooling {store.pooling or 'model default'}  layer {store.layer}",
    ]
    source = m.get("source") or {}
    if source.get("kind") == "import":  # `thresher embeddings import`: vectors made elsewhere, no pool of its own
        files = [r.get("source") for r in source.get("vector_files", []) + source.get("id_files", [])]
        lines.append(f"  imported from {json.dumps(files)[:300]} (source dtypes {', '.join(source.get('source_dtypes', []))})")
    else:
        lines += [
            f"  pool {json.dumps((m.get('pool') or {}).get('sources', m.get('pool')))[:300]}",
            f"  text {json.dumps(m.get('text'))[:200]}",
            f"  truncated texts {m.get('n_truncated', 0)}  tokens {m.get('n_tokens', 0)}  resumed partitions {m.get('n_resumed_partitions', 0)}",
        ]
    if store.n_rows and n_rows:
        ids, vectors = store.shard_ids(0)[:n_rows], np.asarray(store.shard_embeddings(0)[:n_rows], dtype=np.float32)
        lines.append("  first rows:")
        for key, v in zip(ids, vectors):
            head = ", ".join(f"{x:+.4f}" for x in v[:4])
            lines.append(f"    id={key!s:<40} [{head}, …] norm {np.linalg.norm(v):.4f}")
    return lines


def _index(path: Path, m: dict[str, Any], n_rows: int) -> list[str]:
    return [
        f"  {m.get('factory')} over {m.get('n_rows')} vectors of dim {m.get('dim')}, metric {m.get('metric')}",
        f"  recall@10 vs exact search {m.get('recall_at_10')}  search params {json.dumps(m.get('search_params', {}))}",
        f"  built from {m.get('embedding_store', {}).get('path')} (fingerprint {m.get('embedding_store', {}).get('fingerprint')}) in {m.get('build_seconds')} s",
    ]


def _curated(path: Path, m: dict[str, Any], n_rows: int) -> list[str]:
    from thresher.stores.curated import CuratedShards

    shards = CuratedShards(path, m)
    lines = [
        f"  selector {m.get('selector')}  seed {m.get('seed')}  params {json.dumps(m.get('params'))[:300]}",
        f"  selected {m.get('n_selected')} of {m.get('n_pool')} pool rows, in {len(shards.shards)} shards",
        f"  selection columns {m.get('selection_columns')}",
    ]
    if m.get("summary"):
        lines.append(f"  summary {json.dumps(m['summary'])[:600]}")
    for attachment in m.get("attachments", []):
        lines.append(f"  attachment {attachment['file']}: {attachment['rows']} rows ({attachment['checksum']})")
    if shards.n_rows and n_rows:
        table = next(iter(shards.tables())).slice(0, n_rows)
        lines.append("  first rows:")
        for row in table.to_pylist():
            lines.append("    " + _short_row(row))
    if n_rows:
        lines += _row_facts(path, m, shards, n_rows)
    return lines


def _row_facts(path: Path, m: dict[str, Any], shards: Any, n_rows: int) -> list[str]:
    """Why rows were kept or dropped, in the steps' own words: the per-row facts each selector stored (first ``n_rows``)."""
    from thresher.stores.arrow_io import read_stream_shard
    from thresher.stores.manifest import artifact_file

    selector, columns = m.get("selector"), set(m.get("selection_columns") or [])
    attached = {a["file"] for a in m.get("attachments", [])}
    lines: list[str] = []
    first = next(iter(shards.tables())).slice(0, n_rows).to_pylist() if shards.n_rows else []
    if selector == "rds_plus" and "nearest_target" in columns:
        tasks = [str(t) for t in (m.get("params") or {}).get("targets") or []]
        texts: dict[tuple[str, int], str] = {}
        if "targets.arrow" in attached:
            for r in read_stream_shard(artifact_file(path, "targets.arrow", key="attachments")).to_pylist():
                texts[(r["task"], r["position"])] = r["text"] or ""
        lines.append("  per-row facts (RDS+: score per task, and the target example each row is closest to; targets.arrow holds them):")
        for row in first:
            parts = [f"picked by {row.get('task')}"]
            for t, task in enumerate(tasks):
                k = row["nearest_target"][t]
                quote = _quote(texts.get((task, k), ""))
                parts.append(f"{task} {row['task_scores'][t]:.4f}, closest {task} example #{k}{': ' + quote if quote else ''}")
            lines.append(f"    id={row['id']!s}: " + "; ".join(parts))
    elif selector == "semdedup" and "removed.arrow" in attached:
        removed = read_stream_shard(artifact_file(path, "removed.arrow", key="attachments")).slice(0, n_rows).to_pylist()
        lines.append("  per-row facts (SemDeDup: each removed row, the kept row it duplicates and their cosine; removed.arrow holds them):")
        lines += [f"    {r['id']!s} duplicates {r['duplicate_of']!s} (cosine {r['similarity']:.4f}, cluster {r['cluster']})" for r in removed]
    elif selector == "smote" and "parents" in columns:
        last = read_stream_shard(shards.files[-1]) if shards.files else None
        synthetic = [r for r in (last.select(["id", "parents", "gap"]).to_pylist() if last is not None else []) if r["parents"]][:n_rows]
        lines.append("  per-row facts (SMOTE: each synthetic row's parents, base then neighbour, and the gap along the line between them):")
        lines += [f"    {r['id']!s} = {r['parents'][0]!s} + {r['gap']:.4f} x ({r['parents'][1]!s} - {r['parents'][0]!s})" for r in synthetic]
    elif selector == "b3" and "community" in columns:
        lines.append("  per-row facts (B3: batch, community, position in the batch):")
        lines += [f"    id={row['id']!s}: batch {row.get('batch')}, community {row.get('community')}, position {row.get('position')}" for row in first]
    return lines


def _quote(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return json.dumps(text if len(text) <= limit else text[:limit] + "…", ensure_ascii=False)


def _describe_shard_file(path: Path, n_rows: int) -> str:
    from thresher.stores.arrow_io import read_stream_shard

    table = read_stream_shard(path)
    lines = [f"Arrow shard {path}: {table.num_rows} rows", f"  schema {table.schema.to_string(show_schema_metadata=False)}".replace("\n", "; ")]
    for row in table.slice(0, n_rows).to_pylist():
        lines.append("    " + _short_row(row))
    return "\n".join(lines)


def _short_row(row: dict[str, Any]) -> str:
    parts = []
    for key, value in row.items():
        text = json.dumps(value, ensure_ascii=False, default=str)
        parts.append(f"{key}={text[:80] + '…' if len(text) > 80 else text}")
    return "  ".join(parts)
