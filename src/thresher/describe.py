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
    if verify:
        verify_shards(path, manifest)
    if as_json:
        return json.dumps(manifest, indent=2, sort_keys=True)
    kind = manifest["artifact"]
    lines = [f"{kind} artefact at {path}", f"  fingerprint {manifest['fingerprint']}  created {manifest.get('created_at')}"]
    if verify:
        lines.append(f"  verified: {len(manifest.get('shards', []))} shard checksums match")
    lines += {"embeddings": _embeddings, "index": _index, "curated": _curated}.get(kind, lambda p, m, n: [])(path, manifest, n_rows)
    return "\n".join(lines)


def _embeddings(path: Path, m: dict[str, Any], n_rows: int) -> list[str]:
    from thresher.stores.embedding_store import EmbeddingStore

    store = EmbeddingStore(path, m)
    lines = [
        f"  rows {store.n_rows} in {store.n_shards} shards; dim {store.dim}, {store.dtype}, {'L2-normalised' if store.normalized else 'not normalised'}",
        f"  model {store.model}  pooling {store.pooling or 'model default'}  layer {store.layer}",
        f"  pool {json.dumps(m.get('pool', {}).get('sources', m.get('pool')))[:300]}",
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
    if shards.n_rows and n_rows:
        table = next(iter(shards.tables())).slice(0, n_rows)
        lines.append("  first rows:")
        for row in table.to_pylist():
            lines.append("    " + _short_row(row))
    return lines


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
