"""Soak: hundreds of small jobs against one local cluster, watching for leaks; baseline: each job on a fresh cluster.

Jobs alternate between an embedding job (40 short chat turns from the
chitchat-dataset package, 2 partitions, real all-MiniLM-L6-v2, fresh output
directory) and an RDS+ selection (budget 20 from a 400-row store of the same
texts in 20 shards, Dask scoring and staging, fresh output directory); each
output is deleted after its job. The run stops after ``--jobs`` jobs or
``--seconds`` seconds, whichever comes first. Recorded: per-job latency by
kind, and after warm-up (the first 4 jobs) and at the end the cluster's
worker count and pids, the driver's open file descriptors, threads and
resident memory, and the largest worker's resident memory and descriptors.
The baseline runs the same two jobs ``--fresh-jobs`` times, each on its own
new LocalCluster (start, model load, job, close), as a script calling the API
without a shared client does.

    python bench/bench_soak.py --jobs 1000 --seconds 900
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import chitchat_utterances, machine_line, update_benchmarks_md  # noqa: E402
from thresher.jobs.executor import Executor

WARMUP_JOBS = 4


def write_pool(path: Path, n: int, offset: int = 0) -> Path:
    texts = chitchat_utterances()[offset : offset + n]
    path.write_text("".join(json.dumps({"uid": f"c{offset + i}", "text": t}) + "\n" for i, t in enumerate(texts)), encoding="utf-8")
    return path


def snapshot(client) -> dict:
    import psutil

    def worker_state(dask_worker):
        import os

        import psutil

        me = psutil.Process()
        return os.getpid(), me.memory_info().rss, me.num_fds(), len(dask_worker.digests_total)

    me = psutil.Process()
    workers = client.run(worker_state)
    return {
        "workers": len(client.scheduler_info(n_workers=-1)["workers"]),
        "worker_pids": sorted(w[0] for w in workers.values()),
        "driver_fds": me.num_fds(),
        "driver_threads": me.num_threads(),
        "driver_rss_mib": me.memory_info().rss / 2**20,
        "worker_rss_mib": max(w[1] for w in workers.values()) / 2**20,
        "worker_fds": max(w[2] for w in workers.values()),
        "worker_digests": max(w[3] for w in workers.values()),
    }


class Jobs:
    """The two small jobs, on a given client, each writing a fresh output that is then removed."""

    def __init__(self, folder: Path, client):
        import thresher

        self.folder = folder
        self.pool = write_pool(folder / "pool.jsonl", 40)
        big = write_pool(folder / "big.jsonl", 400, offset=1000)
        store_dir = folder / "store"
        if not store_dir.exists():
            thresher.embed(str(big), store_dir, text="{text}", id_column="uid", partition_rows=20, executor=Executor.on_client(client, progress=False))
        self.store = store_dir
        from thresher.stores import open_embedding_store

        vectors = open_embedding_store(store_dir).to_numpy()
        self.targets = {"a": vectors[:3], "b": vectors[200:205]}
        self.n = 0

    def run(self, kind: str, client) -> float:
        import thresher
        from thresher.pipeline.select import select_rds

        out = self.folder / f"out-{self.n}"
        self.n += 1
        started = time.perf_counter()
        if kind == "embed":
            result = thresher.embed(str(self.pool), out, text="{text}", id_column="uid", partition_rows=20, executor=Executor.on_client(client, progress=False))
        else:
            result = select_rds(self.store, self.targets, out, budget=20, executor=Executor.on_client(client, progress=False))
        seconds = time.perf_counter() - started
        if result.manifest["job"]["retries"] != 0:
            raise RuntimeError(f"a {kind} job re-ran tasks: {result.manifest['job']}")
        shutil.rmtree(out)
        return seconds


def soak(folder: Path, n_jobs: int, limit_s: float) -> dict:
    from thresher.jobs.cluster import dask_client

    latencies: dict[str, list[float]] = {"embed": [], "select_rds": []}
    with dask_client(workers=2, quiet=True) as client:
        jobs = Jobs(folder, client)
        started = time.perf_counter()
        settled = middle = None
        for i in range(n_jobs):
            if time.perf_counter() - started > limit_s:
                break
            kind = "embed" if i % 2 == 0 else "select_rds"
            latencies[kind].append(jobs.run(kind, client))
            if i + 1 == WARMUP_JOBS:
                settled = snapshot(client)
            if i + 1 == (n_jobs + WARMUP_JOBS) // 2:
                middle = snapshot(client)
        end = snapshot(client)
        wall = time.perf_counter() - started
    n = sum(map(len, latencies.values()))
    return {"latencies": latencies, "settled": settled, "middle": middle, "end": end, "wall": wall, "n": n}


def fresh(folder: Path, n_jobs: int) -> dict[str, list[float]]:
    from thresher.jobs.cluster import dask_client

    with dask_client(workers=2, quiet=True) as client:
        jobs = Jobs(folder, client)  # shares the prepared store: only the jobs are timed
    latencies: dict[str, list[float]] = {"embed": [], "select_rds": []}
    for i in range(n_jobs):
        kind = "embed" if i % 2 == 0 else "select_rds"
        started = time.perf_counter()
        with dask_client(workers=2, quiet=True) as client:
            jobs.run(kind, client)
        latencies[kind].append(time.perf_counter() - started)
    return latencies


def quantiles(values: list[float]) -> str:
    if not values:
        return "–"
    q = np.percentile(values, [50, 95])
    return f"{q[0]:.2f} / {q[1]:.2f} / {max(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=900.0, help="stop the soak after this long even if jobs remain")
    parser.add_argument("--fresh-jobs", type=int, default=6, help="jobs of the baseline, each on a new cluster")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(name, "1")
    with tempfile.TemporaryDirectory() as tmp:
        result = soak(Path(tmp), args.jobs, args.seconds)
        baseline = fresh(Path(tmp), args.fresh_jobs)
    s, m, e = result["settled"], result["middle"] or result["end"], result["end"]
    after = result["n"] - WARMUP_JOBS
    per_job = lambda key: (e[key] - s[key]) / after if after else 0.0  # noqa: E731
    half = (args.jobs + WARMUP_JOBS) // 2 if result["middle"] else result["n"]  # the soak may stop early on time

    def growth(key: str, a: dict, b: dict, n_a: int, n_b: int) -> str:
        return f"{(b[key] - a[key]) / (n_b - n_a):+.3f}" if n_b > n_a else "–"

    all_shared = [x for v in result["latencies"].values() for x in v[1:]]
    all_fresh = [x for v in baseline.values() for x in v]
    lines = [
        f"Command: `python bench/bench_soak.py --jobs {args.jobs} --seconds {args.seconds:g} --fresh-jobs {args.fresh_jobs}` ({machine_line()}).",
        "",
        "Jobs alternate: an embedding job (40 short chat turns, 2 partitions, all-MiniLM-L6-v2 on the workers) and an RDS+ "
        "selection (budget 20 of a 400-row store in 20 shards: 20 scoring tasks, 19 merges, staging tasks), each to a fresh "
        "output removed afterwards, all on one LocalCluster of 2 worker processes. Baseline: the same jobs each on a new "
        "LocalCluster (start, model load in the workers, job, close). Latency p50 / p95 / max in seconds.",
        "",
        f"Soak: {result['n']} jobs in {result['wall']:.0f} s ({result['n'] / result['wall']:.2f} jobs/s).",
        "",
        "| latency (s) | embed | select_rds | all |",
        "| --- | --- | --- | --- |",
        f"| one shared cluster (first job of each kind excluded) | {quantiles(result['latencies']['embed'][1:])} | "
        f"{quantiles(result['latencies']['select_rds'][1:])} | {quantiles(all_shared)} |",
        f"| a fresh cluster per job ({args.fresh_jobs} jobs) | {quantiles(baseline['embed'])} | {quantiles(baseline['select_rds'])} | "
        f"{quantiles(all_fresh)} |",
        "",
        f"Median speed-up of the shared cluster: {statistics.median(all_fresh) / statistics.median(all_shared):.1f}×.",
        "",
        f"| after {WARMUP_JOBS} jobs → after {result['n']} | workers | worker pids unchanged | driver fds | driver threads | driver RSS MiB | "
        "largest worker RSS MiB | largest worker fds |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
        f"| value | {s['workers']} → {e['workers']} | {'yes' if s['worker_pids'] == e['worker_pids'] else 'no'} | "
        f"{s['driver_fds']} → {e['driver_fds']} | {s['driver_threads']} → {e['driver_threads']} | "
        f"{s['driver_rss_mib']:.0f} → {e['driver_rss_mib']:.0f} | {s['worker_rss_mib']:.0f} → {e['worker_rss_mib']:.0f} | "
        f"{s['worker_fds']} → {e['worker_fds']} |",
        f"| per job after warm-up | | | {per_job('driver_fds'):+.3f} | {per_job('driver_threads'):+.3f} | "
        f"{per_job('driver_rss_mib'):+.3f} | {per_job('worker_rss_mib'):+.3f} | {per_job('worker_fds'):+.3f} |",
        "",
        f"Resident memory after {WARMUP_JOBS} / {half} / {result['n']} jobs: driver "
        f"{s['driver_rss_mib']:.0f} / {m['driver_rss_mib']:.0f} / {e['driver_rss_mib']:.0f} MiB "
        f"({growth('driver_rss_mib', s, m, WARMUP_JOBS, half)} then {growth('driver_rss_mib', m, e, half, result['n'])} MiB a job), "
        f"largest worker {s['worker_rss_mib']:.0f} / {m['worker_rss_mib']:.0f} / {e['worker_rss_mib']:.0f} MiB "
        f"({growth('worker_rss_mib', s, m, WARMUP_JOBS, half)} then {growth('worker_rss_mib', m, e, half, result['n'])} MiB a job). "
        "Dask's workers keep their fine performance metrics per span for their lifetime (`Worker.digests_total`), and every "
        f"job opens new spans: the largest worker held {s['worker_digests']:,} entries after warm-up and {e['worker_digests']:,} at "
        "the end. The driver process also runs the LocalCluster's scheduler, whose transition and event logs are bounded "
        "(1,000 of each kind).",
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        update_benchmarks_md("Soak: many small jobs on one cluster (issue 9)", body)


if __name__ == "__main__":
    main()
