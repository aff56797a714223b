"""A Dask worker process killed in the middle of a job: the job finishes with every row once, and its manifest says tasks were re-run."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import psutil

import thresher
from thresher.jobs.cluster import TaskRetries, dask_client
from thresher.pipeline.select import select_rds
from thresher.selectors.rds import brute_force_rds
from thresher.stores.pool import open_pool
from thresher.jobs.executor import Executor


def kill_a_worker_when(client, ready, killed: list[int]) -> threading.Thread:
    """Start a thread that kills one worker process of ``client`` as soon as ``ready()`` is true."""
    pids = list(client.run(os.getpid).values())

    def watch():
        deadline = time.monotonic() + 120
        while not ready() and time.monotonic() < deadline:
            time.sleep(0.01)
        if ready():
            psutil.Process(pids[0]).kill()
            killed.append(pids[0])

    thread = threading.Thread(target=watch)
    thread.start()
    return thread


def test_killed_worker_loses_no_row(tmp_path, make_text_pool):
    pool_path = make_text_pool(tmp_path / "pool.jsonl", 240)
    out = tmp_path / "emb"
    killed: list[int] = []
    with dask_client(workers=2, quiet=True) as client:
        killer = kill_a_worker_when(client, lambda: list(out.glob("part-*.arrow")), killed)
        store = thresher.embed(str(pool_path), out, text="{instruction}", id_column="uid", partition_rows=20, executor=Executor.on_client(client, progress=False))
        killer.join()
    assert killed, "no worker was killed"
    pool = open_pool(str(pool_path), id_column="uid", partition_rows=20)
    expected = [pool.read_partition(i, columns=[]).column("id").to_pylist() for i in range(pool.n_partitions)]
    assert store.ids().tolist() == [i for part in expected for i in part]
    assert store.n_rows == 240 and len(set(store.ids().tolist())) == 240
    assert not list(out.glob(".tmp-*")) and not list(out.glob(".*.done.json"))
    job = store.manifest["job"]
    assert job["tasks"] == pool.n_partitions == 12
    assert 1 <= job["retried_tasks"] <= job["retries"]


def test_killed_worker_during_rds_selection_changes_nothing_but_the_retry_count(tmp_path, make_text_pool, make_random_store):
    # 60 partitions of 5 rows: the staging tasks (one per partition) outlast the first one by far
    pool_path = make_text_pool(tmp_path / "pool.jsonl", 300)
    store = make_random_store(pool_path, tmp_path / "emb", partition_rows=5)
    targets = {"a": np.random.default_rng(1).standard_normal((4, 16)).astype(np.float32),
               "b": np.random.default_rng(2).standard_normal((3, 16)).astype(np.float32)}
    for t in targets.values():
        t /= np.linalg.norm(t, axis=1, keepdims=True)
    budget = 200
    out = tmp_path / "rds"
    killed: list[int] = []
    with dask_client(workers=2, quiet=True) as client:
        killer = kill_a_worker_when(client, lambda: list(out.glob(".staging/stage-*.arrow")), killed)
        curated = select_rds(store.path, targets, out, budget=budget, executor=Executor.on_client(client, progress=False))
        killer.join()
    assert killed, "no worker was killed"

    positions, _ = brute_force_rds(store.to_numpy(), targets, budget)
    expected_ids = store.ids()[positions].tolist()
    reference = select_rds(store.path, targets, tmp_path / "reference", budget=budget, executor=Executor.in_process(progress=False))
    assert curated.to_table().column("id").to_pylist() == expected_ids == reference.to_table().column("id").to_pylist()
    for a, b in zip(curated.files, reference.files, strict=True):
        assert open(a, "rb").read() == open(b, "rb").read()
    assert not (out / ".staging").exists()

    # tasks: one score task per shard, n_shards - 1 pairwise merges, one staging task per partition holding a selected row
    n_staged = len(np.unique(positions // 5))
    job = curated.manifest["job"]
    assert job["tasks"] == 2 * store.n_shards - 1 + n_staged
    assert 1 <= job["retried_tasks"] <= job["retries"]
    assert reference.manifest["job"] == {"tasks": 0, "retried_tasks": 0, "retries": 0}


def _sleep_after_touching(path: str, seconds: float) -> str:
    open(path, "w").close()
    time.sleep(seconds)
    return path


def test_task_retries_counts_only_its_own_tasks_lost_with_a_worker(tmp_path):
    with dask_client(workers=1, quiet=True) as client:
        mine, other = TaskRetries(client), TaskRetries(client)
        done = other.track(client.submit(_sleep_after_touching, str(tmp_path / "quick"), 0.0, pure=False))
        done.result()
        del done  # released: its result is not wanted again, so losing the worker does not re-run it
        slow = mine.track(client.submit(_sleep_after_touching, str(tmp_path / "slow"), 2.0, pure=False))
        while not (tmp_path / "slow").exists():
            time.sleep(0.01)
        psutil.Process(next(iter(client.run(os.getpid).values()))).kill()
        assert slow.result(timeout=120) == str(tmp_path / "slow")
        assert dict(mine) == {"tasks": 1, "retried_tasks": 1, "retries": 1}
        assert dict(other) == {"tasks": 1, "retried_tasks": 0, "retries": 0}
    assert dict(TaskRetries(None)) == {"tasks": 0, "retried_tasks": 0, "retries": 0}
