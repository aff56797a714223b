"""IVF index build (issue 19): the coarse quantiser trained by thresher's thread-invariant k-means against FAISS's own.

Data: ``--rows`` generated vectors of width ``--dim`` (a mixture of 2,000
Gaussian clusters, seeded; unit rows for ``ip``, as they are for ``l2``).
Index: ``IVF<nlist>,Flat`` with the build defaults of
:func:`thresher.stores.index.build_index` (nlist = ``default_nlist(rows)``,
training rows = ``clip(50 nlist, 10,000, 1,000,000)``, drawn with seed 0).
Variants, each in a fresh process (peak = anonymous RSS, sampled every 50 ms):

- faiss: ``index.train(sample)`` (FAISS's k-means, 10 iterations; spherical for ``ip``);
- thresher: :func:`thresher.search.kmeans.train_index` (the same iterations with
  float64 near-tie decisions and row-order sums; FAISS then trains nothing else for ``Flat``).

Both then add every row. Build = train + add, as the index manifest's ``build_seconds``; the CPU
seconds of training (all threads) are given too, as wall times on a shared machine are noisy.

    python bench/bench_ivf_train.py --rows 100000 --dim 384 [--threads 1]

``--threads 1`` gives figures a shared machine disturbs least.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PeakMemory, load_note, machine_line, run_variant, update_benchmarks_md  # noqa: E402

SCRIPT = Path(__file__).resolve()
SECTION = "IVF index build (issue 19): thread-invariant lists"


def vectors(rows: int, dim: int, metric: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((2000, dim)).astype(np.float32)
    x = centres[rng.integers(0, 2000, rows)] + 0.5 * rng.standard_normal((rows, dim)).astype(np.float32)
    if metric == "ip":
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x, dtype=np.float32)


def variant(trainer: str, metric: str, rows: int, dim: int, threads: int | None) -> dict:
    import faiss
    from threadpoolctl import threadpool_limits

    if threads:
        faiss.omp_set_num_threads(threads)
        threadpool_limits(threads)

    from thresher.search.kmeans import train_index
    from thresher.stores.index import MAX_TRAIN_ROWS, MIN_TRAIN_ROWS, TRAIN_PER_LIST, default_nlist

    x = vectors(rows, dim, metric)
    nlist = default_nlist(rows)
    n_train = min(rows, max(MIN_TRAIN_ROWS, min(TRAIN_PER_LIST * nlist, MAX_TRAIN_ROWS)))
    sample = x[np.sort(np.random.default_rng(0).choice(rows, n_train, replace=False))]
    index = faiss.index_factory(dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2)
    with PeakMemory() as mem:
        t0, cpu0 = time.perf_counter(), time.process_time()
        if trainer == "faiss":
            faiss.extract_index_ivf(index).cp.seed = 0
            index.train(sample)
        else:
            train_index(index, sample, 0)
        trained, cpu_trained = time.perf_counter(), time.process_time()
        index.add(x)
        done = time.perf_counter()
    return {"train_s": trained - t0, "build_s": done - t0, "train_cpu_s": cpu_trained - cpu0, "peak_bytes": mem.peak,
            "nlist": nlist, "n_train": n_train, "threads": faiss.omp_get_max_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--metrics", nargs="+", default=["ip", "l2"])
    parser.add_argument("--threads", type=int, default=0, help="FAISS and BLAS threads in each variant (default: all cores)")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--variant", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(variant(args.variant[0], args.variant[1], args.rows, args.dim, args.threads)))
        return
    load_start = os.getloadavg()[0]
    rows = ["| metric | lists | training rows | FAISS train / build s | thresher train / build s | build ratio | train CPU s FAISS / thresher "
            "| peak memory FAISS / thresher |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for metric in args.metrics:
        common = ("--rows", str(args.rows), "--dim", str(args.dim), "--threads", str(args.threads))
        base = run_variant(SCRIPT, *common, "--variant", "faiss", metric)
        ours = run_variant(SCRIPT, *common, "--variant", "thresher", metric)
        print(json.dumps({"faiss": base, "thresher": ours}))
        rows.append(f"| {metric} | {base['nlist']:,} | {base['n_train']:,} | {base['train_s']:.1f} / {base['build_s']:.1f} | "
                    f"{ours['train_s']:.1f} / {ours['build_s']:.1f} | {ours['build_s'] / base['build_s']:.2f}x | "
                    f"{base['train_cpu_s']:.1f} / {ours['train_cpu_s']:.1f} | "
                    f"{base['peak_bytes'] / 2**20:,.0f} / {ours['peak_bytes'] / 2**20:,.0f} MiB |")
    threads = f" --threads {args.threads}" if args.threads else ""
    body = "\n".join([f"Command: `python bench/bench_ivf_train.py --rows {args.rows} --dim {args.dim}{threads}` ({machine_line()}).", "",
                      f"Vectors: {args.rows:,} x {args.dim} generated (2,000 Gaussian clusters); IVF<nlist>,Flat with build_index's "
                      f"defaults; each variant in a fresh process, FAISS and BLAS on {args.threads or 'all'} "
                      f"{'thread' if args.threads == 1 else 'threads'}.", "", *rows, "", load_note(load_start)])
    print(body)
    if not args.no_write:
        update_benchmarks_md(SECTION, body)


if __name__ == "__main__":
    main()
