"""An existing Dask cluster (scheduler and workers started as separate processes), worker resources, and a GPU SLURM config's job script.

The scheduler and two workers are started with the ``dask`` command line, as an
operator would on a cluster; the ``thresher`` command connects to them with
``--scheduler`` and must give what the in-process run gives. One worker
declares ``GPU=1``: embedding tasks submitted with ``--worker-resources GPU=1``
must all run there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from distributed import Client, get_task_stream

import thresher
from thresher.exceptions import ParameterError
from thresher.jobs.cluster import make_slurm_cluster
from thresher.pipeline.select import select_rds
from thresher.jobs.executor import Executor

TEXT = "{instruction}\n\n{response}"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _dask(*args: str, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "dask", *args], stdout=out, stderr=subprocess.STDOUT, env={**ENV, **(env or {})})


def _wait_for(condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _stop(processes: list[subprocess.Popen]) -> list[int]:
    """Stop the processes we started (workers first) and every process they started; return all their pids."""
    family = []
    for p in processes:
        try:
            family += [p.pid] + [c.pid for c in psutil.Process(p.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            family.append(p.pid)
    for p in processes:
        p.terminate()
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=30)
    for pid in family:  # a worker process its nanny failed to stop
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass
    return family


@pytest.fixture(scope="module")
def external_cluster(tmp_path_factory):
    """``dask scheduler`` on a free port and two ``dask worker`` processes, one declaring GPU=1."""
    tmp = tmp_path_factory.mktemp("external")
    scheduler_file = tmp / "scheduler.json"
    processes = [_dask("scheduler", "--port", "0", "--no-dashboard", "--scheduler-file", str(scheduler_file), log=tmp / "scheduler.log")]
    try:
        _wait_for(lambda: scheduler_file.is_file() and scheduler_file.stat().st_size > 0, "the scheduler file")
        address = json.loads(scheduler_file.read_text())["address"]
        common = ("--scheduler-file", str(scheduler_file), "--nthreads", "1", "--no-dashboard", "--memory-limit", "0")
        processes.append(_dask("worker", *common, "--name", "plain", log=tmp / "plain.log"))
        processes.append(_dask("worker", *common, "--name", "gpu", "--resources", "GPU=1", log=tmp / "gpu.log"))
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
            workers = client.scheduler_info(n_workers=-1)["workers"]
            by_name = {w["name"]: a for a, w in workers.items()}
            yield {"address": address, "client": client, "plain": by_name["plain"], "gpu": by_name["gpu"], "tmp": tmp}
    finally:
        pids = _stop(processes[::-1])
        leaked = [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
        assert not leaked, f"processes left running: {leaked}"


def _write_pool(path: Path, n: int) -> Path:
    from thresher.data import read_demo_pool

    rows = []
    for row in read_demo_pool(n):
        turns = [m["content"] for m in row["messages"]]
        rows.append({"uid": row["id"], "instruction": turns[0], "response": " ".join(turns[1:]) or turns[0]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _thresher(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "thresher", *args], capture_output=True, text=True, env=ENV, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A 60-row pool and its store embedded in this process: what the cluster runs must reproduce."""
    tmp = tmp_path_factory.mktemp("reference")
    pool = _write_pool(tmp / "pool.jsonl", 60)
    store = thresher.embed(str(pool), tmp / "emb", text=TEXT, id_column="uid", partition_rows=15, max_length=64, executor=Executor.in_process(progress=False))
    return pool, store


EMBED_ARGS = ("--text", TEXT, "--id-column", "uid", "--partition-rows", "15", "--max-length", "64", "--quiet")


