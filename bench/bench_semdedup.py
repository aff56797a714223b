"""SemDeDup (issue 19): paper mode, exact mode, an exact oracle and SemHash 0.5 on the same vectors; placements; threads.

Data. The bundled demo pool (10,000 real chat rows) embedded with the bundled
all-MiniLM-L6-v2 (``--demo-store`` reuses a store; otherwise it is embedded
into ``--work``). "8k": its first 8,000 vectors. "200k": those 8,000 vectors
x 25 noisy copies each (x + N(0, 0.25^2 / dim) per coordinate, renormalised,
rows shuffled with a fixed seed): copies sit at cosine ~0.97 to their source
and ~0.94 to each other, so cosine 0.95 cuts through them (the held-out-like
set of issue 19). Each store comes with a jsonl pool so the CLI can run on it.

Variants, each in a fresh process (peak = anonymous RSS of the process and
its children, sampled every 50 ms; SemHash: its own ru_maxrss):

- thresher paper / exact: ``SemDeDup(mode=...).select(store)``, the Python API in this process;
- oracle: the plain definition computed apart, given exact mode's clustering (its keep order):
  every pair at cosine >= 1 - eps by a blockwise brute-force pass (float32 screen, float64
  decision), then the greedy keep; it also counts, for every variant's removed set, the kept
  pairs at or above the threshold and the removed rows without a kept row there;
- SemHash 0.5 approximate (usearch) and exact (basic), run by ``--semhash-python`` (the project's
  venv with the ``bench`` extra, or a venv of its own; exact only up to ``--semhash-exact-max`` rows);
- placements (paper and exact mode): ``thresher select semdedup`` with ``--local``, on the
  default local Dask cluster, and on an external ``dask scheduler`` + one ``dask worker
  --nthreads 2`` started here; their removed.arrow must be byte-identical, and equal the API's.

``--threads-check`` measures instead whether the answer changes with the
thread count (1, 2, 4 OpenMP and BLAS threads): SemDeDup's k-means centroids
and FAISS's own ``Kmeans`` on the same 100k rows (1,000 clusters, 25
iterations), the index build and search of ``Flat``, ``IVF256,Flat`` and
``HNSW32`` (the ``auto`` choices) on 50k rows, and every other k-means thresher
trains (the index's IVF lists, FAISS-trained against thresher-trained; SMOTE's
grouped IVF lists; B3's fine lists and part lists); it records the figures in
BENCHMARKS.md too.

    python bench/bench_semdedup.py --rows 8000 200000 --semhash-python /tmp/semhash-venv/bin/python
    python bench/bench_semdedup.py --threads-check
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PeakMemory, load_note, machine_line, run_variant, update_benchmarks_md  # noqa: E402

SCRIPT = Path(__file__).resolve()
COPIES, NOISE, BASE_ROWS = 25, 0.25, 8000
SECTION = "SemDeDup (issue 19)"


# -- data ------------------------------------------------------------------------------------------------------------


def demo_store(work: Path, given: str | None):
    import thresher
    from thresher.data import demo_pool_path
    from thresher.jobs.executor import Executor

    if given:
        return thresher.open_embedding_store(given)
    path = work / "demo-emb"
    if not (path / "manifest.json").is_file():
        thresher.embed(str(demo_pool_path()), path, id_column="id", messages_column="messages", max_length=128,
                       executor=Executor.in_process(progress=False))
    return thresher.open_embedding_store(path)


def write_store(path: Path, x: np.ndarray) -> None:
    """An embedding store of ``x`` (float32) with a jsonl pool of ids ``r<i>`` beside it, in 50k-row shards."""
    from thresher.stores import finalize_embedding_store, write_embedding_shard
    from thresher.stores.pool import open_pool

    if (path / "manifest.json").is_file():
        return
    path.mkdir(parents=True, exist_ok=True)
    pool_file = path.parent / f"{path.name}-pool.jsonl"
    pool_file.write_text("".join(json.dumps({"id": f"r{i}", "text": f"row {i}"}) + "\n" for i in range(len(x))))
    pool = open_pool(str(pool_file), id_column="id", partition_rows=50_000)
    shards = [write_embedding_shard(path, i, pool.read_partition(i, columns=[]).column("id"), x[50_000 * i : 50_000 * (i + 1)])
              for i in range(pool.n_partitions)]
    finalize_embedding_store(path, shards=shards, fingerprint=f"semdedup-bench-{path.name}", dim=x.shape[1], dtype="float32",
                             encoder={"normalize": True}, pool=pool.describe())
    np.save(path.parent / f"{path.name}.npy", x)


def make_data(work: Path, demo: str | None, rows: list[int]) -> dict[int, Path]:
    base = demo_store(work, demo).to_numpy()[:BASE_ROWS].astype(np.float32)
    out = {}
    for n in rows:
        path = work / f"s{n}"
        if n <= BASE_ROWS:
            x = base[:n]
        else:
            copies = -(-n // BASE_ROWS)
            rng = np.random.default_rng(19)
            x = np.repeat(base, copies, axis=0)[:n]
            x = x + (NOISE / np.sqrt(x.shape[1])) * rng.standard_normal(x.shape).astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            x = x[rng.permutation(n)]
        write_store(path, np.ascontiguousarray(x, dtype=np.float32))
        out[n] = path
    return out


# -- variants (each in a fresh process) -----------------------------------------------------------------------------


def variant_api(store: str, mode: str, n_clusters: int, eps: float, out: str) -> dict:
    from thresher import open_embedding_store
    from thresher.selectors.semdedup import SemDeDup

    store = open_embedding_store(store)
    SemDeDup(n_clusters=2, mode=mode).select(np.random.default_rng(0).normal(size=(64, 8)))  # one-off imports, as SemHash's are
    store.ids()
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        sel = SemDeDup(n_clusters=n_clusters, eps=eps, mode=mode, seed=0).select(store)
        seconds = time.perf_counter() - t0
    np.save(out + ".removed.npy", sel.removed.positions)
    np.save(out + ".centroids.npy", sel.centroids)
    return {"seconds": seconds, "peak_bytes": mem.peak, "removed": len(sel.removed), "edges": sel.summary.get("edges")}


def variant_oracle(store: str, centroids: str, eps: float, out: str) -> dict:
    """The plain definition, computed apart from thresher's exact mode: brute-force edges, then the greedy keep."""
    x = np.load(Path(store).parent / f"{Path(store).name}.npy").astype(np.float64)
    t0 = time.perf_counter()
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    c = np.load(centroids).astype(np.float64)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    t = 1.0 - eps
    n = len(x)
    cos = np.empty(n)
    for lo in range(0, n, 8192):
        s = x[lo : lo + 8192] @ c.T
        cos[lo : lo + 8192] = s.max(axis=1)
    x32 = x.astype(np.float32)
    a_parts, b_parts, s_parts = [], [], []
    for lo in range(0, n, 4096):
        for co in range(lo, n, 32_768):  # (4096 x 32768) float32 products at once: 512 MiB
            s32 = x32[lo : lo + 4096] @ x32[co : co + 32_768].T
            i, j = np.nonzero(s32 >= t - 1e-4)
            keep = j + co > i + lo
            i, j = i[keep] + lo, j[keep] + co
            exact = np.einsum("ij,ij->i", x[i], x[j])
            sure = exact >= t
            a_parts.append(i[sure])
            b_parts.append(j[sure])
            s_parts.append(exact[sure])
    a, b = np.concatenate(a_parts), np.concatenate(b_parts)
    order = np.lexsort((np.arange(n), cos))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    neighbours: list[list[int]] = [[] for _ in range(n)]
    for u, v in zip(a.tolist(), b.tolist()):
        neighbours[u].append(v)
        neighbours[v].append(u)
    kept = np.zeros(n, dtype=bool)
    for r in order.tolist():
        kept[r] = not any(kept[v] for v in neighbours[r])
    seconds = time.perf_counter() - t0
    np.save(out + ".removed.npy", np.flatnonzero(~kept))
    np.savez(out + ".edges.npz", a=a, b=b)
    return {"seconds": seconds, "removed": int((~kept).sum()), "edges": int(len(a))}


