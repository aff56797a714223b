"""RDS+ at pool scale: thresher's streamed, exact job vs the reference approach (one in-memory matmul + argsort).

Generated pool of N x 384 float32 unit vectors and 1,000 queries in 5 tasks.
The baseline is what the RDS+ reference does: hold the whole pool, one
matmul against all queries, per-task max, argsort, round-robin. thresher
streams the store shard by shard (here in-process, one partition after
another, so the two use the same cores). Each variant runs in its own
process; peak memory is that process's.

    python bench/bench_rds.py --rows 100000 1000000
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
from thresher.jobs.executor import Executor

SCRIPT = Path(__file__).resolve()
DIM, N_TASKS, N_QUERIES, BUDGET = 384, 5, 1000, 10_000


def make_store(path: Path, rows: int) -> None:
    write_generated_store(path, rows, lambda rng, n: rng.normal(size=(n, DIM)), fingerprint=f"bench-{rows}")


def targets() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    q = rng.normal(size=(N_QUERIES, DIM)).astype(np.float32)
    return {f"task{t}": q[t::N_TASKS] for t in range(N_TASKS)}


def variant_baseline(store_path: str) -> dict:
    from thresher.selectors.rds import round_robin
    from thresher.stores import open_embedding_store

    tasks = targets()
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        pool = open_embedding_store(store_path).to_numpy()  # the whole pool in memory, as the reference holds it
        rankings = []
        for q in tasks.values():
            qn = q / np.linalg.norm(q, axis=1, keepdims=True)
            scores = (pool @ qn.T).max(axis=1)
            rankings.append(np.argsort(-scores, kind="stable")[:BUDGET])
        positions, _ = round_robin(rankings, BUDGET)
        seconds = time.perf_counter() - t0
    return {"variant": "baseline", "seconds": seconds, "peak_bytes": mem.peak, "positions": positions[:50].tolist()}


def variant_thresher(store_path: str) -> dict:
    from thresher.jobs.score_job import score_store
    from thresher.selectors.rds import RDSPlus
    from thresher.stores import open_embedding_store

    tasks = targets()
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        store = open_embedding_store(store_path)
        selector = RDSPlus()
        state = selector.prepare(store, budget=BUDGET, targets=tasks)
        sel = selector.finish(state, score_store(store, selector, state), store)
        seconds = time.perf_counter() - t0
    return {"variant": "thresher", "seconds": seconds, "peak_bytes": mem.peak, "positions": sel.positions[:50].tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--variant", choices=["baseline", "thresher"], help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.variant:
        fn = variant_baseline if args.variant == "baseline" else variant_thresher
        print(json.dumps(fn(args.store)))
        return
    gib = 2**30
    lines = [
        f"Command: `python bench/bench_rds.py --rows {' '.join(map(str, args.rows))}` ({machine_line()}).",
        "",
        f"Pool of N × {DIM} float32 unit vectors (generated), {N_QUERIES} queries in {N_TASKS} tasks, budget {BUDGET:,}, "
        "round-robin. Baseline: the reference's approach (whole pool in memory, one matmul, argsort). thresher: the "
        "streamed job's scoring and merge run in-process shard by shard, exact (float64 re-scoring of near-max queries).",
        "",
        "| rows | baseline s | thresher s | time ratio (thresher / baseline) | baseline peak | thresher peak | memory ratio | same selection |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for rows in args.rows:
        with tempfile.TemporaryDirectory() as tmp:
            store = Path(tmp) / "store"
            make_store(store, rows)
            base = run_variant(SCRIPT, "--variant", "baseline", "--store", str(store))
            ours = run_variant(SCRIPT, "--variant", "thresher", "--store", str(store))
        same = base["positions"] == ours["positions"]
        lines.append(
            f"| {rows:,} | {base['seconds']:.1f} | {ours['seconds']:.1f} | {ours['seconds'] / base['seconds']:.2f}× | "
            f"{base['peak_bytes'] / gib:.2f} GiB | {ours['peak_bytes'] / gib:.2f} GiB | {base['peak_bytes'] / ours['peak_bytes']:.1f}× smaller | "
            f"{'yes (first 50)' if same else 'no'} |"
        )
        print(lines[-1], flush=True)
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        update_benchmarks_md("RDS+ at pool scale (issue 3)", body)


if __name__ == "__main__":
    main()