def test_cli_embed_and_rds_on_an_existing_scheduler_equal_the_in_process_run(external_cluster, reference):
    pool, local_store = reference
    tmp, address, client = external_cluster["tmp"], external_cluster["address"], external_cluster["client"]
    with get_task_stream(client=client) as stream:
        out = _thresher("embed", "--pool", str(pool), "--out", str(tmp / "emb"), "--scheduler", address, *EMBED_ARGS)
    assert "embedded 60 rows" in out
    store = thresher.open_embedding_store(tmp / "emb")
    assert store.ids().tolist() == local_store.ids().tolist()
    np.testing.assert_allclose(store.take(np.arange(60)), local_store.take(np.arange(60)), atol=1e-5)
    assert store.fingerprint == local_store.fingerprint
    ran_on = {t["worker"] for t in stream.data if t["key"].startswith("embed-")}
    assert len([t for t in stream.data if t["key"].startswith("embed-")]) == 4
    assert ran_on <= {external_cluster["plain"], external_cluster["gpu"]}

    targets = tmp / "targets.jsonl"
    rows = [json.loads(line) for line in pool.read_text().splitlines()]
    targets.write_text("".join(json.dumps({**r, "uid": f"t{i}"}) + "\n" for i, r in enumerate(rows[5:8])))
    out = _thresher("select", "rds", "--pool-embeddings", str(tmp / "emb"), "--targets", f"near={targets}", "--budget", "12",
                    "--out", str(tmp / "rds"), "--scheduler", address, "--quiet")
    assert "selected 12 of 60 rows" in out
    on_cluster = thresher.open_curated(tmp / "rds").to_table()
    in_process = select_rds(local_store.path, {"near": str(targets)}, tmp / "rds-local", budget=12, executor=Executor.in_process(progress=False)).to_table()
    assert on_cluster.column("id").to_pylist() == in_process.column("id").to_pylist()
    np.testing.assert_allclose(on_cluster.column("score").to_numpy(), in_process.column("score").to_numpy(), atol=1e-6)
    # the target rows themselves are in the pool: each is its own nearest neighbour (cosine 1), so they come first
    assert set(on_cluster.column("id").to_pylist()[:3]) == {r["uid"] for r in rows[5:8]}


def test_embed_tasks_needing_a_gpu_run_only_on_the_worker_declaring_one(external_cluster, reference):
    pool, local_store = reference
    tmp, address, client = external_cluster["tmp"], external_cluster["address"], external_cluster["client"]
    with get_task_stream(client=client) as stream:
        _thresher("embed", "--pool", str(pool), "--out", str(tmp / "emb-gpu"), "--scheduler", address, "--worker-resources", "GPU=1", *EMBED_ARGS)
    embed_tasks = [t for t in stream.data if t["key"].startswith("embed-")]
    assert len(embed_tasks) == 4 and {t["worker"] for t in embed_tasks} == {external_cluster["gpu"]}
    np.testing.assert_allclose(thresher.open_embedding_store(tmp / "emb-gpu").take(np.arange(60)), local_store.take(np.arange(60)), atol=1e-5)

    with pytest.raises(ParameterError, match=r"'TPU'.*none of the cluster's 2 workers.*GPU=1"):
        thresher.embed(str(pool), tmp / "emb-tpu", text=TEXT, id_column="uid", executor=Executor.on_client(client, progress=False), resources={"TPU": 1})
    with pytest.raises(ParameterError, match="'resources'"):
        thresher.embed(str(pool), tmp / "emb-bad", text=TEXT, id_column="uid", executor=Executor.on_client(client, progress=False), resources={"GPU": 0})
    assert not (tmp / "emb-tpu").exists()


def _documented_slurm_config(marker: str) -> dict:
    """A SLURM YAML shown in README's SLURM section (the fenced block after ``<!-- marker``): the test builds what users are told to write."""
    import yaml

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index(f"<!-- {marker}") :]
    start = section.index("```yaml") + len("```yaml")
    return yaml.safe_load(section[start : section.index("```", start)])


