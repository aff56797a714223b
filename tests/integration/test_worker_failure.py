"""A Dask worker process killed in the middle of an embedding job: the job finishes with every row once."""

from __future__ import annotations

import threading
import time

import psutil

import thresher
from thresher.jobs.cluster import dask_client
from thresher.stores.pool import open_pool


def test_killed_worker_loses_no_row(tmp_path, make_text_pool):
    pool_path = make_text_pool(tmp_path / "pool.jsonl", 240)
    out = tmp_path / "emb"
    with dask_client(workers=2, quiet=True) as client:
        worker_pids = list(client.run(lambda: __import__("os").getpid()).values())
        killed = []

        def kill_one_worker_after_first_shard():
            deadline = time.monotonic() + 120
            while not list(out.glob("part-*.arrow")) and time.monotonic() < deadline:
                time.sleep(0.02)
            psutil.Process(worker_pids[0]).kill()
            killed.append(worker_pids[0])

        killer = threading.Thread(target=kill_one_worker_after_first_shard)
        killer.start()
        store = thresher.embed(str(pool_path), out, text="{instruction}", id_column="uid", partition_rows=20, client=client, progress=False)
        killer.join()
    assert killed, "no worker was killed"
    pool = open_pool(str(pool_path), id_column="uid", partition_rows=20)
    expected = [pool.read_partition(i, columns=[]).column("id").to_pylist() for i in range(pool.n_partitions)]
    assert store.ids().tolist() == [i for part in expected for i in part]
    assert store.n_rows == 240 and len(set(store.ids().tolist())) == 240
    assert not list(out.glob(".tmp-*"))
