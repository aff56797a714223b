"""B3 batch mining at pool scale: one-level METIS against two levels (coarse regions, METIS inside each), time, peak memory, quality.

Generated pool: N x 384 unit vectors around 2,000 cluster centres. The
teacher ranks come from a thresher FAISS index over the store (its build time
is reported apart). Each variant runs in a fresh process; its peak is the
anonymous resident memory of that process and all its children (Dask workers
included), sampled every 50 ms.

- ``one level``: the rank windows of every row (searched through the index in
  this process), the reciprocal graph, one METIS call with N / 32 parts, batches
  (``BatchMiner(partition="one_level")``): the whole graph in one process.
- ``two levels``: ceil(N / part_rows) regions, each a union of the index's
  IVF lists (grouped by a weighted k-means over the list centroids); each
  region is a task (rank windows of its rows searched in the whole pool, the
  graph inside the region, METIS), run one after another in this process
  (``Executor.in_process``), then batches (``BatchMiner(partition="two_level")``
  through :func:`thresher.jobs.b3_parts_job.parts_on_cluster`).
- ``two levels, Dask``: the same on the default local Dask cluster (what
  ``thresher run`` uses), whole process tree measured.
- ``part ranks`` (``rank_scope="part"``): two levels whose teacher ranks each
  row among its part's rows only (an IVF-Flat search trained on the part), so
  the pool's index is not used at all (regions of a k-means's lists).
- ``--compare-regions``: two levels, pool ranks, with the regions made of the
  lists of a k-means on a sample (what an index without IVF lists gets), and
  of a spherical k-means over rows (the first design).

Quality, computed apart from the selector from the saved communities: mean
cosine between members of a community, and the share of community pairs that
are edges of the full reciprocal window graph (both over the output
communities). Baseline: random batches of the same rows (their mean in-batch
cosine, from the selector's summary).

The teacher's effect on the rank window is measured on a sample: for 100
seeded rows, the window of ranks [p, p + m) found through the index against
the window of an exact search: window recall = |index window ∩ exact window| / m.

    python bench/bench_b3.py --rows 1000000 --index-type IVF2048,Flat --nprobe 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PeakMemory, load_note, machine_line, run_variant, update_benchmarks_md, write_generated_store  # noqa: E402

SCRIPT = Path(__file__).resolve()
DIM, BATCH, COMMUNITY, WINDOW = 384, 1024, 32, (30, 130)
WINDOW_SAMPLE = 100
#: the two-level runs: name -> (arguments of ``--variant two``, file stem of its communities)
RUNS = {
    "two": (["--where", "here"], "two"),
    "two-dask": (["--where", "dask"], "two_dask"),
    "part": (["--where", "here", "--rank-scope", "part"], "part"),
    "part-dask": (["--where", "dask", "--rank-scope", "part"], "part_dask"),
}
RUN_NAMES = {"two": "two levels, pool ranks, here", "two-dask": "two levels, pool ranks, Dask",
             "part": "two levels, part ranks, here", "part-dask": "two levels, part ranks, Dask"}


def make_store(path: Path, rows: int) -> None:
    centres: list[np.ndarray] = []

    def chunk(rng: np.random.Generator, n: int) -> np.ndarray:
        if not centres:  # drawn first from the same generator, so the data set is fixed by the seed alone
            centres.append(rng.normal(size=(2000, DIM)).astype(np.float32))
        c = centres[0]
        return c[rng.integers(0, len(c), size=n)] + 0.8 * rng.normal(size=(n, DIM)).astype(np.float32)

    write_generated_store(path, rows, chunk, fingerprint=f"b3-{rows}")


def variant_index(store_path: str, index_path: str, index_type: str, nprobe: int | None) -> dict:
    from thresher.stores import build_index, open_embedding_store

    with PeakMemory() as mem:
        t0 = time.perf_counter()
        index = build_index(open_embedding_store(store_path), index_path, index_type=index_type, recall_sample=200, nprobe=nprobe)
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_bytes": mem.peak, "factory": index.factory, "recall": index.recall_at_10,
            "search_params": index.search_params}


def variant_window(store_path: str, index_path: str) -> dict:
    """Rank-window recall of the index's teacher ranks against exact search, on WINDOW_SAMPLE seeded rows."""
    from thresher.search import drop_self, exact_search
    from thresher.stores import open_embedding_store, open_index

    store = open_embedding_store(store_path)
    index = open_index(index_path, store=store)
    p, stop = WINDOW
    rows = np.sort(np.random.default_rng(1).choice(store.n_rows, size=WINDOW_SAMPLE, replace=False))
    queries = store.take(rows)
    _, exact = exact_search(store, queries, stop + 1, metric="ip")
    _, found = index.search_positions(queries, stop + 1)
    exact, found = drop_self(exact, rows), drop_self(found, rows)
    window = np.mean([len(set(a[p:stop]) & set(b[p:stop])) / (stop - p) for a, b in zip(found.tolist(), exact.tolist())])
    top = np.mean([len(set(a[:stop]) & set(b[:stop])) / stop for a, b in zip(found.tolist(), exact.tolist())])
    return {"window_recall": float(window), "top_recall": float(top)}


