"""SemDeDup end to end: real text with planted duplicates, embedded by the real model, deduplicated on Dask and in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from distributed import Client

import thresher
from thresher.cli import main
from thresher.data import read_demo_pool
from thresher.exceptions import ArtifactError, ParameterError
from thresher.pipeline.dedup import read_removed, select_semdedup
from thresher.selectors.semdedup import SemDeDup
from thresher.stores import open_curated
from thresher.jobs.executor import Executor

PARAPHRASES = [
    ("How do I reset my email password?", "How can I reset the password of my email?"),
    ("The weather is lovely and sunny today.", "Today the weather is lovely and sunny."),
    ("Please send me the quarterly sales report by Friday.", "Please send me the sales report for the quarter by Friday."),
]
EPS = 0.1


@pytest.fixture(scope="module")
def dedup_setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("semdedup")
    texts = []
    for row in read_demo_pool(70):
        first = row["messages"][0]["content"]
        if first not in texts:
            texts.append(first)
    rows = [{"id": f"row-{i}", "text": t} for i, t in enumerate(texts)]
    rows += [{"id": f"copy-{i}", "text": texts[i]} for i in range(4)]  # exact duplicates, after their originals
    for j, (a, b) in enumerate(PARAPHRASES):
        rows += [{"id": f"para-{j}a", "text": a}, {"id": f"para-{j}b", "text": b}]
    pool = tmp / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = thresher.embed(str(pool), tmp / "emb", text_column="text", id_column="id", partition_rows=20, executor=Executor.in_process(progress=False))
    return tmp, store, rows


def test_dask_equals_in_process_equals_the_selector(dedup_setup, dask_client, monkeypatch):
    tmp, store, rows = dedup_setup
    one_task = select_semdedup(store.path, tmp / "one-task", n_clusters=4, eps=EPS, executor=Executor.in_process(progress=False))
    monkeypatch.setenv("THRESHER_PARTITION_ROWS", "16")  # several dedup tasks and output shards
    on_dask = select_semdedup(store.path, tmp / "dask", n_clusters=4, eps=EPS, executor=Executor.on_client(dask_client, progress=False))
    local = select_semdedup(store.path, tmp / "local", n_clusters=4, eps=EPS, executor=Executor.in_process(progress=False))
    assert len(on_dask.files) > 1 and len(one_task.files) == 1
    assert one_task.to_table().drop_columns(["rank"]).equals(on_dask.to_table().drop_columns(["rank"]))
    assert read_removed(one_task.path).equals(read_removed(on_dask.path))
    for a, b in zip(on_dask.files + [str(on_dask.path / "removed.arrow")], local.files + [str(local.path / "removed.arrow")]):
        assert open(a, "rb").read() == open(b, "rb").read()

    expected = SemDeDup(n_clusters=4, eps=EPS).select(store.to_numpy())  # the pure selector, checked against brute force
    ids = store.ids()
    ds = datasets.load_dataset("arrow", data_files=on_dask.files, split="train", cache_dir=str(tmp / "hf"))
    assert ds["id"] == ids[expected.positions].tolist()
    assert ds["cluster"] == expected.columns["cluster"].tolist()
    np.testing.assert_allclose(ds["centroid_distance"], expected.columns["centroid_distance"], rtol=0, atol=0)
    by_id = {r["id"]: r["text"] for r in rows}
    assert ds["text"] == [by_id[i] for i in ds["id"]]  # pool columns come along

    removed = read_removed(on_dask.path)
    assert removed.column_names == ["id", "duplicate_of", "similarity", "max_similarity", "cluster"]
    assert removed.column("id").to_pylist() == ids[expected.removed.positions].tolist()
    assert removed.column("duplicate_of").to_pylist() == ids[expected.removed.duplicate_of_positions].tolist()
    np.testing.assert_array_equal(removed.column("similarity").to_numpy(), expected.removed.similarity)
    assert set(removed.column("duplicate_of").to_pylist()) <= set(ds["id"])  # always a kept row

    # the planted duplicates: every exact copy goes, named after its original, at similarity exactly 1
    pairs = dict(zip(removed.column("id").to_pylist(), zip(removed.column("duplicate_of").to_pylist(), removed.column("similarity").to_pylist())))
    for i in range(4):
        assert pairs[f"copy-{i}"] == (f"row-{i}", 1.0)
    x = store.to_numpy().astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    pos = {k: p for p, k in enumerate(ids.tolist())}
    for j in range(len(PARAPHRASES)):
        a, b = pos[f"para-{j}a"], pos[f"para-{j}b"]
        assert x[a] @ x[b] >= 1 - EPS  # the model sees them as paraphrases
        assert len({f"para-{j}a", f"para-{j}b"} & set(pairs)) == 1  # exactly one of each pair goes

    m = on_dask.manifest
    s = m["summary"]
    assert (s["rows_in"], s["kept"], s["removed"], s["clusters"], s["eps"]) == (len(rows), len(ds), removed.num_rows, 4, EPS)
    assert m["selector"] == "semdedup" and m["attachments"][0]["file"] == "removed.arrow" and m["attachments"][0]["rows"] == removed.num_rows
    assert m["job"]["tasks"] > 0


def test_subset_only_sees_its_rows(dedup_setup):
    tmp, store, rows = dedup_setup
    ids = store.ids()
    without_originals = np.flatnonzero(~np.isin(ids, [f"row-{i}" for i in range(4)]))
    cur = select_semdedup(store.path, tmp / "subset", n_clusters=3, eps=EPS, subset=without_originals, executor=Executor.in_process(progress=False))
    expected = SemDeDup(n_clusters=3, eps=EPS).select(store.to_numpy()[without_originals])
    got = cur.to_table().column("id").to_pylist()
    assert got == ids[without_originals[expected.positions]].tolist()
    assert {f"copy-{i}" for i in range(4)} <= set(got)  # their originals are not in the subset: nothing to duplicate
    assert read_removed(cur.path).column("id").to_pylist() == ids[without_originals[expected.removed.positions]].tolist()
    assert cur.manifest["summary"]["rows_in"] == len(without_originals)
    with open(cur.path / "removed.arrow", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ArtifactError, match="removed.arrow is corrupt or truncated"):
        read_removed(cur.path)


def test_cli_matches_python_and_reuses_a_finished_output(dedup_setup):
    tmp, store, _ = dedup_setup
    args = ["select", "semdedup", "--pool-embeddings", str(store.path), "--out", str(tmp / "cli"), "--n-clusters", "4", "--eps", str(EPS),
            "--local", "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    python = select_semdedup(store.path, tmp / "py", n_clusters=4, eps=EPS, executor=Executor.in_process(progress=False))
    s = python.manifest["summary"]
    assert f"kept {s['kept']} of {s['rows_in']} rows, removed {s['removed']}" in result.output
    cli = open_curated(tmp / "cli")
    assert cli.to_table().column("id").to_pylist() == python.to_table().column("id").to_pylist()
    before = (tmp / "cli" / "manifest.json").read_text()
    assert CliRunner().invoke(main, args).exit_code == 0
    assert (tmp / "cli" / "manifest.json").read_text() == before  # same inputs and settings: reused, not redone


def test_bad_input_is_refused_and_nothing_is_written(dedup_setup):
    tmp, store, rows = dedup_setup
    with pytest.raises(ParameterError, match="'n_clusters' parameter of SemDeDup is 1000 but there are only"):
        select_semdedup(store.path, tmp / "bad1", n_clusters=1000, eps=EPS, executor=Executor.in_process(progress=False))
    with pytest.raises(ParameterError, match="'eps' parameter of SemDeDup"):
        select_semdedup(store.path, tmp / "bad2", n_clusters=2, eps=1.0, executor=Executor.in_process(progress=False))
    with pytest.raises(ParameterError, match="'subset' parameter of select_semdedup holds the position 1 more than once"):
        select_semdedup(store.path, tmp / "bad3", n_clusters=2, eps=EPS, subset=[3, 1, 1], executor=Executor.in_process(progress=False))
    with pytest.raises(ArtifactError, match="not a semdedup output"):
        read_removed(_other_curated(tmp))
    with pytest.raises(ParameterError, match="An attachment of write_curated must be a plain file name"):
        _other_curated(tmp, "other2", attachments={"part-00009.arrow": pa.table({"a": [1]})})
    result = CliRunner().invoke(main, ["select", "semdedup", "--pool-embeddings", str(store.path), "--out", str(tmp / "bad4"),
                                       "--n-clusters", "0", "--eps", "0.1", "--local", "--quiet"])
    assert result.exit_code == 2 and "Invalid value for '--n-clusters': 'n_clusters': Input should be greater than 0; got 0" in result.output
    assert not any((tmp / f"bad{i}").exists() for i in range(1, 5))


def _other_curated(tmp, name="other", **kwargs):
    """A finished curated directory that is not a semdedup output."""
    from thresher.stores import write_curated
    from thresher.stores.embedding_store import open_embedding_store
    from thresher.stores.pool import reopen_pool

    store = open_embedding_store(tmp / "emb")
    return write_curated(tmp / name, pool=reopen_pool(store.manifest["pool"]), positions=[0, 1], columns={}, selector="x",
                         params={}, fingerprint="x", **kwargs).path


# -- issue 19: the same answer wherever it runs, and the exact mode ------------------------------------------------------


def _dask_process(*args: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "dask", *args], stdout=out, stderr=subprocess.STDOUT, env=env)


@pytest.fixture(scope="module")
def external_scheduler(tmp_path_factory):
    """``dask scheduler`` and one ``dask worker`` with 2 threads, started as an operator would (so its tasks inherit
    the nanny's OMP_NUM_THREADS=1 and run with another thread count than the LocalCluster's)."""
    tmp = tmp_path_factory.mktemp("scheduler")
    scheduler_file = tmp / "scheduler.json"
    processes = [_dask_process("scheduler", "--port", "0", "--no-dashboard", "--scheduler-file", str(scheduler_file), log=tmp / "scheduler.log")]
    try:
        deadline = time.monotonic() + 120
        while not (scheduler_file.is_file() and scheduler_file.stat().st_size > 0):
            assert time.monotonic() < deadline, "the scheduler did not start"
            time.sleep(0.2)
        processes.append(_dask_process("worker", "--scheduler-file", str(scheduler_file), "--nthreads", "2", "--no-dashboard",
                                       "--memory-limit", "0", log=tmp / "worker.log"))
        address = json.loads(scheduler_file.read_text())["address"]
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(1, timeout=120)
            yield address, client
    finally:
        for p in processes[::-1]:
            p.terminate()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=30)


@pytest.fixture(scope="module")
def copies_store(tmp_path_factory):
    """600 rows: 150 random points in 8 dims and 3 noisy copies of each (cosine about 0.96), so that with 40 clusters
    near-duplicates straddle cluster borders and form chains; a pool of text beside it, 4 shards."""
    from thresher.stores import finalize_embedding_store, write_embedding_shard
    from thresher.stores.pool import open_pool

    tmp = tmp_path_factory.mktemp("copies")
    rng = np.random.default_rng(7)
    base = rng.normal(size=(150, 8))
    x = np.concatenate([base, np.repeat(base, 3, 0) + 0.2 * rng.normal(size=(450, 8))]).astype(np.float32)
    x = x[rng.permutation(len(x))]
    pool_path = tmp / "pool.jsonl"
    pool_path.write_text("".join(json.dumps({"id": f"v{i:03d}", "text": f"row {i}"}) + "\n" for i in range(len(x))))
    pool = open_pool(str(pool_path), id_column="id", partition_rows=150)
    (tmp / "emb").mkdir()
    shards = [write_embedding_shard(tmp / "emb", i, pool.read_partition(i, columns=[]).column("id"), x[150 * i : 150 * (i + 1)])
              for i in range(pool.n_partitions)]
    finalize_embedding_store(tmp / "emb", shards=shards, fingerprint="copies-600", dim=8, dtype="float32", encoder={"normalize": False},
                             pool=pool.describe())
    return tmp, thresher.open_embedding_store(tmp / "emb"), x


def _files(curated) -> list[bytes]:
    return [open(f, "rb").read() for f in curated.files + [str(curated.path / "removed.arrow")]]


@pytest.mark.parametrize("mode", ["paper", "exact"])
def test_same_bytes_in_process_on_a_local_cluster_and_on_an_external_scheduler(copies_store, dask_client, external_scheduler, mode, monkeypatch):
    tmp, store, x = copies_store
    address, external = external_scheduler
    settings = dict(n_clusters=40, eps=0.05, mode=mode, seed=3)
    monkeypatch.setenv("THRESHER_PARTITION_ROWS", "100")  # many tasks, each with a few clusters (and as many output shards everywhere)
    in_process = select_semdedup(store.path, tmp / f"{mode}-here", **settings, executor=Executor.in_process(progress=False))
    local = select_semdedup(store.path, tmp / f"{mode}-local", **settings, executor=Executor.on_client(dask_client, progress=False))
    remote = select_semdedup(store.path, tmp / f"{mode}-remote", **settings, executor=Executor.on_client(external, progress=False))
    assert local.manifest["job"]["tasks"] > 4 and remote.manifest["job"]["tasks"] > 4
    assert _files(in_process) == _files(local) == _files(remote)
    expected = SemDeDup(**settings).select(x)  # the pure selector, in this process
    assert in_process.to_table().column("id").to_pylist() == [f"v{p:03d}" for p in expected.positions]
    assert read_removed(remote.path).column("duplicate_of").to_pylist() == [f"v{p:03d}" for p in expected.removed.duplicate_of_positions]

    # the tasks on the external worker ran FAISS and BLAS on the host's cores, not on the OMP_NUM_THREADS=1 its nanny set
    def report():
        from thresher.threads import native_threads

        return native_threads()["faiss"]

    from thresher.threads import available_cores

    assert Executor.on_client(external, progress=False).map(report, [()]) == [max(1, available_cores() // 2)]  # 2 task threads


def test_exact_mode_keeps_its_promises_and_the_paper_mode_does_not(copies_store):
    tmp, store, x = copies_store
    xn = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    s = xn @ xn.T
    np.fill_diagonal(s, -np.inf)
    ids = store.ids()
    pos = {k: p for p, k in enumerate(ids.tolist())}
    for mode in ("paper", "exact"):
        cur = select_semdedup(store.path, tmp / f"promise-{mode}", n_clusters=40, eps=0.05, mode=mode, seed=3,
                              executor=Executor.in_process(progress=False))
        kept = np.array([pos[i] for i in cur.to_table().column("id").to_pylist()])
        removed = read_removed(cur.path)
        gone = np.array([pos[i] for i in removed.column("id").to_pylist()])
        twins = np.array([pos[i] for i in removed.column("duplicate_of").to_pylist()])
        pairs_kept = int((np.triu(s[np.ix_(kept, kept)], 1) >= 0.95).sum())
        orphans = int((s[np.ix_(gone, kept)].max(axis=1) < 0.95).sum())
        assert cur.manifest["summary"]["mode"] == mode
        if mode == "paper":
            assert pairs_kept > 0 and orphans > 0  # the case shows what exact mode is for
            assert "mode" not in cur.manifest["params"]  # a paper-mode output keeps the fingerprint it had before modes
        else:
            assert pairs_kept == 0 and orphans == 0
            np.testing.assert_allclose(removed.column("similarity").to_numpy(), s[gone, twins], rtol=0, atol=1e-12)
            assert (removed.column("similarity").to_numpy() >= 0.95).all() and np.isin(twins, kept).all()
            assert cur.manifest["params"]["mode"] == "exact" and cur.manifest["summary"]["edges"] == int((np.triu(s, 1) >= 0.95).sum())


def test_cli_exact_mode_matches_python(copies_store):
    tmp, store, _ = copies_store
    result = CliRunner().invoke(main, ["select", "semdedup", "--pool-embeddings", str(store.path), "--out", str(tmp / "cli-exact"),
                                       "--n-clusters", "40", "--eps", "0.05", "--seed", "3", "--mode", "exact", "--local", "--quiet"])
    assert result.exit_code == 0, result.output
    python = select_semdedup(store.path, tmp / "py-exact", n_clusters=40, eps=0.05, seed=3, mode="exact", executor=Executor.in_process(progress=False))
    assert _files(open_curated(tmp / "cli-exact")) == _files(python)
    bad = CliRunner().invoke(main, ["select", "semdedup", "--pool-embeddings", str(store.path), "--out", str(tmp / "cli-bad"),
                                    "--n-clusters", "4", "--eps", "0.05", "--mode", "exactly", "--local", "--quiet"])
    assert bad.exit_code == 2 and "'exactly' is not one of 'paper', 'exact'" in bad.output
