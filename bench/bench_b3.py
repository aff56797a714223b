"""B3 batch mining at pool scale: graph + METIS + batch assembly, time and peak memory, against random batching.

Generated pool: N x 384 unit vectors around 2,000 cluster centres. The
teacher ranks come from a thresher FAISS index over the store (its build time
is reported apart). The baseline is what trainers do without B3: a seeded
random permutation cut into batches; the figure that matters is how much
more similar in-batch negatives are.

The teacher's effect on the rank window is measured on a sample: for 100
seeded rows, the window of ranks [p, p + m) found through the index against
the window of an exact search (``thresher.search.exact_search``):
window recall = |index window ∩ exact window| / m, and top-(p + m) recall.

    python bench/bench_b3.py --rows 100000 1000000 --index-type auto IVF2048,Flat --nprobe 2
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


def variant_b3(store_path: str, index_path: str) -> dict:
    from thresher.selectors.batch_mining import BatchMiner, window_neighbors
    from thresher.stores import open_embedding_store, open_index

    with PeakMemory() as mem:
        t0 = time.perf_counter()
        store = open_embedding_store(store_path)
        window = window_neighbors(store, open_index(index_path, store=store), WINDOW[0], WINDOW[1] - WINDOW[0])  # the teacher ranks
        search_seconds = time.perf_counter() - t0
        sel = BatchMiner(batch_size=BATCH, community_size=COMMUNITY, rank_window=WINDOW).select(store, budget=1.0, window=window)
        seconds = time.perf_counter() - t0
    s = sel.summary
    return {"seconds": seconds, "search_seconds": search_seconds, "peak_bytes": mem.peak, "b3_sim": s["mean_in_batch_similarity"], "random_sim": s["mean_in_batch_similarity_random"],
            "n_edges": s["n_edges"], "n_batches": s["n_batches"], "left_out": s["n_rows_left_out"]}


def variant_random(store_path: str) -> dict:
    from thresher.stores import open_embedding_store

    with PeakMemory() as mem:
        t0 = time.perf_counter()
        store = open_embedding_store(store_path)
        order = np.random.default_rng(0).permutation(store.n_rows)
        batches = [order[i : i + BATCH] for i in range(0, store.n_rows - BATCH + 1, BATCH)]
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_bytes": mem.peak, "n_batches": len(batches)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 300_000])
    parser.add_argument("--variant", choices=["index", "b3", "random", "window"], help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--index", help=argparse.SUPPRESS)
    parser.add_argument("--index-type", nargs="+", default=["auto"],
                        help="Index for the teacher ranks (auto, or a FAISS factory string): one for every --rows, or one per --rows.")
    parser.add_argument("--nprobe", type=int, help="IVF lists probed per query (default: the index's own, nlist / 32, at least 16); "
                        "other indexes ignore it.")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.variant == "index":
        print(json.dumps(variant_index(args.store, args.index, args.index_type[0], args.nprobe)))
        return
    if args.variant == "window":
        print(json.dumps(variant_window(args.store, args.index)))
        return
    if args.variant == "b3":
        print(json.dumps(variant_b3(args.store, args.index)))
        return
    if args.variant == "random":
        print(json.dumps(variant_random(args.store)))
        return
    gib = 2**30
    load_start = os.getloadavg()[0]
    lines = [
        f"Command: `python bench/bench_b3.py --rows {' '.join(map(str, args.rows))} --index-type {' '.join(args.index_type)}"
        f"{'' if args.nprobe is None else f' --nprobe {args.nprobe}'}` ({machine_line()}).",
        "",
        f"Generated pool of N × {DIM} unit vectors around 2,000 centres; batch {BATCH}, community {COMMUNITY}, rank window "
        f"{WINDOW[0]}:{WINDOW[1]}. B3 = neighbour search through the index, reciprocal graph, METIS, equalised communities, "
        "batches (one process). Baseline = a seeded random permutation cut into batches. Window recall: on "
        f"{WINDOW_SAMPLE} seeded rows, |teacher window ∩ exact window| / m for ranks {WINDOW[0]}:{WINDOW[1]} "
        f"(top-{WINDOW[1]} recall in brackets). B3 s is the whole selection; of it, teacher search s is the rank windows "
        f"(N queries × {WINDOW[1] + 1} neighbours through the index; an IVF-Flat index is searched list by list, the queries "
        "probing a list scored against it in one matrix product), the rest the reciprocal graph, METIS, communities, "
        "batches and the two in-batch similarity figures.",
        "",
        "| rows | index build s (index, search, recall@10) | B3 s | teacher search s | B3 peak | window recall vs exact (top) | random batching s | reciprocal edges | batches | mean in-batch cosine B3 | random |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    if len(args.index_type) not in (1, len(args.rows)):
        parser.error("--index-type takes one index for every --rows, or one per --rows")
    for rows, index_type in zip(args.rows, args.index_type * len(args.rows) if len(args.index_type) == 1 else args.index_type):
        with tempfile.TemporaryDirectory() as tmp:
            store, index = Path(tmp) / "store", Path(tmp) / "index"
            make_store(store, rows)
            nprobe = [] if args.nprobe is None else ["--nprobe", str(args.nprobe)]
            ix = run_variant(SCRIPT, "--variant", "index", "--store", str(store), "--index", str(index), "--index-type", index_type, *nprobe)
            b3 = run_variant(SCRIPT, "--variant", "b3", "--store", str(store), "--index", str(index))
            win = run_variant(SCRIPT, "--variant", "window", "--store", str(store), "--index", str(index))
            rnd = run_variant(SCRIPT, "--variant", "random", "--store", str(store))
        search = ", ".join(f"{k} {v}" for k, v in ix["search_params"].items())
        lines.append(
            f"| {rows:,} | {ix['seconds']:.1f} ({ix['factory']}{', ' + search if search else ''}, recall@10 {ix['recall']:.3f}) | {b3['seconds']:.1f} | "
            f"{b3['search_seconds']:.1f} | "
            f"{b3['peak_bytes'] / gib:.2f} GiB | {win['window_recall']:.3f} ({win['top_recall']:.3f}) | "
            f"{rnd['seconds']:.3f} | {b3['n_edges']:,} | {b3['n_batches']} | {b3['b3_sim']:.4f} | {b3['random_sim']:.4f} |"
        )
        print(lines[-1], flush=True)
    lines += ["", load_note(load_start)]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        update_benchmarks_md("B3 batch mining (issue 7)", body)


if __name__ == "__main__":
    main()