def variant_cli(store: str, mode: str, n_clusters: int, eps: float, out: str, where: str) -> dict:
    args = [sys.executable, "-m", "thresher", "select", "semdedup", "--pool-embeddings", store, "--out", out, "--n-clusters", str(n_clusters),
            "--eps", str(eps), "--mode", mode, "--seed", "0", "--quiet", "--overwrite"]
    if where == "local":
        args.append("--local")
    elif where != "dask":
        args += ["--scheduler", where]
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        subprocess.run(args, check=True, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
    digest = hashlib.sha256((Path(out) / "removed.arrow").read_bytes()).hexdigest()
    return {"seconds": seconds, "peak_bytes": mem.peak, "removed_sha256": digest}


def variant_threads(store: str) -> dict:
    """FAISS with 1, 2 and 4 OpenMP and BLAS threads: SemDeDup's k-means, and index build + search (Flat, IVF, HNSW)."""
    import faiss
    from threadpoolctl import threadpool_limits

    from thresher import open_embedding_store
    from thresher.selectors.semdedup import SemDeDup

    x = open_embedding_store(store).to_numpy()
    rng = np.random.default_rng(0)
    queries = x[rng.choice(len(x), 2000, replace=False)]
    out: dict[str, dict] = {}
    for threads in (1, 2, 4):
        faiss.omp_set_num_threads(threads)
        with threadpool_limits(threads):
            t0 = time.perf_counter()
            centroids = SemDeDup(n_clusters=1000).fit_centroids(x[:100_000], kmeans_seed=1)
            kmeans_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            km = faiss.Kmeans(x.shape[1], 1000, niter=25, seed=1, spherical=True, max_points_per_centroid=100_000, min_points_per_centroid=1)
            km.train(np.ascontiguousarray(x[:100_000] / np.linalg.norm(x[:100_000], axis=1, keepdims=True)))
            faiss_s = time.perf_counter() - t0
            found = {"semdedup_kmeans": hashlib.sha256(centroids.tobytes()).hexdigest()[:16], "semdedup_kmeans_s": round(kmeans_s, 1),
                     "faiss_kmeans": hashlib.sha256(km.centroids.tobytes()).hexdigest()[:16], "faiss_kmeans_s": round(faiss_s, 1)}
            for factory in ("Flat", "IVF256,Flat", "HNSW32"):
                index = faiss.index_factory(x.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
                if not index.is_trained:
                    index.train(x[:50_000])
                index.add(x[:50_000])
                _, labels = index.search(queries, 10)
                found[factory] = hashlib.sha256(labels.tobytes()).hexdigest()[:16]
            found.update(trainers(x))
            found.update(numpy_searches(x, queries))
            out[str(threads)] = found
    return out


def numpy_searches(x: np.ndarray, queries: np.ndarray) -> dict:
    """thresher's own searches, whose float32 BLAS products change with the thread count but whose decisions are
    made in float64 (issue 19): exact_search (B3's teacher search over subsets, SMOTE's, the recall check) and
    GroupedIVFSearch (B3 and SMOTE over IVF-Flat indexes), each on 50k rows, 2,000 queries, k = 131."""
    import faiss

    from thresher.search import GroupedIVFSearch, exact_search
    from thresher.search.kmeans import train_index

    def digest(*parts) -> str:
        return hashlib.sha256(b"".join(np.ascontiguousarray(p).tobytes() for p in parts)).hexdigest()[:16]

    rows = x[:50_000]
    index = faiss.index_factory(x.shape[1], "IVF256,Flat", faiss.METRIC_INNER_PRODUCT)
    train_index(index, rows, 1)  # thresher's lists, the same for any thread count: only the search is compared
    index.add(rows)
    jobs = {"exact_search (ip, k = 131)": lambda: digest(*exact_search(rows, queries, 131, metric="ip")),
            "exact_search (l2, k = 131)": lambda: digest(*exact_search(rows, queries, 131, metric="l2"))}
    for nprobe in (1, 8):
        faiss.extract_index_ivf(index).nprobe = nprobe
        grouped = GroupedIVFSearch.from_index(index)
        jobs[f"GroupedIVFSearch (IVF256, nprobe {nprobe}, k = 131)"] = lambda g=grouped: digest(g.search(queries, 131))
    found = {}
    for name, job in jobs.items():
        t0 = time.perf_counter()
        found[name] = job()
        found[name + "_s"] = round(time.perf_counter() - t0, 2)
    return found


def trainers(x: np.ndarray) -> dict:
    """Every k-means thresher trains besides SemDeDup's (issue 19), and FAISS's own IVF training for comparison: a digest
    of what each gives (centroids, lists or the index file) and its seconds."""
    import faiss

    from thresher.search import GroupedIVFSearch
    from thresher.search.kmeans import train_index
    from thresher.selectors.b3_partition import balanced_ivf, fine_lists

    def digest(*parts) -> str:
        return hashlib.sha256(b"".join(np.ascontiguousarray(p).tobytes() for p in parts)).hexdigest()[:16]

    def ivf_file(train) -> str:
        index = faiss.index_factory(x.shape[1], "IVF256,Flat", faiss.METRIC_INNER_PRODUCT)
        train(index)
        index.add(x[:50_000])
        return digest(faiss.serialize_index(index))

    unit = np.ascontiguousarray(x[:50_000] / np.linalg.norm(x[:50_000], axis=1, keepdims=True), dtype=np.float32)
    jobs = {
        "IVF256,Flat file, FAISS-trained lists": lambda: ivf_file(lambda index: index.train(x[:50_000])),
        "IVF256,Flat file, thresher lists (index build)": lambda: ivf_file(lambda index: train_index(index, x[:50_000], 1)),
        "grouped IVF lists (SMOTE class, 256 lists)": lambda: (lambda g: digest(g.centroids, *g.list_positions))(
            GroupedIVFSearch.train(x[:50_000], 256, 1, n_train=12_800, assign_block_rows=65_536)),
        "B3 fine lists (256 lists)": lambda: digest(*fine_lists(x[:20_000], 256, 1)),
        "B3 part IVF lists (balanced)": lambda: (lambda g: digest(g.centroids, *g.list_positions))(balanced_ivf(unit, 512, 1)),
    }
    found = {}
    for name, job in jobs.items():
        t0 = time.perf_counter()
        found[name] = job()
        found[name + "_s"] = round(time.perf_counter() - t0, 1)
    return found


# -- the run -------------------------------------------------------------------------------------------------------


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    a, b = set(a.tolist()), set(b.tolist())
    return len(a & b) / max(1, len(a | b))


def misses(removed: np.ndarray, n: int, edges: dict) -> tuple[int, int]:
    """(kept pairs at or above the threshold, removed rows without a kept row at or above it), from the oracle's edges."""
    kept = np.ones(n, dtype=bool)
    kept[removed] = False
    a, b = edges["a"], edges["b"]
    both = int((kept[a] & kept[b]).sum())
    has_twin = np.zeros(n, dtype=bool)
    has_twin[a[kept[b]]] = True
    has_twin[b[kept[a]]] = True
    return both, int((~kept & ~has_twin).sum())


def run_measured(cmd: list[str]) -> tuple[str, int]:
    """(stdout, peak anonymous RSS) of a child process, sampled every 50 ms (its own ru_maxrss would carry this
    process's peak over the exec)."""
    import psutil

    from _common import anon_rss

    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        peak = 0
        while proc.poll() is None:
            try:
                peak = max(peak, sum(anon_rss(p.pid) or 0 for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]))
            except psutil.Error:
                pass
            time.sleep(0.05)
        out, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"{cmd} failed: {err}")
    return out, peak