def test_documented_gpu_slurm_config_builds_a_cluster_whose_job_script_asks_for_the_gpu(tmp_path, monkeypatch):
    """Only the job script is checked here (the test SLURM cluster has no GPU): tests/integration/test_slurm.py submits README's CPU config."""
    import yaml
    from dask.utils import format_bytes, parse_bytes

    documented = _documented_slurm_config("slurm-gpu-config")
    assert documented["worker_extra_args"] == ["--resources", "GPU=1"] and documented["job_extra_directives"] == ["--gres=gpu:1"]
    monkeypatch.chdir(tmp_path)  # log_directory is relative to where thresher runs, and made when the cluster is built
    config = tmp_path / "slurm.yaml"
    config.write_text(yaml.safe_dump(documented))
    cluster = make_slurm_cluster(config)
    try:
        script = cluster.job_script()
        cluster.scale(0)
        assert not cluster.worker_spec and not cluster.workers  # building and scaling to 0 submits nothing
        assert cluster.scheduler_spec["options"]["dashboard_address"] == ":0"  # no fixed port shared by a login node's users
    finally:
        cluster.close()
    memory = parse_bytes(documented["memory"])
    log_directory = documented["log_directory"]
    expected = [f"#SBATCH -p {documented['queue']}", f"#SBATCH -A {documented['account']}", "#SBATCH -n 1",
                f"#SBATCH --cpus-per-task={documented['cores']}", f"#SBATCH --mem={int(np.ceil(memory / 2**30))}G",
                f"#SBATCH -t {documented['walltime']}", "#SBATCH --gres=gpu:1",
                f"#SBATCH -e {log_directory}/dask-worker-%J.err", f"#SBATCH -o {log_directory}/dask-worker-%J.out"]
    for line in expected:
        assert line in script.splitlines(), (line, script)
    assert (tmp_path / log_directory).is_dir()
    worker_command = script.strip().splitlines()[-1]
    assert "distributed.cli.dask_worker" in worker_command
    assert "--resources GPU=1" in worker_command and f"--nthreads {documented['cores']}" in worker_command
    assert f"--memory-limit {format_bytes(memory).replace(' ', '')}" in worker_command


