"""How many threads native code uses (FAISS's OpenMP, the BLAS and OpenMP pools of numpy, FAISS and torch), and who decides.

Why this module exists (issue 19). Dask's nanny writes
``OMP_NUM_THREADS=MKL_NUM_THREADS=OPENBLAS_NUM_THREADS=1``
(``distributed.nanny.pre-spawn-environ``) into the ``os.environ`` of the
process that runs it, before spawning each worker, so that the worker starts
with them. For a :class:`distributed.LocalCluster` that process is the driver:
a native library first loaded in the driver afterwards reads 1 and runs
single-threaded for the rest of the process. FAISS is imported lazily, so
SemDeDup's k-means in the driver ran on one core once a local cluster had
started (measured on 2 cores: ``faiss.omp_get_max_threads()`` 2 before
``LocalCluster(...)``, 1 when FAISS is imported after it; a Dask run took 70 s
against 42 s in-process).

The policy, in two rules:

- **The driver keeps its own environment.** A local cluster thresher starts
  (:func:`thresher.jobs.cluster.dask_client`) takes the thread variables out
  of the nanny's pre-spawn environment and gives them to each worker through
  the worker's own environment instead (:func:`local_cluster_options`), so the
  driver's ``os.environ`` never changes: its libraries use the cores the
  driver was given (all of them, or what the user set).
- **A task on a worker uses its worker's share of the host's cores**: the
  host's cores divided among the worker processes on that host, then among
  each worker's task threads (:func:`thresher.jobs.cluster.cores_per_worker`).
  :class:`thresher.jobs.executor.Executor` sets it at the start of every task
  (:func:`run_with_threads`), whatever the environment the worker process
  inherited (a ``dask worker`` started by hand has ``OMP_NUM_THREADS=1``).

Results are not meant to depend on these numbers: SemDeDup's decisions of
record are computed with a fixed summation order (see
:mod:`thresher.selectors.semdedup`), and every k-means thresher trains
(SemDeDup's, the index's IVF lists, SMOTE's and B3's lists) is the same bits
for any thread count (:mod:`thresher.search.kmeans`); FAISS's own k-means was
measured to give other centroids with 2 threads than with 1 or 4
(``bench/bench_semdedup.py --threads-check``). numpy's OpenBLAS float32
products change in their last bits with its thread count, so thresher's own
searches, :func:`thresher.search.exact_search` (B3's teacher search over
subsets, SMOTE, the recall check) and :class:`thresher.search.GroupedIVFSearch`
(B3 and SMOTE over IVF-Flat indexes), use them only to find candidates: the
lists probed, which rows are the k nearest and their order are decided from
float64 keys with a fixed summation order, ties to the lower position, with a
worst-case float32 error bound so that no candidate is missed
(:mod:`thresher.search.of_record`); they too are the same bits for any thread
count (``tests/unit/search/test_search_threads.py``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

#: The environment variables OpenMP, OpenBLAS and MKL read when they are loaded.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

#: glibc malloc settings Dask's nanny writes for its workers (``MALLOC_TRIM_THRESHOLD_=65536``). Setting any of
#: them turns off glibc's dynamic mmap threshold, so every temporary array over 128 KiB is mapped and unmapped
#: again: SemDeDup's per-cluster work took 9.8 s on a local cluster's worker against 5.4 s without it (200k rows,
#: 1,000 clusters, measured issue 19). Workers of a cluster thresher starts run with glibc's defaults.
ALLOCATOR_VARIABLES = ("MALLOC_TRIM_THRESHOLD_",)

#: (threads, modules loaded) of the last :func:`set_native_threads` in this process: unchanged, nothing to redo.
_APPLIED: tuple[int, int] | None = None


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def native_threads() -> dict[str, int]:
    """The threads each native pool of this process would use now: ``faiss`` (its OpenMP) and, per library
    threadpoolctl finds loaded, ``"<api>:<file name>"`` (``blas:libscipy_openblas64_….so``, ``openmp:libgomp….so``)."""
    import faiss
    from threadpoolctl import threadpool_info

    out = {"faiss": int(faiss.omp_get_max_threads())}
    for pool in threadpool_info():
        out[f"{pool['user_api']}:{os.path.basename(pool['filepath'])}"] = int(pool["num_threads"])
    return out


def set_native_threads(n: int) -> None:
    """Make FAISS and every BLAS and OpenMP pool loaded in this process use ``n`` threads.

    Cheap when nothing changed since the last call (same ``n``, no module imported since): a task calls it each time.
    """
    global _APPLIED
    n = max(1, int(n))
    key = (n, len(sys.modules))
    if _APPLIED == key:
        return
    import faiss
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(n)
    threadpool_limits(limits=n)  # every pool loaded now, process-wide (not a context: it stays)
    _APPLIED = (n, len(sys.modules))


_CONTROLLER: tuple[int, Any] | None = None


@contextmanager
def one_blas_thread(when: bool = True) -> Iterator[None]:
    """BLAS on one thread inside the block (when ``when``): for loops of small matrix products.

    A product with a side of a few hundred rows finishes before BLAS threads
    are worth waking: two OpenBLAS threads took 7x (80 x 384 by 384 x 80) to
    25x (80 x 65 by 65 x 1,300) as long as one on a 2-core machine shared with
    other jobs (measured, issue 19); on an idle machine they gain little on
    such sizes. Switching costs ~40 us (a cached threadpoolctl controller).
    """
    global _CONTROLLER
    if not when:
        yield
        return
    from threadpoolctl import ThreadpoolController

    if _CONTROLLER is None or _CONTROLLER[0] != len(sys.modules):
        _CONTROLLER = (len(sys.modules), ThreadpoolController())
    with _CONTROLLER[1].limit(limits=1, user_api="blas"):
        yield


def local_cluster_options(cores_per_worker: int) -> tuple[dict[str, Any], dict[str, str]]:
    """(the Dask config to start a local cluster under, the workers' ``env=``) so the driver's environment stays as it is.

    The thread variables leave ``distributed.nanny.pre-spawn-environ`` (which the nanny writes into the
    driver's ``os.environ``) and go to the worker's own environment, set with the worker's share of cores.
    The allocator variables (:data:`ALLOCATOR_VARIABLES`) leave it too and are not set at all.
    """
    config = {f"distributed.nanny.pre-spawn-environ.{name}": None for name in (*THREAD_VARIABLES, *ALLOCATOR_VARIABLES)}
    return config, {name: str(max(1, int(cores_per_worker))) for name in THREAD_VARIABLES}


def slurm_worker_prologue() -> list[str]:
    """Job-script lines that keep :data:`ALLOCATOR_VARIABLES` out of the environment a SLURM job's nanny gives its worker.

    The nanny reads ``distributed.nanny.pre-spawn-environ`` from the job's Dask config; an entry set to None is
    not written (``DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON`` merges into the defaults, other entries stay).
    """
    entries = ", ".join(f"{name!r}: None" for name in ALLOCATOR_VARIABLES)
    return [f'export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON="{{{entries}}}"']


def worker_threads(threads: Mapping[str, int] | None) -> int | None:
    """This worker's share of cores from ``threads`` ({worker address: threads}); None outside a worker.

    A worker missing from the map (one that joined after it was made) gets its host's cores divided by its task threads.
    """
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return None
    n = (threads or {}).get(worker.address)
    return int(n) if n else max(1, available_cores() // max(1, worker.state.nthreads))


def run_with_threads(fn: Callable[..., Any], *args: Any, _thresher_threads: Mapping[str, int] | None = None, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a Dask task, after setting this worker's native thread count (:func:`worker_threads`)."""
    n = worker_threads(_thresher_threads)
    if n is not None:
        set_native_threads(n)
    return fn(*args, **kwargs)


__all__ = ["ALLOCATOR_VARIABLES", "THREAD_VARIABLES", "available_cores", "local_cluster_options", "slurm_worker_prologue", "native_threads", "one_blas_thread", "run_with_threads", "set_native_threads",
           "worker_threads"]
