"""SMOTE in embedding space: thresher vs imbalanced-learn's SMOTE on the same generated data, in the same run.

Generated data: N x 384 float32 vectors, 5% minority (two Gaussian clouds
with shifted means), sampling_strategy "auto" (the minority grows to the
majority's size), k = 5. imbalanced-learn gets the arrays in memory
(``SMOTE(random_state=0).fit_resample(X, y)``, scikit-learn's brute-force
neighbours); thresher reads the same vectors from an embedding store and
runs ``SMOTE(seed=0).select(store, budget=1.0, labels=y)`` (FAISS neighbours
within the class; its output also holds the kept rows' vectors, as imblearn's
does). Each variant runs in its own process; peak memory is that process's
anonymous memory (the store's memory-mapped pages are not counted).

    python bench/bench_smote.py --rows 100000 1000000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PeakMemory, machine_line, run_variant, update_benchmarks_md  # noqa: E402

SCRIPT = Path(__file__).resolve()
DIM, MINORITY = 384, 0.05


def make_data(folder: Path, rows: int) -> None:
    """The labels (``labels.npy``) and the vectors as an embedding store (``store/``), written in chunks."""
    from thresher.stores import finalize_embedding_store, write_embedding_shard

    store = folder / "store"
    store.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    y = (rng.random(rows) < MINORITY).astype(np.int64)
    shift = rng.normal(size=DIM).astype(np.float32) * 0.5
    shards, chunk = [], 50_000
    for i, lo in enumerate(range(0, rows, chunk)):
        n = min(chunk, rows - lo)
        x = rng.normal(size=(n, DIM)).astype(np.float32)
        x[y[lo : lo + n] == 1] += shift
        shards.append(write_embedding_shard(store, i, np.arange(lo, lo + n), x))
    finalize_embedding_store(store, shards=shards, fingerprint=f"bench-smote-{rows}", dim=DIM, dtype="float32", encoder={"normalize": False}, pool={})
    np.save(folder / "labels.npy", y)


def variant_imblearn(folder: str) -> dict:
    from imblearn.over_sampling import SMOTE as ImbSMOTE

    from thresher.stores import open_embedding_store

    with PeakMemory() as mem:
        t0 = time.perf_counter()
        X = open_embedding_store(Path(folder) / "store").to_numpy()  # imblearn needs the arrays in memory
        y = np.load(Path(folder) / "labels.npy")
        X_res, y_res = ImbSMOTE(random_state=0).fit_resample(X, y)
        seconds = time.perf_counter() - t0
    return {"variant": "imblearn", "seconds": seconds, "peak_bytes": mem.peak, "counts": dict(Counter(y_res.tolist())), "n_out": len(X_res)}


def variant_thresher(folder: str) -> dict:
    from thresher.selectors.smote import SMOTE
    from thresher.stores import open_embedding_store

    with PeakMemory() as mem:
        t0 = time.perf_counter()
        store = open_embedding_store(Path(folder) / "store")
        y = np.load(Path(folder) / "labels.npy")
        sel = SMOTE(seed=0).select(store, budget=1.0, labels=y)
        seconds = time.perf_counter() - t0
    counts = Counter(y[sel.positions].tolist()) + Counter(sel.synthetic.label.tolist())
    return {"variant": "thresher", "seconds": seconds, "peak_bytes": mem.peak, "counts": dict(counts), "n_out": len(sel) + len(sel.synthetic)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--variant", choices=["imblearn", "thresher"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.variant:
        fn = variant_imblearn if args.variant == "imblearn" else variant_thresher
        print(json.dumps(fn(args.data)))
        return
    gib = 2**30
    lines = [
        f"Command: `python bench/bench_smote.py --rows {' '.join(map(str, args.rows))}` ({machine_line()}).",
        "",
        f"N × {DIM} float32 vectors (generated: two Gaussian clouds), {MINORITY:.0%} minority, sampling_strategy='auto', k=5. "
        "imbalanced-learn: `SMOTE(random_state=0).fit_resample(X, y)` on in-memory arrays (scikit-learn neighbours). "
        "thresher: `SMOTE(seed=0).select(store, budget=1.0, labels=y)` on the embedding store (FAISS exact neighbours within "
        "the class, synthetic rows carry parents and gap). Both outputs hold every original and synthetic vector.",
        "",
        "| rows | synthetic rows | imblearn s | thresher s | time ratio (thresher / imblearn) | imblearn peak | thresher peak | memory ratio | same class counts |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for rows in args.rows:
        with tempfile.TemporaryDirectory() as tmp:
            make_data(Path(tmp), rows)
            theirs = run_variant(SCRIPT, "--variant", "imblearn", "--data", tmp)
            ours = run_variant(SCRIPT, "--variant", "thresher", "--data", tmp)
        same = theirs["counts"] == ours["counts"] and theirs["n_out"] == ours["n_out"]
        lines.append(
            f"| {rows:,} | {ours['n_out'] - rows:,} | {theirs['seconds']:.1f} | {ours['seconds']:.1f} | {ours['seconds'] / theirs['seconds']:.2f}× | "
            f"{theirs['peak_bytes'] / gib:.2f} GiB | {ours['peak_bytes'] / gib:.2f} GiB | {theirs['peak_bytes'] / ours['peak_bytes']:.2f}× | "
            f"{'yes' if same else 'no'} |"
        )
        print(lines[-1], flush=True)
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        update_benchmarks_md("SMOTE (issue 5)", body)


if __name__ == "__main__":
    main()