def start_external(work: Path) -> tuple[str, list[subprocess.Popen]]:
    scheduler_file = work / "scheduler.json"
    scheduler_file.unlink(missing_ok=True)
    procs = [subprocess.Popen([sys.executable, "-m", "dask", "scheduler", "--port", "0", "--no-dashboard", "--scheduler-file", str(scheduler_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    deadline = time.monotonic() + 120
    while not (scheduler_file.is_file() and scheduler_file.stat().st_size):
        if time.monotonic() > deadline:
            raise TimeoutError("dask scheduler did not start")
        time.sleep(0.2)
    procs.append(subprocess.Popen([sys.executable, "-m", "dask", "worker", "--scheduler-file", str(scheduler_file), "--nthreads", "2",
                                   "--no-dashboard", "--memory-limit", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    from distributed import Client

    address = json.loads(scheduler_file.read_text())["address"]
    with Client(address, timeout="60s") as client:
        client.wait_for_workers(1, timeout=120)
    return address, procs


def run(args: argparse.Namespace) -> None:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()[0]
    stores = make_data(work, args.demo_store, args.rows)
    if args.threads_check:
        result = run_variant(SCRIPT, "--variant", "threads", "--store", str(stores[max(stores)]))
        print(json.dumps(result, indent=1))
        keys = [k for k in next(iter(result.values())) if not k.endswith("_s")]
        rows = ["| what | same result with 1, 2 and 4 threads | seconds (1 / 2 / 4 threads) |", "| --- | --- | --- |"]
        for k in keys:
            same = len({r[k] for r in result.values()}) == 1
            secs = " / ".join(str(r[k + "_s"]) for r in result.values()) if k + "_s" in result["1"] else ""
            rows.append(f"| {k} | {'yes' if same else '**no**'} | {secs} |")
        body = "\n".join([f"Command: `python bench/bench_semdedup.py --threads-check --rows {max(stores)}` ({machine_line()}).", "",
                          f"Vectors: the {max(stores):,}-row set below (first 100k rows for the k-means, 50k for the indexes; 2,000 queries, k = 10; "
                          "the IVF, grouped-IVF and B3 part lists on 50k rows, B3 fine lists on 20k; exact_search and GroupedIVFSearch: "
                          "the first 50k rows, the same 2,000 queries, k = 131).",
                          "", *rows, "", load_note(load_start)])
        print(body)
        if not args.no_write:
            update_benchmarks_md(SECTION + ": thread counts", body)
        return
    address, procs = (None, [])
    if args.placements:
        address, procs = start_external(work)
    lines = []
    try:
        for n, store in stores.items():
            k = args.clusters.get(n, max(10, n // 200))
            for eps in args.eps:
                tag = f"{n}-{eps}"
                res = {}
                for mode in ("paper", "exact"):
                    res[mode] = run_variant(SCRIPT, "--variant", "api", "--store", str(store), "--mode", mode, "--n-clusters", str(k), "--eps", str(eps),
                                            "--out", str(work / f"{tag}-{mode}"))
                    print(n, eps, mode, res[mode], flush=True)
                res["oracle"] = run_variant(SCRIPT, "--variant", "oracle", "--store", str(store), "--centroids", str(work / f"{tag}-exact.centroids.npy"),
                                            "--eps", str(eps), "--out", str(work / f"{tag}-oracle"))
                print(n, eps, "oracle", res["oracle"], flush=True)
                semhash = []
                if args.semhash_python:
                    semhash.append(("usearch", "SemHash 0.5 approximate (usearch)"))
                    if n <= args.semhash_exact_max:
                        semhash.append(("basic", "SemHash 0.5 exact (basic)"))
                for backend, _ in semhash:
                    out, peak = run_measured([args.semhash_python, str(SCRIPT.parent / "_semhash_variant.py"), str(work / f"s{n}.npy"), backend,
                                              str(1 - eps), str(work / f"{tag}-semhash-{backend}.removed.npy")])
                    res[f"semhash-{backend}"] = {**json.loads(out.strip().splitlines()[-1]), "peak_bytes": peak}
                    print(n, eps, backend, res[f"semhash-{backend}"], flush=True)
                oracle_removed = np.load(work / f"{tag}-oracle.removed.npy")
                edges = dict(np.load(work / f"{tag}-oracle.edges.npz"))
                names = [("paper", "thresher paper mode (API)"), ("exact", "thresher exact mode (API)")] + \
                        [(f"semhash-{b}", label) for b, label in semhash] + [("oracle", "exact oracle (brute force, numpy)")]
                lines.append(f"\n**{n:,} rows, eps = {eps} (cosine >= {1 - eps:g}), {k} clusters** — oracle: {res['oracle']['edges']:,} pairs at or above "
                             "the threshold.\n")
                lines.append("| variant | wall s | peak memory | rows removed | Jaccard vs oracle | kept pairs >= threshold | removed without a kept twin |")
                lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
                for key, label in names:
                    removed = np.load(work / f"{tag}-{key}.removed.npy")
                    pairs, orphans = misses(removed, n, edges)
                    peak = res[key].get("peak_bytes")
                    lines.append(f"| {label} | {res[key]['seconds']:.1f} | {'' if peak is None else f'{peak / 2**30:.2f} GiB'} | {len(removed):,} | "
                                 f"{jaccard(removed, oracle_removed):.4f} | {pairs:,} | {orphans:,} |")
                if args.placements:
                    for mode in args.placement_modes:
                        # interleaved repeats (local, dask, external, local, ...): the machine's noise falls on every placement alike
                        runs: dict[str, list[dict]] = {"local": [], "dask": [], address: []}
                        for r in range(args.placement_repeats):
                            for i, where in enumerate(("local", "dask", address)):
                                runs[where].append(run_variant(SCRIPT, "--variant", "cli", "--store", str(store), "--mode", mode, "--n-clusters",
                                                               str(k), "--eps", str(eps), "--out", str(work / f"{tag}-cli-{mode}-{i}"), "--where", where))
                        api = np.load(work / f"{tag}-{mode}.removed.npy")
                        from thresher.pipeline.dedup import read_removed

                        cli_ids = read_removed(work / f"{tag}-cli-{mode}-0").column("id").to_pylist()
                        same_as_api = cli_ids == [f"r{p}" for p in api.tolist()]
                        identical = len({r["removed_sha256"] for rs in runs.values() for r in rs}) == 1

                        def median(where: str, key: str) -> float:
                            return float(np.median([r[key] for r in runs[where]]))

                        def each(where: str) -> str:
                            return ", ".join(f"{r['seconds']:.1f}" for r in runs[where])

                        loc, dask, ext = median("local", "seconds"), median("dask", "seconds"), median(address, "seconds")
                        lines.append(f"\n`thresher select semdedup --mode {mode}` (CLI, whole process tree, median of {args.placement_repeats} "
                                     f"interleaved runs): `--local` {loc:.1f} s ({each('local')}; {median('local', 'peak_bytes') / 2**30:.2f} GiB), "
                                     f"default local Dask cluster {dask:.1f} s ({each('dask')}; {median('dask', 'peak_bytes') / 2**30:.2f} GiB) = "
                                     f"**{dask / loc:.2f}x** `--local`, external scheduler + 1 worker x 2 threads {ext:.1f} s ({each(address)}) = "
                                     f"{ext / loc:.2f}x. removed.arrow byte-identical across all {3 * args.placement_repeats} runs: "
                                     f"**{identical}**; same rows as the API: **{same_as_api}**.")
                        print(mode, runs, identical, same_as_api, flush=True)
    finally:
        for p in procs[::-1]:
            p.terminate()
            p.wait(timeout=30)
    body = "\n".join([
        f"Command: `python bench/bench_semdedup.py --rows {' '.join(map(str, args.rows))} --eps {' '.join(map(str, args.eps))}"
        f" --placement-modes {' '.join(args.placement_modes)} --placement-repeats {args.placement_repeats}"
        f"{' --semhash-python /tmp/semhash-venv/bin/python' if args.semhash_python else ''}` ({machine_line()}).",
        "",
        "Vectors: the bundled demo pool embedded with all-MiniLM-L6-v2 (first 8,000 rows); 200k = those 8,000 x 25 noisy copies "
        "(cosine ~0.97 to the source, ~0.94 between copies), shuffled. Every variant runs in a fresh process on the same vectors. The oracle is "
        "the plain definition computed apart (brute-force pairs, then the greedy keep in exact mode's order); the last two columns count, "
        "from the oracle's pairs, what each variant leaves against that definition. SemHash 0.5 runs from its own venv "
        "(`pip install semhash==0.5.0` there; it is not a thresher dependency) on the same float32 vectors.",
        *lines,
        "",
        load_note(load_start),
    ])
    print(body)
    if not args.no_write:
        update_benchmarks_md(SECTION, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[8000, 200_000])
    parser.add_argument("--eps", type=float, nargs="+", default=[0.05])
    parser.add_argument("--work", default="/tmp/thresher-bench-semdedup")
    parser.add_argument("--demo-store", help="An embedding store of the bundled demo pool (default: embedded into --work, once).")
    parser.add_argument("--semhash-python", help="Python of a venv with semhash==0.5.0 installed (skipped when absent).")
    parser.add_argument("--semhash-exact-max", type=int, default=10_000, help="Largest size SemHash's exact mode runs at.")
    parser.add_argument("--no-placements", dest="placements", action="store_false", help="Skip the CLI runs (--local, Dask, external scheduler).")
    parser.add_argument("--placement-modes", nargs="+", default=["paper", "exact"], choices=["paper", "exact"])
    parser.add_argument("--placement-repeats", type=int, default=3, help="Interleaved runs of each placement (the median is reported).")
    parser.add_argument("--threads-check", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--variant", choices=["api", "oracle", "cli", "threads"], help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--n-clusters", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--centroids", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--where", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.clusters = {8000: 100, 200_000: 1000}
    if args.variant == "api":
        print(json.dumps(variant_api(args.store, args.mode, args.n_clusters, args.eps[0], args.out)))
    elif args.variant == "oracle":
        print(json.dumps(variant_oracle(args.store, args.centroids, args.eps[0], args.out)))
    elif args.variant == "cli":
        print(json.dumps(variant_cli(args.store, args.mode, args.n_clusters, args.eps[0], args.out, args.where)))
    elif args.variant == "threads":
        print(json.dumps(variant_threads(args.store)))
    else:
        run(args)


if __name__ == "__main__":
    main()
