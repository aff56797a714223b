"""B3 batch mining at pool scale: graph + METIS + batch assembly, time and peak memory, against random batching.

Generated pool: N x 384 unit vectors around 2,000 cluster centres. The
teacher ranks come from a thresher FAISS index over the store (its build time
is reported apart). The baseline is what trainers do without B3: a seeded
random permutation cut into batches; the figure that matters is how much
more similar in-batch negatives are.

    python bench/bench_b3.py --rows 100000 300000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PeakMemory, machine_line, run_variant, update_benchmarks_md, write_generated_store  # noqa: E402

SCRIPT = Path(__file__).resolve()
DIM, BATCH, COMMUNITY, WINDOW = 384, 1024, 32, (30, 130)


def make_store(path: Path, rows: int) -> None:
    centres: list[np.ndarray] = []

    def chunk(rng: np.random.Generator, n: int) -> np.ndarray:
        if not centres:  # drawn first from the same generator, so the data set is fixed by the seed alone
            centres.append(rng.normal(size=(2000, DIM)).astype(np.float32))
        c = centres[0]
        return c[rng.integers(0, len(c), size=n)] + 0.8 * rng.normal(size=(n, DIM)).astype(np.float32)

    write_generated_store(path, rows, chunk, fingerprint=f"b3-{rows}")


def variant_index(store_path: str, index_path: str, index_type: str) -> dict:
    from thresher.stores import build_index, open_embedding_store

    with PeakMemory() as mem:
        t0 = time.perf_counter()
        index = build_index(open_embedding_store(store_path), index_path, index_type=index_type, recall_sample=200)
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_bytes": mem.peak, "factory": index.factory, "recall": index.recall_at_10}


def variant_b3(store_path: str, index_path: str) -> dict:
    from thresher.selectors.batch_mining import BatchMiner
    from thresher.stores import open_embedding_store, open_index

    with PeakMemory() as mem:
        t0 = time.perf_counter()
        store = open_embedding_store(store_path)
        sel = BatchMiner(batch_size=BATCH, community_size=COMMUNITY, rank_window=WINDOW).select(
            store, budget=1.0, neighbors=open_index(index_path, store=store))
        seconds = time.perf_counter() - t0
    s = sel.summary
    return {"seconds": seconds, "peak_bytes": mem.peak, "b3_sim": s["mean_in_batch_similarity"], "random_sim": s["mean_in_batch_similarity_random"],
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
    parser.add_argument("--variant", choices=["index", "b3", "random"], help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--index", help=argparse.SUPPRESS)
    parser.add_argument("--index-type", default="auto", help="Index for the teacher ranks (auto, or a FAISS factory string).")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.variant == "index":
        print(json.dumps(variant_index(args.store, args.index, args.index_type)))
        return
    if args.variant == "b3":
        print(json.dumps(variant_b3(args.store, args.index)))
        return
    if args.variant == "random":
        print(json.dumps(variant_random(args.store)))
        return
    gib = 2**30
    lines = [
        f"Command: `python bench/bench_b3.py --rows {' '.join(map(str, args.rows))} --index-type {args.index_type}` ({machine_line()}).",
        "",
        f"Generated pool of N × {DIM} unit vectors around 2,000 centres; batch {BATCH}, community {COMMUNITY}, rank window "
        f"{WINDOW[0]}:{WINDOW[1]}. B3 = neighbour search through the index, reciprocal graph, METIS, equalised communities, "
        "batches (one process). Baseline = a seeded random permutation cut into batches.",
        "",
        "| rows | index (auto) build s | B3 s | B3 peak | random batching s | reciprocal edges | batches | mean in-batch cosine B3 | random |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for rows in args.rows:
        with tempfile.TemporaryDirectory() as tmp:
            store, index = Path(tmp) / "store", Path(tmp) / "index"
            make_store(store, rows)
            ix = run_variant(SCRIPT, "--variant", "index", "--store", str(store), "--index", str(index), "--index-type", args.index_type)
            b3 = run_variant(SCRIPT, "--variant", "b3", "--store", str(store), "--index", str(index))
            rnd = run_variant(SCRIPT, "--variant", "random", "--store", str(store))
        lines.append(
            f"| {rows:,} | {ix['seconds']:.1f} ({ix['factory']}, recall@10 {ix['recall']:.3f}) | {b3['seconds']:.1f} | {b3['peak_bytes'] / gib:.2f} GiB | "
            f"{rnd['seconds']:.3f} | {b3['n_edges']:,} | {b3['n_batches']} | {b3['b3_sim']:.4f} | {b3['random_sim']:.4f} |"
        )
        print(lines[-1], flush=True)
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        update_benchmarks_md("B3 batch mining (issue 7)", body)


if __name__ == "__main__":
    main()
