"""`thresher run` over an existing embedding store (``embedding: {store: DIR}`` / ``--embeddings DIR``), read in place."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml
from click.testing import CliRunner

from thresher.cli import main
from thresher.fingerprint import fingerprint_of
from thresher.jobs.executor import Executor
from thresher.pipeline.runner import run_pipeline
from thresher.stores.curated import open_curated
from thresher.stores.embedding_store import finalize_embedding_store, open_embedding_store, write_embedding_shard
from thresher.stores.manifest import read_manifest
from thresher.stores.pool import open_pool

N_POOL = 200
QUIET = {"progress": False, "echo": lambda *_: None}


@pytest.fixture(scope="module")
def chat_pool(tmp_path_factory) -> Path:
    """200 rows of the bundled demo pool (real chat text; source and label columns), two kinds of conversation."""
    from thresher.pipeline.spec import bundled_path

    path = tmp_path_factory.mktemp("pool") / "pool.jsonl"
    with gzip.open(bundled_path("demo_pool.jsonl.gz"), "rt", encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)
    rows = [line for line in lines if '"chitchat/opening"' in line][:150] + [line for line in lines if '"chitchat/continuation"' in line][:50]
    assert len(rows) == N_POOL
    path.write_text("".join(rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, chat_pool, minilm_path) -> Path:
    """The pool embedded by `thresher embed` (in this process), with the settings the spec below gives its own embedding."""
    store = tmp_path_factory.mktemp("store") / "emb"
    result = CliRunner().invoke(main, ["embed", "--pool", str(chat_pool), "--id-column", "id", "--messages-column", "messages",
                                       "--model", minilm_path, "--max-length", "64", "--partition-rows", "80", "--out", str(store),
                                       "--local", "--quiet"])
    assert result.exit_code == 0, result.output
    return store


def _spec(pool: Path, embedding: dict) -> dict:
    return {
        "pool": {"path": str(pool), "id_column": "id", "messages_column": "messages", "partition_rows": 80},
        "embedding": embedding,
        "index": {"type": "flat"},
        "steps": [
            {"step": "semdedup", "n_clusters": 4, "eps": 0.1},
            {"step": "rds", "budget": 64, "targets": "bundled:demo_targets.jsonl", "target_task_column": "task",
             "group_column": "source", "group_quotas": {"chitchat/continuation": 10}},
            {"step": "smote", "name": "balanced", "input": "rds", "labels": "label", "k_neighbors": 2},
            {"step": "batches", "input": "rds", "batch_size": 16, "community_size": 4, "rank_window": [1, 9]},
        ],
        "report": {"html": False},
    }


def _write(path: Path, spec: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def _tree(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_run_over_a_store_made_by_thresher_embed_selects_exactly_what_the_embedding_run_selects(tmp_path, chat_pool, embedded, minilm_path,
                                                                                                    dask_client):
    own = _write(tmp_path / "own.yaml", _spec(chat_pool, {"model": minilm_path, "max_length": 64}))
    over = _write(tmp_path / "over.yaml", _spec(chat_pool, {"store": str(embedded)}))
    store_files = _tree(embedded)
    a = run_pipeline(own, out=tmp_path / "a", client=dask_client, **QUIET)
    b = run_pipeline(over, out=tmp_path / "b", client=dask_client, **QUIET)

    # the store is the one the embedding run would make: same fingerprint, so every step has the same identity
    store = open_embedding_store(embedded)
    assert a.steps[0].fingerprint == store.fingerprint == b.steps[0].fingerprint
    assert [s.fingerprint for s in a.steps] == [s.fingerprint for s in b.steps]
    assert [(s.name, s.step, s.cached) for s in b.steps[:2]] == [("embed", "store", True), ("index", "index", False)]
    assert b.steps[0].dir == str(embedded) and b.steps[0].rows_out == N_POOL
    # ... and every step selects exactly the same rows, with the same pool columns and selection columns
    for ra, rb in zip(a.steps[2:], b.steps[2:]):
        ta, tb = open_curated(tmp_path / "a" / ra.dir).to_table(), open_curated(tmp_path / "b" / rb.dir).to_table()
        assert ta.column("id").to_pylist() == tb.column("id").to_pylist() and ta.num_rows > 0, ra.name
        assert ta.equals(tb), ra.name
        assert (ra.rows_in, ra.rows_out) == (rb.rows_in, rb.rows_out)

    # used in place: nothing copied, nothing written into it, the run manifest names it
    assert not (tmp_path / "b" / "embeddings").exists() and (tmp_path / "a" / "embeddings").is_dir()
    assert _tree(embedded) == store_files
    run = read_manifest(tmp_path / "b", "run")
    assert run["embedding_store"]["path"] == str(embedded) and run["embedding_store"]["fingerprint"] == store.fingerprint
    assert run["spec"]["embedding"] == {"store": str(embedded)} and "embedding_store" not in read_manifest(tmp_path / "a", "run")
    lineage = read_manifest(tmp_path / "b" / b.steps[2].dir)["lineage"]
    assert lineage["inputs"] == [{"step": "embed", "dir": str(embedded), "fingerprint": store.fingerprint}]
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "b"), "--verify"])
    assert result.exit_code == 0 and "verified: 6 step artefacts" in result.output, result.output

    again = run_pipeline(over, out=tmp_path / "b", client=dask_client, **QUIET)
    assert all(s.cached for s in again.steps)


def test_embeddings_option_overrides_the_spec_and_the_plan_shows_the_existing_store(tmp_path, chat_pool, embedded, minilm_path):
    spec = _write(tmp_path / "spec.yaml", _spec(chat_pool, {"model": minilm_path, "max_length": 64, "batch_size": 8}))
    result = CliRunner().invoke(main, ["run", str(spec), "--out", str(tmp_path / "run"), "--embeddings", str(embedded), "--dry-run"])
    assert result.exit_code == 0, result.output
    embed_row = next(line for line in result.output.splitlines() if line.startswith("embed "))
    assert embed_row.split()[:3] == ["embed", "store", "existing"] and "existing store" in embed_row and embed_row.endswith(str(embedded))
    assert f"{N_POOL:,} rows × 384" in embed_row
    assert "5 of 6 steps to run" in result.output and not (tmp_path / "run").exists()
    # without the option, the same spec embeds the pool itself
    result = CliRunner().invoke(main, ["run", str(spec), "--out", str(tmp_path / "run"), "--dry-run"])
    embed_row = next(line for line in result.output.splitlines() if line.startswith("embed "))
    assert embed_row.split()[:3] == ["embed", "embed", "run"] and "6 of 6 steps to run" in result.output


def test_a_pool_whose_ids_differ_from_the_store_is_refused_naming_the_ids(tmp_path, chat_pool, embedded):
    rows = [json.loads(line) for line in chat_pool.read_text(encoding="utf-8").splitlines()]
    missing = rows[17]["id"]
    changed = rows[:17] + rows[18:] + [{**rows[17], "id": "not-embedded-0"}]
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in changed), encoding="utf-8")
    spec = _write(tmp_path / "spec.yaml", _spec(pool, {"store": str(embedded)}))
    for extra in ([], ["--dry-run"]):
        result = CliRunner().invoke(main, ["run", str(spec), "--out", str(tmp_path / "run"), *extra])
        assert result.exit_code == 2, result.output
        assert f"the pool has {N_POOL} rows, the store {N_POOL}" in result.output
        assert "id 'not-embedded-0' is in the pool but not in the store (1 such id)" in result.output
        assert f"id {missing!r} is in the store but not in the pool (1 such id)" in result.output
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("where", ["the store", "inside the store", "around the store"])
def test_the_run_directory_may_not_be_inside_or_around_the_store(tmp_path, chat_pool, where):
    store = tmp_path / "data" / "emb"
    store.mkdir(parents=True)
    out = {"the store": store, "inside the store": store / "run", "around the store": tmp_path / "data"}[where]
    spec = _write(tmp_path / "spec.yaml", _spec(chat_pool, {"store": str(store)}))
    before = _tree(tmp_path / "data")
    result = CliRunner().invoke(main, ["run", str(spec), "--out", str(out)])
    assert result.exit_code == 2, result.output
    verb = {"the store": "is", "inside the store": "is inside", "around the store": "contains"}[where]
    assert f"{verb} the input embedding.store {store}" in result.output, result.output
    assert _tree(tmp_path / "data") == before and not (store / "run").exists()


# -- stores made elsewhere (no pool of their own), and stores that change ------------------------


def _store_without_pool(pool_path: Path, out: Path, *, seed: int = 0, shard_rows: int = 7) -> Path:
    """A store of seeded random unit vectors for the pool's ids, in pool order, recording no pool (as an imported store)."""
    pool = open_pool(str(pool_path), id_column="uid")
    ids = pa.concat_arrays([pool.read_partition(i, columns=[]).column("id").combine_chunks() for i in range(pool.n_partitions)])
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((len(ids), 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    out.mkdir(parents=True)
    starts = range(0, len(ids), shard_rows)
    shards = [write_embedding_shard(out, n, ids[lo : lo + shard_rows], x[lo : lo + shard_rows]) for n, lo in enumerate(starts)]
    finalize_embedding_store(out, shards=shards, fingerprint=f"made-elsewhere-{seed}", dim=16, dtype="float32",
                             encoder={"model": "elsewhere", "normalize": True}, pool=None)
    return out


def _small_spec(pool: Path, store: Path) -> dict:
    return {"pool": {"path": str(pool), "id_column": "uid", "partition_rows": 20},
            "embedding": {"store": str(store)}, "index": {"type": "flat"},
            "steps": [{"step": "semdedup", "n_clusters": 3, "eps": 0.2},
                      {"step": "batches", "batch_size": 8, "community_size": 4, "rank_window": [1, 5], "group_column": "source"}],
            "report": {"html": False}}


def test_a_store_made_elsewhere_is_read_beside_the_specs_pool_and_a_change_to_either_reruns_the_steps(tmp_path, make_text_pool):
    pool = make_text_pool(tmp_path / "pool.jsonl", 60)
    store = _store_without_pool(pool, tmp_path / "emb")  # shards of 7 rows, pool partitions of 20: they need not line up
    spec = _write(tmp_path / "spec.yaml", _small_spec(pool, store))
    run = run_pipeline(spec, out=tmp_path / "run", executor=Executor.in_process(progress=False), **QUIET)
    pool_fp = open_pool(str(pool), id_column="uid").fingerprint
    assert run.steps[0].fingerprint == fingerprint_of("store", 1, {}, ["made-elsewhere-0", pool_fp])  # the store and the pool together
    dedup = open_curated(tmp_path / "run" / run.steps[2].dir).to_table()
    rows = {r["uid"]: r for r in map(json.loads, pool.read_text(encoding="utf-8").splitlines())}
    assert dedup.column("instruction").to_pylist() == [rows[i]["instruction"] for i in dedup.column("id").to_pylist()]  # the spec's pool's rows

    # new pool content under the same ids: every step reruns and carries it
    changed = [{**r, "instruction": r["instruction"].upper()} for r in rows.values()]
    pool.write_text("".join(json.dumps(r) + "\n" for r in changed), encoding="utf-8")
    plans = run_pipeline(spec, out=tmp_path / "run", dry_run=True, **QUIET)
    assert [(p.status, p.cached) for p in plans] == [("existing store", True), ("run", False), ("run", False), ("run", False)]
    run = run_pipeline(spec, out=tmp_path / "run", executor=Executor.in_process(progress=False), **QUIET)
    dedup = open_curated(tmp_path / "run" / run.steps[2].dir).to_table()
    assert all(text == text.upper() for text in dedup.column("instruction").to_pylist())

    # the store made again from other vectors (another fingerprint): everything downstream is recomputed
    shutil.rmtree(store)
    _store_without_pool(pool, store, seed=1)
    plans = run_pipeline(spec, out=tmp_path / "run", dry_run=True, **QUIET)
    assert [p.cached for p in plans] == [True, False, False, False]
    assert plans[0].fingerprint == fingerprint_of("store", 1, {}, ["made-elsewhere-1", open_pool(str(pool), id_column="uid").fingerprint])


def test_a_store_whose_shard_changed_after_a_cached_run_is_refused_naming_the_file(tmp_path, make_text_pool):
    pool = make_text_pool(tmp_path / "pool.jsonl", 60)
    store = _store_without_pool(pool, tmp_path / "emb")
    spec = _write(tmp_path / "spec.yaml", _small_spec(pool, store))
    run_pipeline(spec, out=tmp_path / "run", executor=Executor.in_process(progress=False), **QUIET)
    assert all(p.cached for p in run_pipeline(spec, out=tmp_path / "run", dry_run=True, **QUIET))
    before = _tree(tmp_path / "run")
    # another valid shard in place of part-00001 (same ids, other vectors): the manifest's checksum catches it
    s = open_embedding_store(store)
    write_embedding_shard(store, 1, pa.array(s.shard_ids(1).tolist()), -s.shard_embeddings(1))
    for argv in (["--dry-run"], []):
        result = CliRunner().invoke(main, ["run", str(spec), "--out", str(tmp_path / "run"), *argv])
        assert result.exit_code == 2, result.output
        assert f"The embedding store {store} changed since it was finished" in result.output and "part-00001.arrow" in result.output
    assert _tree(tmp_path / "run") == before
