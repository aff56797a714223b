"""Provenance is verified, not assumed: pool files, model weights, cached artefacts and manifest file names.

Real parts throughout: a tiny pool embedded with the bundled MiniLM through
the CLI, tiny transformers models saved to disk, real curated and index
artefacts; each test changes one thing on disk and checks what thresher does.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from thresher.cli import main
from thresher.exceptions import ArtifactError, InputDataError
from thresher.stores.arrow_io import read_stream_shard, write_stream_shard
from thresher.stores.curated import open_curated
from thresher.stores.embedding_store import open_embedding_store

N_POOL = 24


def _rows() -> list[dict]:
    return [{"uid": f"r{i}", "text": f"sentence {i} is about {'cats' if i % 3 else 'dogs'} and {i % 5} other things", "label": i % 2}
            for i in range(N_POOL)]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def world(tmp_path_factory, minilm_path):
    """A pool, its store (two shards) embedded by the CLI, and a target file."""
    root = tmp_path_factory.mktemp("provenance")
    pool = root / "data" / "pool.jsonl"
    pool.parent.mkdir()
    _write_jsonl(pool, _rows())
    targets = root / "targets.jsonl"
    _write_jsonl(targets, [{"text": "a question about cats"}, {"text": "dogs and other things"}])
    emb = root / "emb"
    result = _invoke("embed", "--pool", pool, "--id-column", "uid", "--model", minilm_path, "--out", emb, "--local", "--quiet",
                     "--partition-rows", N_POOL // 2)
    assert result.exit_code == 0, result.output
    return root, pool, emb, targets


SELECTS = {
    "rds": lambda emb, out, targets: ("select", "rds", "--pool-embeddings", emb, "--out", out, "--local", "--quiet",
                                      "--targets", f"t={targets}", "--budget", "6"),
    "smote": lambda emb, out, targets: ("select", "smote", "--pool-embeddings", emb, "--out", out, "--local", "--quiet",
                                        "--labels", "label", "--k-neighbors", "2"),
}


def _swap_texts(rows):
    rows[0]["text"], rows[1]["text"] = rows[1]["text"], rows[0]["text"]


def _change_label(rows):
    rows[4]["label"] = 1 - rows[4]["label"]


def _append_row(rows):
    rows.append({"uid": "r999", "text": "a row that was never embedded", "label": 0})


@pytest.mark.parametrize("edit", [_swap_texts, _change_label, _append_row], ids=["texts-swapped", "label-changed", "row-appended"])
@pytest.mark.parametrize("command", sorted(SELECTS))
def test_select_refuses_a_pool_edited_after_embedding(world, tmp_path, edit, command):
    root, pool, emb, targets = world
    original = pool.read_bytes()
    rows = _rows()
    edit(rows)
    try:
        _write_jsonl(pool, rows)
        out = tmp_path / "out"
        result = _invoke(*SELECTS[command](emb, out, targets))
        assert result.exit_code == 2, result.output
        message = result.output.strip().splitlines()[-1]
        assert f"Pool file {pool} changed since it was embedded into {emb} (content differs)" in message, message
        assert not out.exists()
    finally:
        pool.write_bytes(original)


def test_a_pool_touched_but_not_changed_is_accepted(world, tmp_path):
    root, pool, emb, targets = world
    stat = pool.stat()
    os.utime(pool, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    out = tmp_path / "out"
    result = _invoke(*SELECTS["rds"](emb, out, targets))
    assert result.exit_code == 0, result.output
    assert open_curated(out).n_rows == 6


def test_a_missing_pool_file_is_refused_naming_it(world, tmp_path):
    root, pool, emb, targets = world
    moved = pool.with_suffix(".moved")
    pool.rename(moved)
    try:
        result = _invoke(*SELECTS["smote"](emb, tmp_path / "out", targets))
        assert result.exit_code == 2
        assert f"Pool file {pool} embedded into {emb} is missing" in result.output
        assert not (tmp_path / "out").exists()
    finally:
        moved.rename(pool)


def test_a_store_without_per_file_records_is_checked_by_the_whole_pool_fingerprint(world, tmp_path):
    root, pool, emb, targets = world
    old = tmp_path / "old-emb"
    shutil.copytree(emb, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["pool"]["files"]  # as written before per-file records
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert open_embedding_store(old).reopen_pool().n_rows == N_POOL
    original = pool.read_bytes()
    rows = _rows()
    _change_label(rows)
    try:
        _write_jsonl(pool, rows)
        with pytest.raises(InputDataError, match=f"The pool files of {old} changed since they were embedded"):
            open_embedding_store(old).reopen_pool()
    finally:
        pool.write_bytes(original)


# --------------------------------------------------------------------------------------------------
# Encoder identity by weights
# --------------------------------------------------------------------------------------------------


def _tiny_bert(folder: Path, seed: int, minilm_path: str) -> None:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=64)
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def test_a_target_store_embedded_by_other_weights_of_the_same_model_name_is_refused(world, tmp_path, minilm_path, monkeypatch):
    root, pool, emb, targets = world
    for parent, seed in (("a", 0), ("b", 1)):
        _tiny_bert(tmp_path / parent / "tiny", seed, minilm_path)

    def embed(parent: str, source: Path, out: Path) -> None:
        monkeypatch.chdir(tmp_path / parent)  # the same model string, "./tiny", in both
        result = _invoke("embed", "--pool", source, "--model", "./tiny", "--out", out, "--local", "--quiet", "--max-length", "32")
        assert result.exit_code == 0, result.output

    embed("a", pool, tmp_path / "pool-a")
    embed("a", targets, tmp_path / "targets-a")
    embed("b", targets, tmp_path / "targets-b")
    monkeypatch.chdir(tmp_path)
    a, b = (json.loads((tmp_path / d / "manifest.json").read_text())["encoder"] for d in ("targets-a", "targets-b"))
    assert a["model"] == b["model"] == "./tiny" and a["weights"] != b["weights"]
    assert json.loads((tmp_path / "pool-a" / "manifest.json").read_text())["fingerprint"] != \
        json.loads((tmp_path / "targets-b" / "manifest.json").read_text())["fingerprint"]

    def select(target_store: Path, out: Path):
        return _invoke("select", "rds", "--pool-embeddings", tmp_path / "pool-a", "--targets", f"t={target_store}", "--budget", "4",
                       "--out", out, "--local", "--quiet")

    refused = select(tmp_path / "targets-b", tmp_path / "out-b")
    assert refused.exit_code == 2, refused.output
    assert f"The pool store {tmp_path / 'pool-a'} and the target store {tmp_path / 'targets-b'} were embedded by different model weights" in refused.output
    assert not (tmp_path / "out-b").exists()
    accepted = select(tmp_path / "targets-a", tmp_path / "out-a")  # the same weights: fine
    assert accepted.exit_code == 0, accepted.output

    # target *files* are embedded with the pool store's model: refused once that folder holds other weights
    shutil.rmtree(tmp_path / "a" / "tiny")
    shutil.copytree(tmp_path / "b" / "tiny", tmp_path / "a" / "tiny")
    monkeypatch.chdir(tmp_path / "a")  # where "./tiny" is the pool store's model
    stale = select(targets, tmp_path / "out-file")
    assert stale.exit_code == 2, stale.output
    assert "now has other weights" in stale.output and str(tmp_path / "pool-a") in stale.output


# --------------------------------------------------------------------------------------------------
# Cached steps are verified before reuse
# --------------------------------------------------------------------------------------------------


def _run_spec(path: Path, pool: Path, targets: Path, minilm_path: str) -> Path:
    spec = {
        "name": "provenance",
        "pool": {"path": str(pool), "id_column": "uid", "text_column": "text", "partition_rows": N_POOL // 2},
        "embedding": {"model": minilm_path, "max_length": 32},
        "steps": [
            {"step": "rds", "budget": 12, "targets": {"t": str(targets)}},
            {"step": "smote", "input": "rds", "labels": "label", "k_neighbors": 2},
        ],
        "cluster": {"local": True},
        "report": {"html": False},
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def _tables(run: Path) -> dict[str, list]:
    return {step: open_curated(run / "steps" / step).to_table().to_pylist() for step in ("01-rds", "02-smote")}


def test_a_cached_step_whose_shard_was_replaced_is_recomputed_with_everything_downstream(world, tmp_path, minilm_path):
    from thresher.pipeline.runner import run_pipeline

    root, pool, emb, targets = world
    spec = _run_spec(tmp_path / "spec.yaml", pool, targets, minilm_path)
    fresh = run_pipeline(spec, out=tmp_path / "fresh", progress=False, echo=lambda *_: None)
    run = run_pipeline(spec, out=tmp_path / "run", progress=False, echo=lambda *_: None)
    expected = _tables(fresh.path)
    assert _tables(run.path) == expected

    # another valid shard: the same rows, in another order (the same size, a new mtime)
    shard = run.path / "steps" / "01-rds" / "part-00000.arrow"
    table = read_stream_shard(shard)
    write_stream_shard(shard, table.take(np.arange(table.num_rows)[::-1].copy()))
    said: list[str] = []
    again = run_pipeline(spec, out=tmp_path / "run", progress=False, echo=said.append)
    cached = {r.name: r.cached for r in again.steps}
    assert cached == {"embed": True, "rds": False, "smote": False}, cached
    assert any("[rds] cached output failed verification (Shard" in line and "part-00000.arrow" in line and "checksum" in line
               for line in said), said
    assert any(line.startswith("[smote] its input rds is recomputed") for line in said), said
    events = [json.loads(line) for line in (run.path / "events.jsonl").read_text().splitlines()]
    assert any(e["event"] == "step_recompute" and e.get("step") == "rds" and "failed verification" in e["reason"] for e in events), events
    assert _tables(again.path) == expected

    # intact now: everything is reused
    third = run_pipeline(spec, out=tmp_path / "run", progress=False, echo=lambda *_: None)
    assert all(r.cached for r in third.steps)


def test_a_cached_artefact_reused_by_its_stage_is_verified_first(world, tmp_path):
    """Outside a run, a stage given the directory of its own finished output reuses it only when intact."""
    root, pool, emb, targets = world
    out = tmp_path / "out"
    assert _invoke(*SELECTS["smote"](emb, out, targets)).exit_code == 0
    before = open_curated(out).to_table()
    shard = out / "part-00000.arrow"
    write_stream_shard(shard, before.slice(0, 3))
    assert _invoke(*SELECTS["smote"](emb, out, targets)).exit_code == 0
    assert open_curated(out, verify=True).to_table().equals(before)


# --------------------------------------------------------------------------------------------------
# Confinement: every file a manifest names lies inside its artefact
# --------------------------------------------------------------------------------------------------


def _escape(artifact: Path, how: str) -> str:
    """Point the first shard entry of ``artifact``'s manifest outside it, at a valid copy of that very shard; return the entry."""
    manifest = json.loads((artifact / "manifest.json").read_text())
    name = manifest["shards"][0]["file"]
    outside = artifact.parent / f"outside-{artifact.name}"
    outside.mkdir()
    shutil.copy2(artifact / name, outside / name)  # same bytes: were it read, every check would pass
    if how == "dotdot":
        entry = f"../{outside.name}/{name}"
    elif how == "absolute":
        entry = str(outside / name)
    else:  # a symlink in the directory leading out of it
        (artifact / name).unlink()
        (artifact / name).symlink_to(outside / name)
        entry = name
    manifest["shards"][0]["file"] = entry
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    return entry


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_an_embedding_store_naming_a_file_outside_it_is_refused(world, tmp_path, how):
    root, pool, emb, targets = world
    store = tmp_path / "emb"
    shutil.copytree(emb, store)
    entry = _escape(store, how)
    with pytest.raises(ArtifactError, match=str(store / "manifest.json")) as info:
        open_embedding_store(store)
    assert repr(entry) in str(info.value)
    for args in (("inspect", "--verify", store), ("inspect", store), ("index", "--embeddings", store, "--out", tmp_path / "idx")):
        result = _invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        assert repr(entry) in result.output and "manifest.json" in result.output, result.output
    assert not (tmp_path / "idx").exists()


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_curated_shards_naming_a_file_outside_them_are_refused(world, tmp_path, how):
    root, pool, emb, targets = world
    out = tmp_path / "cur"
    assert _invoke(*SELECTS["rds"](emb, out, targets)).exit_code == 0
    entry = _escape(out, how)
    with pytest.raises(ArtifactError, match=repr(entry).replace(".", r"\.")):
        open_curated(out)
    result = _invoke("inspect", "--verify", out)
    assert result.exit_code == 2 and repr(entry) in result.output, result.output


def test_an_index_naming_a_file_outside_it_is_refused(world, tmp_path):
    from thresher.stores.index import open_index

    root, pool, emb, targets = world
    index = tmp_path / "idx"
    assert _invoke("index", "--embeddings", emb, "--out", index).exit_code == 0
    manifest = json.loads((index / "manifest.json").read_text())
    manifest["files"]["../../etc/passwd"] = manifest["files"].pop("ids.arrow")
    (index / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"'\.\./\.\./etc/passwd'"):
        open_index(index)
    result = _invoke("inspect", "--verify", index)
    assert result.exit_code == 2 and "'../../etc/passwd'" in result.output, result.output
