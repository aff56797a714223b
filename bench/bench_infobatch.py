"""InfoBatch plans at scale: plan building and score updates for millions of samples, against a plain permutation.

Per epoch, InfoBatch (Qin et al., ICLR 2024) takes the mean of all scores,
draws the kept well-learned samples and shuffles the plan; during the epoch
every trained sample's loss is written back. The floor is what any epoch of
shuffled training costs anyway: one ``numpy`` permutation of all samples. The
reference's ``prune()`` (transcribed to numpy: scores as a float32 array, the
legacy global RNG, the plan as a Python list shuffled in place) is shown
beside it.

Scores are generated (exponential losses, so about 63% of samples are
well-learned, the regime InfoBatch prunes in). Each variant runs in its own
process; times are the best of 3 (1 for the reference), peak memory is the
peak of numpy/Python allocations during the step (tracemalloc, a separate
untimed run), i.e. the step's own working memory on top of the scores.

    python bench/bench_infobatch.py --samples 1000000 10000000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_line, run_variant, update_benchmarks_md  # noqa: E402

SCRIPT = Path(__file__).resolve()
UPDATE_BATCH = 1024
EPOCHS = 90


def losses(n: int) -> np.ndarray:
    return np.random.default_rng(0).exponential(size=n).astype(np.float32)


def measure(fn, repeats: int) -> tuple[float, int]:
    """(best wall seconds over ``repeats``, peak traced bytes of one more run)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return best, peak


def variant_floor(n: int) -> dict:
    rng = np.random.default_rng(0)
    seconds, peak = measure(lambda: rng.permutation(n), 3)
    return {"permutation": [seconds, peak]}


def variant_reference(n: int) -> dict:
    scores = losses(n)
    weights = np.ones(n, dtype=np.float32)
    keep_ratio = 0.5

    def prune() -> list:
        # InfoBatch's reference prune(), with torch tensors replaced by numpy arrays.
        well_learned_mask = scores < scores.mean()
        well_learned_indices = np.where(well_learned_mask)[0]
        remained_indices = np.where(~well_learned_mask)[0].tolist()
        selected_indices = np.random.choice(well_learned_indices, int(keep_ratio * len(well_learned_indices)), replace=False)
        weights[:] = 1
        if len(selected_indices) > 0:
            weights[selected_indices] = 1 / keep_ratio
            remained_indices.extend(selected_indices)
        np.random.shuffle(remained_indices)
        return remained_indices

    np.random.seed(1)
    seconds, peak = measure(prune, 1)
    return {"reference_prune": [seconds, peak]}


def variant_thresher(n: int) -> dict:
    from thresher.pipeline.plan import write_plan
    from thresher.selectors.infobatch import InfoBatch

    values = losses(n)
    all_idx = np.arange(n, dtype=np.int64)
    ib = InfoBatch(n_samples=n, epochs=EPOCHS, prune_ratio=0.5, seed=0)
    out = {"update_all": measure(lambda: ib.update(all_idx, values), 3)}
    out["plan"] = measure(lambda: ib.start_epoch(1), 3)
    plan = ib.start_epoch(1)
    plan_losses = values[plan.indices] * np.float32(0.9)

    def epoch_updates() -> None:
        for lo in range(0, plan.n_kept, UPDATE_BATCH):
            idx = plan.indices[lo : lo + UPDATE_BATCH]
            ib.update(idx, plan_losses[lo : lo + UPDATE_BATCH])
            ib.weights(idx)

    out["epoch_updates"] = measure(epoch_updates, 1)
    with tempfile.TemporaryDirectory() as tmp:
        counter = iter(range(100))
        out["write_plan"] = measure(lambda: write_plan(ib, 1, Path(tmp) / f"plan-{next(counter)}"), 1)
    out["n_kept"] = plan.n_kept
    out["n_well"] = plan.n_well
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--variant", choices=["floor", "reference", "thresher"], help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.variant:
        fn = {"floor": variant_floor, "reference": variant_reference, "thresher": variant_thresher}[args.variant]
        print(json.dumps(fn(args.n)))
        return
    mib = 2**20
    lines = [
        f"Command: `python bench/bench_infobatch.py --samples {' '.join(map(str, args.samples))}` ({machine_line()}).",
        "",
        "One pruning epoch (r = 0.5) over generated exponential losses. Floor: `numpy` permutation of all samples "
        "(what shuffled training costs anyway). Reference: InfoBatch's `prune()` transcribed to numpy (global RNG, "
        "Python-list shuffle). thresher: `start_epoch` (threshold, draw, shuffle, weights), `update` of all scores in "
        f"one call, one epoch of per-batch `update` + `weights` calls ({UPDATE_BATCH} samples a call), and `write_plan` "
        "(Arrow shards + manifest). Time: best of 3 (1 for the reference, epoch updates and write_plan); peak: the "
        "step's own numpy/Python allocations (tracemalloc).",
        "",
        "| samples | step | time s | × floor | peak MiB |",
        "| ---: | --- | ---: | ---: | ---: |",
    ]
    for n in args.samples:
        floor = run_variant(SCRIPT, "--variant", "floor", "--n", str(n))
        ref = run_variant(SCRIPT, "--variant", "reference", "--n", str(n))
        ours = run_variant(SCRIPT, "--variant", "thresher", "--n", str(n))
        base = floor["permutation"][0]
        rows = [
            ("numpy permutation (floor)", floor["permutation"]),
            ("reference `prune()`", ref["reference_prune"]),
            ("thresher plan (`start_epoch`)", ours["plan"]),
            ("thresher `update`, all scores in one call", ours["update_all"]),
            (f"thresher epoch of `update`+`weights` per {UPDATE_BATCH} ({ours['n_kept']:,} kept)", ours["epoch_updates"]),
            ("thresher `write_plan` (1M-row shards + manifest)", ours["write_plan"]),
        ]
        for name, (seconds, peak) in rows:
            lines.append(f"| {n:,} | {name} | {seconds:.3f} | {seconds / base:.1f}× | {peak / mib:.0f} |")
            print(lines[-1], flush=True)
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        update_benchmarks_md("InfoBatch plans (issue 6)", body)


if __name__ == "__main__":
    main()
