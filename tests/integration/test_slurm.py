"""thresher on a real single-node SLURM cluster through dask-jobqueue (the ``slurm_cluster`` fixture, see slurm_cluster.py).

The config submitted is README's SLURM block as it is. The paths users follow
(``thresher run --slurm``, ``thresher embed --slurm``) must submit worker
jobs, finish, leave the queue empty and give what the in-process run gives; a
worker job cancelled in the middle of a step must lose no row and be replaced;
jobs that cannot start must fail in bounded time, naming SLURM's reason, with
every job cancelled.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import thresher
from thresher.exceptions import SlurmJobError
from thresher.jobs.events import EventLog, current_event_log, read_events
from thresher.jobs.executor import Executor
from thresher.pipeline.select import select_rds
from thresher.stores.curated import open_curated
from thresher.stores.manifest import read_manifest

TEXT = "{instruction}\n\n{response}"
EMBED = {"text": TEXT, "id_column": "uid", "partition_rows": 10, "max_length": 64}
EMBED_ARGS = ("--text", TEXT, "--id-column", "uid", "--partition-rows", "10", "--max-length", "64", "--quiet")
N_ROWS = 80


def documented_config() -> dict:
    """README's SLURM config: the fenced YAML block after the ``<!-- slurm-config`` marker."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("<!-- slurm-config") :]
    start = section.index("```yaml") + len("```yaml")
    return yaml.safe_load(section[start : section.index("```", start)])


def write_config(path: Path, **changes) -> Path:
    path.write_text(yaml.safe_dump({**documented_config(), **changes}), encoding="utf-8")
    return path


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "thresher", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300, check=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A pool of real chat rows and its embedding store made in this process: what the SLURM runs must reproduce."""
    from thresher.data import read_demo_pool

    tmp = tmp_path_factory.mktemp("slurm-reference")
    rows = []
    for row in read_demo_pool(N_ROWS):
        turns = [m["content"] for m in row["messages"]]
        rows.append({"uid": row["id"], "instruction": turns[0], "response": " ".join(turns[1:]) or turns[0]})
    pool = tmp / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    store = thresher.embed(str(pool), tmp / "emb", **EMBED, executor=Executor.in_process(progress=False))
    return pool, store, rows


def test_readme_slurm_config_is_submitted_as_it_is():
    config = documented_config()
    assert config["queue"] == "debug" and config["log_directory"] == "slurm-logs"
    assert not {"job_extra_directives", "worker_extra_args", "scheduler_options"} & set(config)  # nothing the test cluster must drop


def test_run_with_the_documented_config_submits_worker_jobs_and_equals_the_in_process_run(slurm_cluster, reference, tmp_path):
    pool, store, rows = reference
    targets = tmp_path / "targets.jsonl"
    targets.write_text("".join(json.dumps({**r, "uid": f"t{i}"}) + "\n" for i, r in enumerate(rows[5:8])), encoding="utf-8")
    spec = {"name": "slurm", "pool": {"path": str(pool), "id_column": "uid", "text": TEXT, "partition_rows": 10},
            "embedding": {"max_length": 64}, "index": {"type": "flat"},
            "steps": [{"step": "rds", "budget": 20, "targets": {"near": str(targets)}}], "report": {"html": False}}
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    config = write_config(tmp_path / "slurm.yaml")
    before = set(slurm_cluster.submitted_job_ids())

    done = run_cli("run", str(spec_path), "--out", str(tmp_path / "run"), "--slurm", str(config), "--workers", "2", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    slurm_cluster.wait_until_queue_empty(30)  # every worker job was cancelled at the end

    events = read_events(tmp_path / "run" / "events.jsonl")
    job_ids = {e["job_id"] for e in events if e["event"] == "slurm_job_submitted"}
    assert len(job_ids) == 2 and job_ids == set(slurm_cluster.submitted_job_ids()) - before
    for job_id in job_ids:  # README's log_directory, relative to where thresher ran: each worker's own log
        log = (tmp_path / "slurm-logs" / f"dask-worker-{job_id}.err").read_text()
        assert "Registered to" in log and slurm_cluster.job_state(job_id) == "CANCELLED"
    assert not [e for e in events if e["event"] in ("slurm_job_ended", "slurm_error")]

    on_slurm = open_curated(tmp_path / "run" / read_manifest(tmp_path / "run", "run")["output"]).to_table()
    in_process = select_rds(store.path, {"near": str(targets)}, tmp_path / "rds-local", budget=20, executor=Executor.in_process(progress=False)).to_table()
    assert on_slurm.column("id").to_pylist() == in_process.column("id").to_pylist()
    np.testing.assert_allclose(on_slurm.column("score").to_numpy(), in_process.column("score").to_numpy(), atol=1e-6)
    assert set(on_slurm.column("id").to_pylist()[:3]) == {r["uid"] for r in rows[5:8]}  # the targets themselves come first
    embedded = thresher.open_embedding_store(tmp_path / "run" / "embeddings")
    assert embedded.manifest["job"] == {"tasks": N_ROWS // 10, "retried_tasks": 0, "retries": 0}  # Dask tasks: the jobs' workers ran them
    assert embedded.ids().tolist() == store.ids().tolist()
    np.testing.assert_allclose(embedded.take(np.arange(N_ROWS)), store.take(np.arange(N_ROWS)), atol=1e-5)


def test_slurm_workers_run_with_glibcs_allocator_settings(slurm_cluster, tmp_path, monkeypatch):
    """Dask's nanny sets MALLOC_TRIM_THRESHOLD_, which makes every temporary over 128 KiB an mmap (issue 19): a worker
    job thresher submits starts its worker without it; the nanny's other settings stay (threads are set per task)."""
    from thresher.jobs.cluster import dask_client

    monkeypatch.chdir(tmp_path)  # README's log_directory is relative
    with dask_client(slurm=write_config(tmp_path / "slurm.yaml"), workers=1, quiet=True) as client:
        client.wait_for_workers(1, timeout=120)
        names = ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")
        seen = client.run(lambda: {name: os.environ.get(name) for name in names})  # a lambda travels by value
    slurm_cluster.wait_until_queue_empty(30)
    assert seen and all(env == {"MALLOC_TRIM_THRESHOLD_": None, "OMP_NUM_THREADS": "1"} for env in seen.values()), seen