def _communities(sel) -> np.ndarray:
    """The output communities of a selection, shape (n, K)."""
    community = np.asarray(sel.columns["community"])
    return sel.positions[np.argsort(community, kind="stable")].reshape(-1, COMMUNITY)


def _cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and its finished children (Dask workers once the cluster is closed)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _result(sel, seconds: float, peak: int, extra: dict, out: str) -> dict:
    np.save(out, _communities(sel))
    s = sel.summary
    keep = ("n_edges", "n_batches", "n_rows_left_out", "mean_in_batch_similarity", "mean_in_batch_similarity_random",
            "mean_in_community_similarity", "n_parts", "largest_part_rows", "window_entries_leaving_parts")
    return {"seconds": seconds, "peak_bytes": peak, **{k: s[k] for k in keep if k in s}, **extra}


def variant_one(store_path: str, index_path: str, out: str, window_out: str) -> dict:
    """One level: every row's rank window in this process, one METIS call (the rank windows are saved for the quality variant)."""
    from thresher.selectors.batch_mining import BatchMiner, window_neighbors
    from thresher.stores import open_embedding_store, open_index

    cpu = _cpu_seconds()
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        store = open_embedding_store(store_path)
        window = window_neighbors(store, open_index(index_path, store=store), WINDOW[0], WINDOW[1] - WINDOW[0])
        search_seconds = time.perf_counter() - t0
        sel = BatchMiner(batch_size=BATCH, community_size=COMMUNITY, rank_window=WINDOW, partition="one_level").select(store, budget=1.0, window=window)
        seconds = time.perf_counter() - t0
    cpu = _cpu_seconds() - cpu
    np.save(window_out, window)
    return _result(sel, seconds, mem.peak, {"search_seconds": search_seconds, "cpu_seconds": cpu}, out)


def variant_two(store_path: str, index_path: str, out: str, part_rows: int, where: str, rank_scope: str = "pool") -> dict:
    """Two levels through the stage's job: regions and parts as tasks, in this process or on the default local Dask cluster."""
    from thresher.jobs.b3_parts_job import parts_on_cluster
    from thresher.jobs.executor import Executor
    from thresher.selectors.batch_mining import BatchMiner
    from thresher.stores import open_embedding_store

    cpu = _cpu_seconds()
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        store = open_embedding_store(store_path)
        miner = BatchMiner(batch_size=BATCH, community_size=COMMUNITY, rank_window=WINDOW, partition="two_level", part_rows=part_rows,
                           rank_scope=rank_scope)
        state = miner.prepare(store, budget=store.n_rows)
        executor = Executor.in_process(progress=False) if where == "here" else Executor(progress=False)
        with executor.started():
            started = time.perf_counter()
            plan, results = parts_on_cluster(store, index_path if rank_scope == "pool" else None, miner, state, executor=executor)
            parts_seconds = time.perf_counter() - started
            workers = len(executor.dask.scheduler_info()["workers"]) if executor.dask is not None else 0
        sel = miner.finish_parts(state, plan, results, store, budget=store.n_rows)
        seconds = time.perf_counter() - t0
    cpu = _cpu_seconds() - cpu
    return _result(sel, seconds, mem.peak, {"parts_seconds": parts_seconds, "workers": workers, "cpu_seconds": cpu}, out)


def variant_two_regions(store_path: str, index_path: str, out: str, part_rows: int, regions: str) -> dict:
    """Two levels, pool ranks, in this process, with the regions made one given way (to compare them on one index):
    ``lists`` (the default with an IVF index: unions of its IVF lists), ``kmeans`` (unions of a k-means's lists, the
    default without IVF lists) or ``rows`` (a spherical k-means over rows, the first design)."""
    from thresher.selectors import b3_partition
    from thresher.selectors.batch_mining import BatchMiner
    from thresher.stores import open_embedding_store, open_index

    cpu = _cpu_seconds()
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        store = open_embedding_store(store_path)
        index = open_index(index_path, store=store)
        miner = BatchMiner(batch_size=BATCH, community_size=COMMUNITY, rank_window=WINDOW, partition="two_level", part_rows=part_rows)
        state = miner.prepare(store, budget=store.n_rows)
        if regions == "lists":
            region = miner.index_regions(index, store.n_rows)
        elif regions == "kmeans":
            region = miner.assign_regions(miner.region_model(store), store.iter_blocks(65_536))
        else:
            n_regions = miner.n_regions(store.n_rows)
            centroids = b3_partition.coarse_centroids(store.take(b3_partition.coarse_sample(store.n_rows, n_regions, 0)), n_regions, 0)
            region = np.concatenate([b3_partition.assign_coarse(b.vectors, centroids) for b in store.iter_blocks(65_536)])
        plan = miner.plan_parts(region)
        results = [miner.mine_part(state, part, members, store, neighbors=index) for part, members in enumerate(plan.members)]
        sel = miner.finish_parts(state, plan, results, store, budget=store.n_rows)
        seconds = time.perf_counter() - t0
    cpu = _cpu_seconds() - cpu
    return _result(sel, seconds, mem.peak, {"cpu_seconds": cpu}, out)


