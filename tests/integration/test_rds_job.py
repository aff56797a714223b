"""RDS+ end to end: real text embedded by the real model, scored on Dask, equal to brute force, Python = CLI."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
from click.testing import CliRunner

import thresher
from thresher.cli import main
from thresher.embeddings import EncoderSpec, load_encoder
from thresher.exceptions import InputDataError, ParameterError
from thresher.pipeline.select import select_rds
from thresher.selectors.rds import brute_force_rds
from thresher.stores import open_curated

from thresher.data import read_demo_pool
from thresher.jobs.executor import Executor


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def rds_setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rds")
    rows = read_demo_pool(1520)
    pool = write_rows(tmp / "pool.jsonl", rows[:240] + rows[:3])  # the last 3 repeat the first 3: exact duplicates
    for i, r in enumerate(rows[:243]):
        r["id"] = f"row-{i}"
    write_rows(pool, rows[:240] + [{**rows[i], "id": f"dup-{i}"} for i in range(3)])
    tasks = {"greetings": write_rows(tmp / "greetings.jsonl", rows[1000:1006]), "plans": write_rows(tmp / "plans.jsonl", rows[1500:1520])}
    store = thresher.embed(str(pool), tmp / "emb", messages_column="messages", id_column="id", partition_rows=50,
                           executor=Executor.in_process(progress=False))
    return tmp, store, tasks


def embed_texts_independently(store, path):
    """Target vectors via sentence-transformers' model path and the same chat rendering, not through the pipeline."""
    from thresher.pipeline.text import TextBuilder
    from thresher.stores.pool import open_pool

    pool = open_pool(str(path))
    texts = TextBuilder(messages_column="messages").build(pool.read_partition(0), source=str(path))
    return load_encoder(EncoderSpec.from_dict(store.manifest["encoder"])).encode(texts).vectors


def test_streamed_on_dask_equals_brute_force_and_in_process(rds_setup, dask_client):
    tmp, store, tasks = rds_setup
    on_dask = select_rds(store.path, tasks, tmp / "rds-dask", budget=40, executor=Executor.on_client(dask_client, progress=False))
    local = select_rds(store.path, tasks, tmp / "rds-local", budget=40, executor=Executor.in_process(progress=False))
    targets = {t: embed_texts_independently(store, p) for t, p in tasks.items()}
    positions, task_index = brute_force_rds(store.to_numpy(), targets, 40)
    expected_ids = store.ids()[positions].tolist()
    for cur in (on_dask, local):
        table = cur.to_table()
        assert table.column("id").to_pylist() == expected_ids
        assert table.column("task").to_pylist() == [list(tasks)[t] for t in task_index]
        assert table.column("rank").to_pylist() == list(range(40))
    for a, b in zip(on_dask.files, local.files):
        assert open(a, "rb").read() == open(b, "rb").read()
    m = on_dask.manifest
    assert m["selector"] == "rds_plus" and set(m["inputs"]) == {"pool_embeddings", "target:greetings", "target:plans"}
    assert sum(m["summary"]["per_task_selected"].values()) == 40
    ds = datasets.load_dataset("arrow", data_files=on_dask.files, split="train", cache_dir=str(tmp / "hf"))
    assert ds.column_names[:3] == ["id", "source", "messages"] and len(ds[0]["task_scores"]) == 2


def test_cli_matches_python_and_dedup_removes_repeats(rds_setup):
    tmp, store, tasks = rds_setup
    args = ["select", "rds", "--pool-embeddings", str(store.path), "--budget", "0.5", "--local", "--quiet", "--dedup"]
    for t, p in tasks.items():
        args += ["--targets", f"{t}={p}"]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp / "cli")])
    assert result.exit_code == 0, result.output
    texts = [json.dumps(r["messages"]) for r in map(json.loads, (tmp / "pool.jsonl").read_text().splitlines())]
    n_repeats = len(texts) - len(set(texts))
    assert n_repeats >= 3 and f"exact duplicates removed {n_repeats}," in result.output
    python = select_rds(store.path, tasks, tmp / "py", budget=0.5, dedup=True, executor=Executor.in_process(progress=False))
    cli = open_curated(tmp / "cli")
    assert cli.to_table().column("id").to_pylist() == python.to_table().column("id").to_pylist()
    assert not {f"dup-{i}" for i in range(3)} & set(cli.to_table().column("id").to_pylist())
    picked = [json.dumps(m) for m in cli.to_table().column("messages").to_pylist()]
    assert len(picked) == len(set(picked))


def test_mismatched_or_bad_targets_are_refused(rds_setup):
    tmp, store, tasks = rds_setup
    other = thresher.embed(str(tasks["greetings"]), tmp / "cls-emb", messages_column="messages", pooling="cls", executor=Executor.in_process(progress=False))
    with pytest.raises(ParameterError, match="pooling"):
        select_rds(store.path, {"greetings": other.path}, tmp / "x1", budget=5, executor=Executor.in_process(progress=False))
    bad = write_rows(tmp / "bad.jsonl", [{"prompt": "hello"}])
    with pytest.raises(InputDataError, match=r"bad\.jsonl.*'messages'"):
        select_rds(store.path, {"bad": bad}, tmp / "x2", budget=5, executor=Executor.in_process(progress=False))
    with pytest.raises(ParameterError, match="No target tasks"):
        select_rds(store.path, {}, tmp / "x3", budget=5, executor=Executor.in_process(progress=False))
    with pytest.raises(ParameterError, match="only 243 are available"):
        select_rds(store.path, tasks, tmp / "x4", budget=1000, executor=Executor.in_process(progress=False))
    assert not any((tmp / f"x{i}" / "manifest.json").exists() for i in range(1, 5))


def test_weighted_mean_causal_lm_end_to_end(tmp_path, tiny_llama_dir):
    rows = read_demo_pool(60)
    pool = write_rows(tmp_path / "pool.jsonl", rows)
    task = write_rows(tmp_path / "task.jsonl", rows[:2])
    store = thresher.embed(str(pool), tmp_path / "emb", messages_column="messages", id_column="id", model=str(tiny_llama_dir),
                           pooling="weighted_mean", padding_side="left", partition_rows=25, executor=Executor.in_process(progress=False))
    assert store.pooling == "weighted_mean" and store.dim == 32
    cur = select_rds(store.path, {"t": task}, tmp_path / "rds", budget=5, executor=Executor.in_process(progress=False))
    ids = cur.to_table().column("id").to_pylist()
    assert ids[:2] == sorted(ids[:2], key=[r["id"] for r in rows].index) and set(ids[:2]) == {rows[0]["id"], rows[1]["id"]}
    assert cur.to_table().column("score").to_pylist()[0] == pytest.approx(1.0, abs=1e-6)