def test_a_worker_over_its_memory_limit_stops_the_step_that_caused_it_with_the_figure(tmp_path, reference, minilm_path):
    """A worker that outgrows its memory limit (its nanny kills it) ends `thresher run` with exit 1 and one line naming the
    step, the limit and what to change: no hang, no traceback, no manifest."""
    import yaml
    from dask.utils import format_bytes, parse_bytes

    pool, _ = reference
    scheduler_file = tmp_path / "scheduler.json"
    # the scheduler gives up on a task after one worker death (Dask's default of 3 deaths only makes the test slower)
    processes = [_dask("scheduler", "--port", "0", "--no-dashboard", "--scheduler-file", str(scheduler_file), log=tmp_path / "scheduler.log",
                       env={"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"})]
    try:
        _wait_for(lambda: scheduler_file.is_file() and scheduler_file.stat().st_size > 0, "the scheduler file")
        address = json.loads(scheduler_file.read_text())["address"]
        # loading torch and the model takes a worker well past 300 MB
        processes.append(_dask("worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1", "--no-dashboard",
                               "--memory-limit", "300MB", log=tmp_path / "worker.log"))
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(1, timeout=120)
        spec = {"name": "memory", "pool": {"path": str(pool), "id_column": "uid", "text": TEXT, "partition_rows": 30},
                "embedding": {"model": minilm_path, "max_length": 64}, "index": {"type": "flat"},
                "steps": [{"step": "rds", "budget": 10, "targets": "bundled:demo_targets.jsonl", "target_task_column": "task"}],
                "report": {"html": False}}
        (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
        out = tmp_path / "run"
        done = subprocess.run([sys.executable, "-m", "thresher", "run", str(tmp_path / "spec.yaml"), "--out", str(out), "--scheduler", address,
                               "--quiet"], capture_output=True, text=True, env=ENV, timeout=300)
        assert done.returncode == 1, done.stdout + done.stderr
        line = done.stderr.strip().splitlines()[-1]
        assert "Traceback" not in done.stderr
        assert line.startswith("error: step 'embed': the worker running its task") and "died 1 time" in line, line
        assert f"each worker may hold {format_bytes(parse_bytes('300MB'))}" in line and "--memory-limit" in line, line
        assert "exceeded 95% memory budget" in (tmp_path / "worker.log").read_text()  # it was its memory, as the line says
        assert not (out / "manifest.json").exists() and not (out / "embeddings" / "manifest.json").exists()
    finally:
        _stop(processes[::-1])



def _clustered_pool(tmp: Path, n: int, dim: int = 24) -> tuple[Path, Path, Path]:
    """A pool (uid, text, source, label: one class rare) with an imported store of topic-clustered vectors holding near-duplicates,
    and a target store of rows near two topics."""
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((12, dim))
    topic = rng.integers(0, 12, n)
    x = centres[topic] + 0.6 * rng.standard_normal((n, dim))
    x[1::9] = x[0::9][: len(x[1::9])] + 0.02 * rng.standard_normal((len(x[1::9]), dim))  # near-duplicates
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.where(rng.random(n) < 0.1, "rare", np.where(rng.random(n) < 0.5, "a", "b"))
    pool = tmp / "pool.jsonl"
    pool.write_text("".join(json.dumps({"uid": f"r{i}", "text": f"row {i}", "source": f"s{i % 4}", "label": str(labels[i])}) + "\n"
                            for i in range(n)))
    np.save(tmp / "vectors.npy", x.astype(np.float32))
    (tmp / "ids.txt").write_text("".join(f"r{i}\n" for i in range(n)))
    thresher.import_embeddings(tmp / "vectors.npy", tmp / "store", ids=tmp / "ids.txt", model="generated")
    t = centres[[2, 7]].repeat(5, axis=0) + 0.3 * rng.standard_normal((10, dim))
    np.save(tmp / "targets.npy", (t / np.linalg.norm(t, axis=1, keepdims=True)).astype(np.float32))
    (tmp / "target-ids.txt").write_text("".join(f"t{i}\n" for i in range(10)))
    thresher.import_embeddings(tmp / "targets.npy", tmp / "targets", ids=tmp / "target-ids.txt", model="generated")
    return pool, tmp / "store", tmp / "targets"


def test_a_whole_spec_on_the_existing_cluster_selects_what_the_in_process_run_selects(external_cluster, tmp_path):
    """Every step of one spec (SemDeDup, RDS+ with a source cap, SMOTE, B3 in two levels) run on the `dask scheduler` +
    2 `dask worker` processes writes the same rows, in the same order, with the same columns as `--local`."""
    import pyarrow as pa
    import yaml

    from thresher.stores.manifest import read_manifest

    pool, store, targets = _clustered_pool(tmp_path, 1200)
    spec = {"name": "same", "pool": {"path": str(pool), "id_column": "uid", "text_column": "text", "partition_rows": 300},
            "embedding": {"store": str(store)}, "index": {"type": "IVF8,Flat"},
            "steps": [{"step": "semdedup", "name": "dedup", "n_clusters": 6, "eps": 0.05},
                      {"step": "rds", "budget": 400, "targets": {"near": str(targets)}, "group_column": "source", "group_quotas": {"s0": 40}},
                      {"step": "smote", "name": "balanced", "input": "rds", "labels": "label", "k_neighbors": 3},
                      {"step": "batches", "name": "b3", "input": "dedup", "batch_size": 64, "community_size": 8, "rank_window": [2, 12],
                       "partition": "two_level", "part_rows": 300}],
            "report": {"html": False}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    runs = {}
    for where, args in (("local", ("--local",)), ("cluster", ("--scheduler", external_cluster["address"]))):
        _thresher("run", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / where), *args, "--quiet")
        runs[where] = read_manifest(tmp_path / where, "run")
    assert [s["fingerprint"] for s in runs["local"]["steps"]] == [s["fingerprint"] for s in runs["cluster"]["steps"]]
    steps = {s["name"]: s for s in runs["cluster"]["steps"]}
    assert {"dedup", "rds", "balanced", "b3"} <= set(steps)
    for step in runs["local"]["steps"]:
        if step["name"] not in {"dedup", "rds", "balanced", "b3"}:
            continue
        a, b = (thresher.open_curated(tmp_path / where / step["dir"]).to_table() for where in ("local", "cluster"))
        assert a.num_rows > 0 and a.schema == b.schema, step["step"]
        assert a.equals(b), f"step {step['step']}: the cluster's rows differ from the in-process run's"
    removed = [pa.ipc.open_stream(tmp_path / where / steps["dedup"]["dir"] / "removed.arrow").read_all() for where in ("local", "cluster")]
    assert removed[0].num_rows > 0 and removed[0].equals(removed[1])  # the injected near-duplicates, found alike
    summary = read_manifest(tmp_path / "cluster" / steps["b3"]["dir"])["summary"]
    assert summary["partition"] == "two_level" and summary["n_parts"] > 1