def variant_quality(store_path: str, window_path: str, *communities_paths: str) -> dict:
    """Per saved communities file: mean in-community cosine, share of community pairs that are edges of the full window graph."""
    from thresher.selectors.batch_mining import community_similarity, reciprocal_graph
    from thresher.stores import open_embedding_store

    store = open_embedding_store(store_path)
    graph = reciprocal_graph(np.load(window_path, mmap_mode="r"))
    out = {"full_edges": int(graph.nnz // 2)}
    for path in communities_paths:
        communities = np.load(path)
        edges = sum(graph[c][:, c].nnz // 2 for c in communities)
        out[Path(path).stem] = {"cosine": float(community_similarity(store, communities).mean()),
                                "edge_share": edges / (len(communities) * COMMUNITY * (COMMUNITY - 1) / 2)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 300_000])
    parser.add_argument("--variant", choices=["index", "window", "one", "two", "regions", "quality"], help=argparse.SUPPRESS)
    parser.add_argument("--regions", choices=["lists", "kmeans", "rows"], default="lists", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--index", help=argparse.SUPPRESS)
    parser.add_argument("--out", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--where", choices=["here", "dask"], default="here", help=argparse.SUPPRESS)
    parser.add_argument("--rank-scope", choices=["pool", "part"], default="pool", help=argparse.SUPPRESS)
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS),
                        help="Which B3 variants to run (one level always runs: it makes the reference rank windows).")
    parser.add_argument("--index-type", nargs="+", default=["auto"],
                        help="Index for the teacher ranks (auto, or a FAISS factory string): one for every --rows, or one per --rows.")
    parser.add_argument("--nprobe", type=int, help="IVF lists probed per query (default: the index's own, nlist / 32, at least 16); "
                        "other indexes ignore it.")
    parser.add_argument("--part-rows", type=int, default=100_000, help="Two levels: rows per coarse region.")
    parser.add_argument("--compare-regions", action="store_true",
                        help="With an IVF index, also run two levels (pool ranks, here) with regions of a k-means's lists and of a k-means over rows.")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.variant == "index":
        print(json.dumps(variant_index(args.store, args.index, args.index_type[0], args.nprobe)))
        return
    if args.variant == "window":
        print(json.dumps(variant_window(args.store, args.index)))
        return
    if args.variant == "one":
        print(json.dumps(variant_one(args.store, args.index, *args.out)))
        return
    if args.variant == "two":
        print(json.dumps(variant_two(args.store, args.index, args.out[0], args.part_rows, args.where, args.rank_scope)))
        return
    if args.variant == "regions":
        print(json.dumps(variant_two_regions(args.store, args.index, args.out[0], args.part_rows, args.regions)))
        return
    if args.variant == "quality":
        print(json.dumps(variant_quality(args.store, *args.out)))
        return
    if len(args.index_type) not in (1, len(args.rows)):
        parser.error("--index-type takes one index for every --rows, or one per --rows")
    gib = 2**30
    load_start = os.getloadavg()[0]
    lines = [
        f"Command: `python bench/bench_b3.py --rows {' '.join(map(str, args.rows))} --index-type {' '.join(args.index_type)}"
        f"{'' if args.nprobe is None else f' --nprobe {args.nprobe}'} --part-rows {args.part_rows}{' --compare-regions' if args.compare_regions else ''}`"
        f" ({machine_line()}).",
        "",
        f"Generated pool of N × {DIM} unit vectors around 2,000 centres; batch {BATCH}, community {COMMUNITY}, rank window "
        f"{WINDOW[0]}:{WINDOW[1]}. **one level**: every row's rank window (N queries × {WINDOW[1] + 1} neighbours through the index, "
        "in this process), the reciprocal graph, one METIS call with N / 32 parts, batches. **two levels**: "
        f"ceil(N / {args.part_rows:,}) regions; each region is a task (its rows' rank windows searched in the whole pool, "
        "the graph inside the region, METIS with n_region / 32 parts), then batches; run in this process (*here*) or on the default "
        "local Dask cluster (*Dask*, workers in brackets). *Pool ranks*: the teacher ranks among the whole pool through the index "
        "(window entries that leave the region are dropped); *part ranks* (`rank_scope=\"part\"`): among the region's rows only "
        "(an IVF-Flat search trained on the region, lists of ~512 rows, 4 probed; no index used; regions of a k-means's lists). Regions: "
        "unions of the index's IVF lists (grouped by a k-means over the list centroids weighted by their rows); *regions of k-means lists*: "
        "of the lists of a k-means on a sample instead (an index without IVF lists); *k-means over rows*: each row to the nearest of "
        "N / part_rows k-means centroids (the first design). Peak: anonymous resident memory of the process and its "
        "children (Dask workers). Quality, computed apart from the selector over the output communities: mean in-community cosine, and "
        "the share of community pairs that are edges of the full reciprocal window graph; *edges lost*: reciprocal edges METIS did not "
        "see (they cross regions), of the full graph's. Random: mean in-batch cosine of random batches of the same rows.",
        "",
        "| rows | index build s (index, recall@10) | window recall vs exact | variant | B3 s (CPU s) | of it, regions + parts s "
        "| peak | regions (largest) | edges lost | in-community cosine | community pairs that are edges | in-batch cosine | random |",
        "| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for rows, index_type in zip(args.rows, args.index_type * len(args.rows) if len(args.index_type) == 1 else args.index_type):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            store, index = tmp / "store", tmp / "index"
            make_store(store, rows)
            nprobe = [] if args.nprobe is None else ["--nprobe", str(args.nprobe)]
            common = ["--store", str(store), "--index", str(index)]
            ix = run_variant(SCRIPT, "--variant", "index", *common, "--index-type", index_type, *nprobe)
            win = run_variant(SCRIPT, "--variant", "window", *common)
            runs = {"one level": run_variant(SCRIPT, "--variant", "one", *common, "--out", str(tmp / "one.npy"), str(tmp / "window.npy"))}
            part = ["--part-rows", str(args.part_rows)]
            files = {"one level": "one"}
            for run in args.runs:
                extra, stem = RUNS[run]
                runs[RUN_NAMES[run]] = run_variant(SCRIPT, "--variant", "two", *common, "--out", str(tmp / f"{stem}.npy"), *part, *extra)
                files[RUN_NAMES[run]] = stem
            if args.compare_regions and "IVF" in ix["factory"]:
                for regions, name in (("kmeans", "k-means lists"), ("rows", "k-means over rows")):
                    label = f"two levels, pool ranks, regions of {name}, here"
                    runs[label] = run_variant(SCRIPT, "--variant", "regions", *common, "--out", str(tmp / f"regions_{regions}.npy"), *part,
                                              "--regions", regions)
                    files[label] = f"regions_{regions}"
            quality = run_variant(SCRIPT, "--variant", "quality", "--store", str(store), "--out", str(tmp / "window.npy"),
                                  *[str(tmp / f"{f}.npy") for f in files.values()])
        search = ", ".join(f"{k} {v}" for k, v in ix["search_params"].items())
        for name, r in runs.items():
            q = quality[files[name]]
            tasks = r.get("search_seconds", r.get("parts_seconds"))  # one level: its teacher search; two: regions and parts
            tasks = "—" if tasks is None else f"{tasks:.1f}{' (teacher search)' if 'search_seconds' in r else ''}"
            regions = "—" if "n_parts" not in r else f"{r['n_parts']} ({r['largest_part_rows']:,})"
            lost = "—" if "n_parts" not in r else f"{1 - r['n_edges'] / quality['full_edges']:.1%}"
            where = f"{name} ({r['workers']} worker{'s' if r['workers'] != 1 else ''})" if r.get("workers") else name
            lines.append(
                f"| {rows:,} | {ix['seconds']:.1f} ({ix['factory']}{', ' + search if search else ''}, {ix['recall']:.3f}) | "
                f"{win['window_recall']:.3f} | {where} | {r['seconds']:.1f} ({r['cpu_seconds']:.0f}) | {tasks} | "
                f"{r['peak_bytes'] / gib:.2f} GiB | {regions} | {lost} | {q['cosine']:.4f} | {q['edge_share']:.4f} | "
                f"{r['mean_in_batch_similarity']:.4f} | {r['mean_in_batch_similarity_random']:.4f} |"
            )
            print(lines[-1], flush=True)
    lines += ["", load_note(load_start)]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        update_benchmarks_md("B3 batch mining in two levels (issue 13)", body)


if __name__ == "__main__":
    main()
