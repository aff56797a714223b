"""Every Dask stage records its job in its manifest: how many tasks ran and how many were re-run after lost workers."""

from __future__ import annotations

import numpy as np

from thresher.pipeline.select import select_batches, select_rds
from thresher.jobs.executor import Executor


def test_stages_record_their_tasks(tmp_path, make_text_pool, make_random_store, dask_client):
    pool = make_text_pool(tmp_path / "pool.jsonl", 120)
    store = make_random_store(pool, tmp_path / "emb", partition_rows=10)  # 12 shards
    settings = dict(batch_size=16, community_size=8, rank_window=(2, 18), seed=0)
    on_dask = select_batches(store.path, tmp_path / "b3", executor=Executor.on_client(dask_client), **settings)
    local = select_batches(store.path, tmp_path / "b3-local", executor=Executor.in_process(), **settings)
    assert on_dask.manifest["job"] == {"tasks": store.n_shards, "retried_tasks": 0, "retries": 0}  # one window task per shard
    assert local.manifest["job"] == {"tasks": 0, "retried_tasks": 0, "retries": 0}
    assert on_dask.to_table().column("id").to_pylist() == local.to_table().column("id").to_pylist()

    targets = {"t": np.random.default_rng(3).standard_normal((2, 16)).astype(np.float32)}
    rds = select_rds(store.path, targets, tmp_path / "rds", budget=120, executor=Executor.on_client(dask_client, progress=False))
    # every row selected: 12 scoring tasks, 11 pairwise merges, 12 staging tasks
    assert rds.manifest["job"] == {"tasks": 12 + 11 + 12, "retried_tasks": 0, "retries": 0}
