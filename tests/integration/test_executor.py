"""The executor: one map over tasks, the same results in this process and on Dask, with progress events, task records and retries."""

from __future__ import annotations

import numpy as np
import pytest

from thresher.exceptions import ParameterError
from thresher.jobs.events import EventLog, current_event_log, current_step, read_events
from thresher.jobs.executor import Executor


def _shard_sum(start: int, stop: int, *, weights: np.ndarray, offset: int = 0) -> float:
    return float(weights[start:stop].sum()) + offset


def _add(a: float, b: float) -> float:
    return a + b


def _fail_on(i: int) -> int:
    if i == 3:
        raise ValueError("task 3 fails")
    return i


WEIGHTS = np.random.default_rng(0).standard_normal(100_000)  # large enough to be scattered, not put in the graph
ITEMS = [(a, min(a + 7_000, len(WEIGHTS))) for a in range(0, len(WEIGHTS), 7_000)]


@pytest.mark.parametrize("where", ["in_process", "dask"])
def test_map_returns_results_in_order_reports_progress_and_records_its_tasks(where, dask_client, tmp_path):
    executor = Executor.in_process() if where == "in_process" else Executor.on_client(dask_client)
    job = executor.new_job()
    rows = [b - a for a, b in ITEMS]
    with EventLog(tmp_path / "events.jsonl") as log, current_event_log(log), current_step("s"):
        got = executor.map(_shard_sum, ITEMS, shared={"weights": WEIGHTS, "offset": 1}, rows=rows, description="sum", job=job)
    expected = [float(WEIGHTS[a:b].sum()) + 1 for a, b in ITEMS]  # numpy, independently
    np.testing.assert_allclose(got, expected)
    events = [e for e in read_events(tmp_path / "events.jsonl") if e["event"] == "progress"]
    assert len(events) == len(ITEMS) and events[-1]["rows_done"] == len(WEIGHTS) and {e["task"] for e in events} == {"sum"}
    assert {e["step"] for e in events} == {"s"}
    n_tasks = 0 if where == "in_process" else len(ITEMS)
    assert dict(job) == {"tasks": n_tasks, "retried_tasks": 0, "retries": 0}


@pytest.mark.parametrize("where", ["in_process", "dask"])
def test_map_reduce_merges_every_part_once(where, dask_client):
    executor = Executor.in_process() if where == "in_process" else Executor.on_client(dask_client)
    job = executor.new_job()
    total = executor.map_reduce(_shard_sum, ITEMS, _add, shared={"weights": WEIGHTS}, rows=[b - a for a, b in ITEMS],
                                description="sum", job=job)
    assert total == pytest.approx(WEIGHTS.sum())
    if where == "dask":  # one task per item and one per pairwise merge
        assert job["tasks"] == 2 * len(ITEMS) - 1


def test_a_failing_task_raises_its_error_and_cancels_the_rest(dask_client):
    with pytest.raises(ValueError, match="task 3 fails"):
        Executor.on_client(dask_client).map(_fail_on, [(i,) for i in range(8)], retries=0)
    with pytest.raises(ValueError, match="task 3 fails"):
        Executor.in_process().map(_fail_on, [(i,) for i in range(8)])


def test_an_executor_starts_its_cluster_once_and_closes_it_on_exit():
    executor = Executor(workers=1, progress=False)
    assert executor.dask is None and executor.runs_here
    with executor:
        client = executor.dask
        assert client is not None and executor.runs_here  # a local cluster: the model runs on this machine
        with executor.started():  # a stage given a started executor neither restarts nor closes it
            assert executor.dask is client
        assert executor.map(_fail_on, [(0,), (1,)]) == [0, 1]
        assert executor.dask is client and client.status == "running"
    assert executor.dask is None and client.status == "closed"


def test_executor_settings_are_checked():
    with pytest.raises(ParameterError, match="not both"):
        Executor(local=True, scheduler="tcp://x:1")
    assert not Executor.from_settings(scheduler="tcp://x:1").runs_here


def test_old_cluster_keywords_still_work_and_warn_naming_executor(tmp_path, make_text_pool, make_random_store, dask_client):
    from thresher.pipeline.select import select_rds

    store = make_random_store(make_text_pool(tmp_path / "pool.jsonl", 60), tmp_path / "emb", partition_rows=20)
    targets = {"t": store.take([0, 5])}
    new = select_rds(store.path, targets, tmp_path / "new", budget=9, executor=Executor.in_process(progress=False))
    with pytest.warns(DeprecationWarning, match=r"select_rds\(local=, progress=\) is deprecated; pass executor="):
        old = select_rds(store.path, targets, tmp_path / "old", budget=9, local=True, progress=False)
    with pytest.warns(DeprecationWarning, match="executor="):
        on_dask = select_rds(store.path, targets, tmp_path / "old-dask", budget=9, client=dask_client)
    ids = new.to_table().column("id").to_pylist()
    assert len(ids) == 9 and ids == old.to_table().column("id").to_pylist() == on_dask.to_table().column("id").to_pylist()
    assert on_dask.manifest["job"]["tasks"] > 0 == old.manifest["job"]["tasks"]
    with pytest.raises(ParameterError, match="not both"):
        select_rds(store.path, targets, tmp_path / "both", budget=9, local=True, executor=Executor.in_process())
