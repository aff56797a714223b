"""Many small jobs against one cluster: no worker process, file handle or memory leaks from job to job.

Each round runs an embedding job (real model, fresh output) and an RDS
selection (Dask scoring and staging) and then deletes both outputs. After a
warm-up (workers load the model, imports settle) the cluster's worker
processes, the driver's open file descriptors and threads, and the driver's
and workers' memory must stay where they were: a per-job leak grows them
round after round, which the bounds below would catch.
"""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import psutil
import pytest

import thresher
from thresher.pipeline.select import select_rds
from thresher.jobs.executor import Executor

WARMUP_ROUNDS = 2


def snapshot(client) -> dict[str, float]:
    me = psutil.Process()
    workers = client.run(lambda: (os.getpid(), psutil.Process().memory_info().rss, psutil.Process().num_fds()))
    children = [p for p in me.children(recursive=True) if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    return {
        "workers": len(client.scheduler_info(n_workers=-1)["workers"]),
        "worker_pids": sorted(pid for pid, _, _ in workers.values()),
        "child_processes": len(children),
        "driver_fds": me.num_fds(),
        "driver_threads": me.num_threads(),
        "driver_rss_mb": me.memory_info().rss / 2**20,
        "worker_rss_mb": max(rss for _, rss, _ in workers.values()) / 2**20,
        "worker_fds": max(fds for _, _, fds in workers.values()),
    }


def run_rounds(client, tmp_path, make_text_pool, make_random_store, rounds: int) -> list[dict[str, float]]:
    pool = make_text_pool(tmp_path / "pool.jsonl", 40)
    store = make_random_store(pool, tmp_path / "store", partition_rows=4)
    targets = {"t": np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)}
    expected = None
    snapshots = []
    for r in range(rounds):
        emb = thresher.embed(str(pool), tmp_path / f"emb-{r}", text="{instruction}", id_column="uid", partition_rows=20,
                             executor=Executor.on_client(client, progress=False))
        assert emb.n_rows == 40 and emb.manifest["job"] == {"tasks": 2, "retried_tasks": 0, "retries": 0}
        cur = select_rds(store.path, targets, tmp_path / f"rds-{r}", budget=12, executor=Executor.on_client(client, progress=False))
        ids = cur.to_table().column("id").to_pylist()
        assert ids == (expected := expected or ids) and len(ids) == 12  # every round selects the same rows
        del emb, cur
        shutil.rmtree(tmp_path / f"emb-{r}")
        shutil.rmtree(tmp_path / f"rds-{r}")
        snapshots.append(snapshot(client))
    return snapshots


def check_no_growth(snapshots: list[dict[str, float]]) -> None:
    settled, last = snapshots[WARMUP_ROUNDS - 1], snapshots[-1]
    print(f"after warm-up {settled}\nat the end    {last}")  # shown when an assertion fails
    assert last["workers"] == settled["workers"] == 2
    assert last["worker_pids"] == settled["worker_pids"]  # no worker died or was replaced
    assert last["child_processes"] == settled["child_processes"]
    assert last["driver_fds"] <= settled["driver_fds"] + 4
    assert last["driver_threads"] <= settled["driver_threads"] + 2
    assert last["worker_fds"] <= settled["worker_fds"] + 4
    assert last["driver_rss_mb"] <= settled["driver_rss_mb"] + 40
    assert last["worker_rss_mb"] <= settled["worker_rss_mb"] + 60


def test_short_soak_leaks_nothing(dask_client, tmp_path, make_text_pool, make_random_store):
    started = time.monotonic()
    snapshots = run_rounds(dask_client, tmp_path, make_text_pool, make_random_store, rounds=8)  # 16 jobs
    check_no_growth(snapshots)
    assert time.monotonic() - started < 300


@pytest.mark.slow
def test_long_soak_leaks_nothing(dask_client, tmp_path, make_text_pool, make_random_store):
    snapshots = run_rounds(dask_client, tmp_path, make_text_pool, make_random_store, rounds=60)  # 120 jobs
    check_no_growth(snapshots)