def test_embed_command_on_slurm_equals_the_in_process_store(slurm_cluster, reference, tmp_path):
    pool, store, _ = reference
    config = write_config(tmp_path / "slurm.yaml")
    done = run_cli("embed", "--pool", str(pool), "--out", str(tmp_path / "emb"), "--slurm", str(config), "--workers", "1", *EMBED_ARGS, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"embedded {N_ROWS} rows" in done.stdout
    slurm_cluster.wait_until_queue_empty(30)
    on_slurm = thresher.open_embedding_store(tmp_path / "emb")
    assert on_slurm.ids().tolist() == store.ids().tolist() and on_slurm.fingerprint == store.fingerprint
    np.testing.assert_allclose(on_slurm.take(np.arange(N_ROWS)), store.take(np.arange(N_ROWS)), atol=1e-5)
    assert len(list((tmp_path / "slurm-logs").glob("dask-worker-*.err"))) == 1


def _cancel_a_busy_job_when(client, ready, cancelled: list[str], cancel) -> threading.Thread:
    """A thread that, once ``ready()``, cancels the SLURM job of a worker that is running or holding a task."""
    cluster = client.cluster

    def watch():
        deadline = time.monotonic() + 120
        while not ready() and time.monotonic() < deadline:
            time.sleep(0.01)
        busy = {a: keys for a, keys in client.processing().items() if keys}
        if not busy:
            return
        address = max(busy, key=lambda a: len(busy[a]))
        name = client.scheduler_info(n_workers=-1)["workers"][address]["name"]
        job_id = cluster.workers[name].job_id
        cancel(job_id)
        cancelled.append(job_id)

    thread = threading.Thread(target=watch)
    thread.start()
    return thread


def test_a_worker_job_cancelled_mid_step_is_replaced_and_no_row_is_lost_or_doubled(slurm_cluster, reference, tmp_path, monkeypatch):
    pool, store, _ = reference
    monkeypatch.chdir(tmp_path)  # the jobs' logs (README's relative log_directory)
    monkeypatch.setenv("THRESHER_SLURM_POLL_INTERVAL", "1")
    out = tmp_path / "emb"
    executor = Executor.from_settings(slurm=str(write_config(tmp_path / "slurm.yaml")), workers=2, progress=False)
    cancelled: list[str] = []
    with EventLog(tmp_path / "events.jsonl") as log, current_event_log(log):
        with executor.started():
            client = executor.dask
            client.wait_for_workers(2, timeout=60)
            canceller = _cancel_a_busy_job_when(client, lambda: list(out.glob("part-*.arrow")), cancelled, slurm_cluster.cancel)
            embedded = thresher.embed(str(pool), out, **EMBED, executor=executor)
            canceller.join()
            assert cancelled, "the step finished before a job could be cancelled"
            deadline = time.monotonic() + 60  # the keeper sees the job end and submits a replacement, whose worker connects
            while not any(e["event"] == "slurm_job_replaced" for e in read_events(log.path)) and time.monotonic() < deadline:
                time.sleep(0.2)
            client.wait_for_workers(2, timeout=60)
    slurm_cluster.wait_until_queue_empty(30)

    assert slurm_cluster.job_state(cancelled[0]) == "CANCELLED"
    events = read_events(tmp_path / "events.jsonl")
    ended = [e for e in events if e["event"] == "slurm_job_ended"]
    replaced = [e for e in events if e["event"] == "slurm_job_replaced"]
    submitted = {e["worker"]: e["job_id"] for e in events if e["event"] == "slurm_job_submitted"}
    assert [e["job_id"] for e in ended] == cancelled and ended[0]["connected"] is True
    assert len(replaced) == 1 and replaced[0]["job_id"] == cancelled[0] and replaced[0]["by"] not in {e["worker"] for e in ended}
    assert len(submitted) == 3 and submitted[replaced[0]["by"]] not in cancelled  # a new job, under a new worker name
    assert set(submitted.values()) <= set(slurm_cluster.submitted_job_ids())

    assert embedded.ids().tolist() == store.ids().tolist() and embedded.n_rows == N_ROWS
    np.testing.assert_allclose(embedded.take(np.arange(N_ROWS)), store.take(np.arange(N_ROWS)), atol=1e-5)
    assert not list(out.glob(".tmp-*")) and not list(out.glob(".*.done.json"))
    job = embedded.manifest["job"]
    assert job["tasks"] == N_ROWS // 10
    assert 1 <= job["retried_tasks"] <= job["retries"]  # the tasks the cancelled job's worker held were run again


def test_jobs_that_keep_ending_before_their_worker_connects_stop_the_step_with_their_logs(slurm_cluster, tmp_path, monkeypatch):
    """The one job is cancelled mid-task; its replacements fail before starting a worker: the task is cancelled, the step never hangs."""
    import time as time_module

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("THRESHER_SLURM_POLL_INTERVAL", "1")
    started = tmp_path / "first-job-started"
    prologue = [f"if [ -e {started} ]; then echo 'no worker on this node' >&2; exit 3; fi", f"touch {started}"]
    executor = Executor.from_settings(slurm=str(write_config(tmp_path / "slurm.yaml", job_script_prologue=prologue)), workers=1, progress=False)
    began = time.monotonic()
    with pytest.raises(SlurmJobError) as error:
        with executor.started():
            client = executor.dask
            job_id = next(iter(client.cluster.workers.values())).job_id
            threading.Timer(1.0, slurm_cluster.cancel, [job_id]).start()
            executor.map(time_module.sleep, [(120,)])
    assert time.monotonic() - began < 90
    message = str(error.value)
    assert re.search(r"3 SLURM worker jobs of the SLURM config \S+slurm.yaml in a row ended before their Dask worker connected", message)
    logs = re.findall(r"log (\S+\.err)", message)
    assert len(logs) == 3 and all("no worker on this node" in Path(p).read_text() for p in logs)
    slurm_cluster.wait_until_queue_empty(30)


@pytest.mark.parametrize("change, says", [
    (lambda node: {"queue": "no-such-partition"}, "Invalid partition name specified"),
    (lambda node: {"memory": f"{4 * node.memory_mb // 1000}GB"}, "Requested node configuration is not available"),
], ids=["no-such-partition", "more-memory-than-the-node"])
def test_a_job_sbatch_refuses_is_an_error_at_once(slurm_cluster, tmp_path, monkeypatch, change, says):
    monkeypatch.chdir(tmp_path)
    executor = Executor.from_settings(slurm=str(write_config(tmp_path / "slurm.yaml", **change(slurm_cluster))), workers=2, progress=False)
    began = time.monotonic()
    with pytest.raises(SlurmJobError, match=rf"sbatch refused the worker jobs of the SLURM config \S+slurm.yaml: .*{says}"):
        with executor.started():
            pass
    assert time.monotonic() - began < 30
    assert slurm_cluster.queue() == []


def test_jobs_that_never_start_time_out_naming_slurms_reason_and_are_cancelled(slurm_cluster, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("THRESHER_SLURM_STARTUP_TIMEOUT", "4")
    monkeypatch.setenv("THRESHER_SLURM_POLL_INTERVAL", "1")
    config = write_config(tmp_path / "slurm.yaml", cores=slurm_cluster.cpus + 1)  # more cores than the node: pending for ever
    began = time.monotonic()
    with pytest.raises(SlurmJobError) as error:
        with Executor.from_settings(slurm=str(config), workers=2, progress=False).started():
            pass
    assert 4 <= time.monotonic() - began < 30
    message = str(error.value)
    assert "started within 4 s (THRESHER_SLURM_STARTUP_TIMEOUT sets it)" in message
    assert len(re.findall(r"job \d+ PENDING \(PartitionConfig: ", message)) == 2 and "the jobs were cancelled" in message
    slurm_cluster.wait_until_queue_empty(30)
    job_ids = re.findall(r"job (\d+) PENDING", message)
    assert {slurm_cluster.job_state(j) for j in job_ids} == {"CANCELLED"}


def test_jobs_that_all_fail_before_a_worker_starts_are_an_error_naming_their_logs(slurm_cluster, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("THRESHER_SLURM_POLL_INTERVAL", "1")
    config = write_config(tmp_path / "slurm.yaml", job_script_prologue=["echo 'python: command not found' >&2", "exit 127"])
    began = time.monotonic()
    with pytest.raises(SlurmJobError) as error:
        with Executor.from_settings(slurm=str(config), workers=2, progress=False).started():
            pass
    assert time.monotonic() - began < 60
    message = str(error.value)
    assert message.startswith(f"Every SLURM worker job of the SLURM config {config} ended before its Dask worker connected: job ")
    logs = re.findall(r"job \d+ FAILED \(NonZeroExitCode\); log (\S+\.err)", message)
    assert len(logs) == 2 and all(Path(p).parent == tmp_path / "slurm-logs" for p in logs)
    assert all("python: command not found" in Path(p).read_text() for p in logs)
    slurm_cluster.wait_until_queue_empty(30)


def test_cli_reports_a_refused_job_in_one_line_with_exit_1_and_leaves_nothing(slurm_cluster, tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"uid": f"r{i}", "instruction": f"row {i}", "response": "ok"}) + "\n" for i in range(3)))
    config = write_config(tmp_path / "slurm.yaml", queue="no-such-partition")
    done = run_cli("embed", "--pool", str(pool), "--out", str(tmp_path / "emb"), "--slurm", str(config), "--workers", "2", *EMBED_ARGS, cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "sbatch refused the worker jobs" in lines[0] and "invalid partition specified: no-such-partition" in lines[0], done.stderr
    assert not (tmp_path / "emb").exists()
    assert slurm_cluster.queue() == []
