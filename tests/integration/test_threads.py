"""Native thread counts once a local cluster runs (issue 19): the driver keeps its own, a task gets its worker's share.

Dask's nanny writes OMP_NUM_THREADS=1 into the environment of the process that
runs it; for a LocalCluster that is the driver, and FAISS imported afterwards
ran single-threaded there. Each check runs in a fresh interpreter, so FAISS is
imported for the first time after the cluster started, as in a real run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from thresher.threads import available_cores

SCRIPT = textwrap.dedent("""
    import json, os, sys
    from thresher.jobs.cluster import threads_per_task
    from thresher.jobs.executor import Executor
    from thresher.threads import native_threads

    def report():
        from distributed import get_worker
        return get_worker().address, native_threads(), os.environ.get("MALLOC_TRIM_THRESHOLD_")

    if __name__ == "__main__":
        before = os.environ.get("OMP_NUM_THREADS")
        with Executor(workers=int(sys.argv[1]), progress=False) as executor:
            import faiss  # first loaded now, with the cluster running
            driver = {"env": os.environ.get("OMP_NUM_THREADS"), "env_before": before, "faiss": faiss.omp_get_max_threads(),
                      "malloc": os.environ.get("MALLOC_TRIM_THRESHOLD_")}
            tasks = executor.map(report, [()] * 4)
            share = threads_per_task(executor.dask)
        print(json.dumps({"driver": driver, "tasks": tasks, "share": share}))
""")


def run_script(tmp_path, workers: int, env: dict[str, str]) -> dict:
    script = tmp_path / "threads_check.py"
    script.write_text(SCRIPT, encoding="utf-8")
    out = subprocess.run([sys.executable, str(script), str(workers)], capture_output=True, text=True, env=env, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def fresh_faiss_threads(env: dict[str, str]) -> int:
    code = "import faiss; print(faiss.omp_get_max_threads())"
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=True).stdout)


def test_driver_keeps_its_threads_and_tasks_use_their_workers_share(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    result = run_script(tmp_path, 1, env)
    driver = result["driver"]
    assert driver["env"] is None and driver["env_before"] is None  # the nanny wrote nothing into the driver's environment
    assert driver["faiss"] == fresh_faiss_threads(env) == available_cores()  # as in a process that never started a cluster
    # one worker on this host: its task runs FAISS and every BLAS / OpenMP pool on all the host's cores (the nanny's default is 1)
    cores = available_cores()
    for address, threads, malloc in result["tasks"]:
        assert result["share"][address] == cores
        assert threads["faiss"] == cores and set(threads.values()) == {cores}, threads
        # glibc's own allocator settings: Dask's MALLOC_TRIM_THRESHOLD_ made every temporary array over 128 KiB an mmap
        assert malloc is None
    assert driver["malloc"] is None


def test_the_allocator_setting_is_what_makes_large_temporaries_slow(tmp_path):
    """Why the workers run without MALLOC_TRIM_THRESHOLD_: with it set, glibc maps and unmaps every large
    temporary, so each one page-faults afresh (counted by the kernel, not timed)."""
    code = textwrap.dedent("""
        import resource, numpy as np
        x = np.ones((256, 384), dtype=np.float32)  # 384 KiB temporaries, over the 128 KiB default mmap threshold
        for _ in range(50):
            (x * 2.0).sum()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(400):
            (x * 2.0).sum()
        print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """)
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    faults = {}
    for setting in (None, "65536"):
        run_env = env if setting is None else {**env, "MALLOC_TRIM_THRESHOLD_": setting}
        faults[setting] = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=run_env, timeout=120,
                                             check=True).stdout)
    assert faults["65536"] > 400 * 50  # each temporary's ~96 pages faulted in again
    assert faults[None] < 400  # glibc's dynamic threshold keeps them in the heap after the first


def test_two_workers_share_the_cores_and_a_users_setting_is_kept(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the user's own setting for the driver stays the driver's
    result = run_script(tmp_path, 2, env)
    assert result["driver"]["env"] == "1" and result["driver"]["faiss"] == 1
    share = max(1, available_cores() // 2)
    assert set(result["share"].values()) == {share}
    assert {threads["faiss"] for _, threads, _ in result["tasks"]} == {share}
