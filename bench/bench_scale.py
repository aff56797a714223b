"""Pool scale (issue 13): one `thresher run` over a generated pool of N rows, per step time, peak memory, bytes and correctness.

For each N it generates, streaming (never N x 384 float32 in memory):

* a pool (``pool.parquet``: ``id``, ``text``, ``source`` with 20 values of
  very unequal frequency, ``label`` with 5 classes, one of them 2%);
* its vectors, N x 384 float16 (``vectors.npy``, written chunk by chunk),
  shaped like text embeddings: a shared direction (anisotropy), many topic
  clusters of very different sizes (log-normal), rows spread around their
  topic (cosine to another row of the topic ~0.3-0.6, to another topic ~0.1);
* 5% of rows injected as near-duplicates of another row of the same chunk
  (cosine 0.975-0.995 before float16 rounding, >= 0.97 checked after), the
  pairs recorded in ``pairs.parquet``;
* 5 target tasks x 200 queries around 5 topics of different sizes.

The store is made by ``thresher embeddings import`` (the vectors + the pool's
id column), the target stores too. Then one spec runs through ``thresher run``
(a subprocess, the default in-process cluster) over the existing store:
index (auto), SemDeDup, RDS+ (budget 10%, the 5 tasks, a cap on the largest
source), SMOTE on ``label`` over the RDS+ output, B3 (batch 1024, community
32, window 30:130) over the RDS+ output, and a second B3 over the whole
deduplicated pool. ``thresher run --dry-run`` is run first and its per-step
estimates kept.

Per step: wall time (the run's events.jsonl), peak memory of the whole
process tree (driver, scheduler, nanny, workers; psutil every 0.2 s,
attributed to the step running at that moment; both plain RSS, which counts
memory-mapped store pages the kernel may drop, and anonymous RSS), bytes
written. Correctness, computed here independently:

* SemDeDup: share of injected pairs with one row removed (>= 99% wanted) and
  share of the other rows removed (< 0.5% wanted);
* RDS+: the selection equals the definition computed blockwise in float64
  (per-task max cosine over the dedup output, ranking by score then position,
  round-robin with the source cap), id for id and in order;
* SMOTE: per-class synthetic counts equal imbalanced-learn's
  ``check_sampling_strategy('auto', ...)`` over the RDS+ labels;
* B3: every community has exactly 32 rows, all in one batch; mean
  in-community cosine against random groups of 32 of the same rows;
* no pool row twice in any output.

    python bench/bench_scale.py --rows 100000 1000000            # then BENCHMARKS.md, bench/scale.json, docs/scale-time.png
    python bench/bench_scale.py --rows 5800000 --work /big/disk  # ~4.5 GB of vectors + 4.5 GB of store
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, anon_rss, machine_line, update_benchmarks_md  # noqa: E402

DIM = 384
CHUNK = 50_000
N_SOURCES = 20
LABELS = ["c0", "c1", "c2", "c3", "c4"]
LABEL_P = [0.40, 0.30, 0.18, 0.10, 0.02]
DUP_FRACTION = 0.05
DUP_COS = (0.975, 0.995)
N_TASKS, N_QUERIES = 5, 200
EPS = 0.03  # SemDeDup: removed at cosine >= 0.97
BATCH, COMMUNITY, WINDOW = 1024, 32, (30, 130)
RESULTS_JSON = ROOT / "bench" / "scale.json"
PLOT = ROOT / "docs" / "scale-time.png"
NOTES = ROOT / "bench" / "scale-notes.md"  # what the figures mean, written by whoever ran them; appended below the tables


# -- generation (streaming) ------------------------------------------------------------------------------------


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def generate(n: int, work: Path, seed: int = 0) -> dict:
    """Pool, vectors, injected pairs and target queries for ``n`` rows, written chunk by chunk; returns a description."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_topics = max(200, n // 1000)
    weights = rng.lognormal(0.0, 1.5, size=n_topics)
    topic_p = weights / weights.sum()
    shared = _unit(rng.standard_normal((1, DIM)))
    centres = _unit(0.4 * shared + _unit(rng.standard_normal((n_topics, DIM)))).astype(np.float32)
    spread = rng.uniform(0.9, 1.4, size=n_topics).astype(np.float32)  # noise norm relative to the (unit) centre
    source_p = 1.0 / np.arange(1, N_SOURCES + 1) ** 1.1
    source_p /= source_p.sum()
    sources = np.asarray([f"source_{i:02d}" for i in range(N_SOURCES)])

    vectors = np.lib.format.open_memmap(work / "vectors.npy", mode="w+", dtype=np.float16, shape=(n, DIM))
    schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("source", pa.string()), ("label", pa.string()), ("topic", pa.int32())])
    pairs_dup, pairs_orig, pairs_cos = [], [], []
    with pq.ParquetWriter(work / "pool.parquet", schema) as writer:
        for c, lo in enumerate(range(0, n, CHUNK)):
            m = min(CHUNK, n - lo)
            crng = np.random.default_rng([seed, c])
            topic = crng.choice(n_topics, size=m, p=topic_p)
            x = centres[topic] + crng.standard_normal((m, DIM), dtype=np.float32) * (spread[topic] / np.sqrt(DIM))[:, None]
            x = _unit(x)
            label = crng.choice(len(LABELS), size=m, p=LABEL_P)
            source = crng.choice(N_SOURCES, size=m, p=source_p)
            n_dup = int(round(DUP_FRACTION * m))
            perm = crng.permutation(m)
            dup, orig = perm[:n_dup], perm[n_dup : 2 * n_dup]
            cos = crng.uniform(*DUP_COS, size=n_dup)
            delta = np.sqrt(1.0 / cos**2 - 1.0)
            u = crng.standard_normal((n_dup, DIM), dtype=np.float32)
            u -= (u * x[orig]).sum(axis=1, keepdims=True) * x[orig]  # orthogonal to the original: cos = 1 / sqrt(1 + delta^2)
            x[dup] = _unit(x[orig] + _unit(u) * delta[:, None].astype(np.float32))
            topic[dup], label[dup], source[dup] = topic[orig], label[orig], source[orig]
            x16 = x.astype(np.float16)
            vectors[lo : lo + m] = x16
            got = (_unit(x16[dup].astype(np.float64)) * _unit(x16[orig].astype(np.float64))).sum(axis=1)
            assert got.min() >= 0.97, f"an injected pair has cosine {got.min():.4f} after float16 rounding"
            pairs_dup.append(dup + lo)
            pairs_orig.append(orig + lo)
            pairs_cos.append(got)
            rows = np.arange(lo, lo + m)
            ids = np.char.add("doc-", np.char.zfill(rows.astype(str), 9))
            text = np.char.add(np.char.add("topic ", topic.astype(str)), np.char.add(" example ", rows.astype(str)))
            writer.write_table(pa.table({"id": ids, "text": text, "source": sources[source], "label": np.asarray(LABELS)[label],
                                         "topic": topic.astype(np.int32)}, schema=schema))
    vectors.flush()
    del vectors
    dup_pos, orig_pos = np.concatenate(pairs_dup), np.concatenate(pairs_orig)
    pq.write_table(pa.table({"dup": dup_pos, "orig": orig_pos, "cos": np.concatenate(pairs_cos)}), work / "pairs.parquet")

    # targets: 5 tasks around topics at different size ranks (a large one to a small one)
    by_size = np.argsort(-topic_p, kind="stable")
    chosen = by_size[[int(q * (n_topics - 1)) for q in (0.02, 0.1, 0.25, 0.5, 0.75)]]
    targets = {}
    for t, topic in enumerate(chosen):
        q = _unit(centres[topic] + rng.standard_normal((N_QUERIES, DIM), dtype=np.float32) * spread[topic] / np.sqrt(DIM))
        task_dir = work / "targets"
        task_dir.mkdir(exist_ok=True)
        np.save(task_dir / f"task{t}.npy", q.astype(np.float32))
        (task_dir / f"task{t}.txt").write_text("".join(f"task{t}-q{j}\n" for j in range(N_QUERIES)), encoding="utf-8")
        targets[f"task{t}"] = {"topic": int(topic), "topic_rows_share": float(topic_p[topic])}
    return {"rows": n, "n_topics": n_topics, "n_pairs": int(len(dup_pos)), "min_pair_cos": float(np.concatenate(pairs_cos).min()),
            "targets": targets, "largest_topic_share": float(topic_p.max()), "smallest_topic_share": float(topic_p.min())}


# -- process-tree memory, sampled with timestamps -----------------------------------------------------------------


class TreeSampler:
    """Samples (time, RSS, anonymous RSS) of a process and all its descendants every ``every`` seconds."""

    def __init__(self, pid: int, every: float = 0.2, log: Path | None = None):
        import psutil

        self.proc = psutil.Process(pid)
        self.every = every
        self.log = log  # samples are appended there too, so an interrupted run's measurements survive for --resume
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> tuple[float, int, int]:
        import psutil

        rss = anon = 0
        try:
            procs = [self.proc, *self.proc.children(recursive=True)]
        except psutil.Error:
            procs = []
        for p in procs:
            try:
                info = p.memory_info()
                rss += info.rss
                anon += anon_rss(p.pid) or info.rss
            except psutil.Error:
                pass
        return time.time(), rss, anon

    def _run(self) -> None:
        handle = open(self.log, "a", encoding="utf-8") if self.log else None
        try:
            while not self._stop.is_set():
                sample = self._sample()
                self.samples.append(sample)
                if handle:
                    handle.write("%.3f %d %d\n" % sample)
                    handle.flush()
                self._stop.wait(self.every)
        finally:
            if handle:
                handle.close()

    @classmethod
    def read(cls, log: Path) -> list[tuple[float, int, int]]:
        rows = [line.split() for line in log.read_text(encoding="utf-8").splitlines()] if log.exists() else []
        return [(float(t), int(r), int(a)) for t, r, a in rows]

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, start: float = float("-inf"), end: float = float("inf")) -> tuple[int, int]:
        return peak_of(self.samples, start, end)


def peak_of(samples: list[tuple[float, int, int]], start: float = float("-inf"), end: float = float("inf")) -> tuple[int, int]:
    inside = [(r, a) for t, r, a in samples if start <= t <= end]
    return (max(r for r, _ in inside), max(a for _, a in inside)) if inside else (0, 0)

    return None


def run_measured(argv: list[str], *, env: dict | None = None, log: Path | None = None,
                 samples: Path | None = None) -> tuple[subprocess.CompletedProcess, TreeSampler, float]:
    """Run ``argv`` with its process tree sampled (and the samples appended to ``samples``); (completed process, sampler, seconds)."""
    started = time.perf_counter()
    out = open(log, "a", encoding="utf-8") if log else subprocess.PIPE
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env={**os.environ, **(env or {})})
    with TreeSampler(proc.pid, log=samples) as sampler:
        stdout, _ = proc.communicate()
    seconds = time.perf_counter() - started
    if log:
        out.close()
        stdout = log.read_text(encoding="utf-8")
    done = subprocess.CompletedProcess(argv, proc.returncode, stdout, "")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{stdout[-4000:]}")
    return done, sampler, seconds


def thresher(*args: str) -> list[str]:
    return [sys.executable, "-m", "thresher", *args]


# -- the spec ------------------------------------------------------------------------------------------------------


def write_spec(work: Path, n: int, semdedup_mode: str = "paper") -> Path:
    import yaml

    cap = max(1, int(0.005 * n))  # the largest source may give at most 0.5% of the pool (5% of the budget)
    spec = {
        "name": f"scale-{n}",
        "out": str(work / "run"),
        "pool": {"path": str(work / "pool.parquet"), "id_column": "id", "text_column": "text"},
        "embedding": {"store": str(work / "store")},
        "index": {"type": "auto"},
        "steps": [
            {"step": "semdedup", "name": "dedup", "n_clusters": max(50, n // 2000), "eps": EPS,
             **({"mode": semdedup_mode} if semdedup_mode != "paper" else {})},
            {"step": "rds", "budget": 0.1, "targets": {f"task{t}": str(work / "targets" / f"task{t}-store") for t in range(N_TASKS)},
             "group_column": "source", "group_quotas": {"source_00": cap}},
            {"step": "smote", "name": "balanced", "input": "rds", "labels": "label", "k_neighbors": 5},
            {"step": "batches", "name": "b3_rds", "input": "rds", "batch_size": BATCH, "community_size": COMMUNITY, "rank_window": list(WINDOW)},
            {"step": "batches", "name": "b3_pool", "input": "dedup", "batch_size": BATCH, "community_size": COMMUNITY,
             "rank_window": list(WINDOW)},
        ],
        "report": {"html": False},
    }
    path = work / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


# -- per-step figures from the run ---------------------------------------------------------------------------------


def _epoch(iso: str) -> float:
    return _dt.datetime.fromisoformat(iso).timestamp()


def step_windows(run_dir: Path) -> list[dict]:
    """(name, kind, start, end, seconds, rows) of each stage from events.jsonl."""
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    last_start = max(i for i, e in enumerate(events) if e["event"] == "run_start")
    order = [name for name in events[last_start].get("steps", [])]
    found, open_steps = {}, {}
    for e in events:  # every attempt: a step cached in the last one keeps the figures of the attempt that computed it (--resume)
        if e["event"] == "step_start":
            open_steps[e["step"]] = e
        elif e["event"] == "step_end" and e["step"] in open_steps:
            s = open_steps.pop(e["step"])
            if e.get("cached") and e["step"] in found and s.get("kind") != "store":
                continue
            found[e["step"]] = {"name": e["step"], "kind": s.get("kind"), "start": _epoch(s["time"]), "end": _epoch(e["time"]),
                                "seconds": e.get("seconds"), "cached": e.get("cached"), "rows_in": e.get("rows_in"),
                                "rows_out": e.get("rows_out"), "dir": s.get("dir")}
    return [found[name] for name in order if name in found]


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def dry_run_estimates(text: str, names: list[str]) -> dict[str, str]:
    """The dry run's memory estimate per step (its "memory per worker" column; it prints no time estimate)."""
    lines = text.splitlines()
    header = next((line for line in lines if line.startswith("step ") and "memory" in line), None)
    if header is None:
        return {}
    lo = header.index("memory")
    hi = header.index("directory") if "directory" in header else None
    out = {}
    for line in lines:
        name = line.split(" ", 1)[0]
        if name in names:
            out[name] = line[lo:hi].strip()
    return out


# -- correctness, computed here ------------------------------------------------------------------------------------


def curated_table(path: Path, columns: list[str] | None = None):
    from thresher.stores.curated import open_curated

    import pyarrow as pa

    curated = open_curated(path)
    tables = [t.select(columns) if columns else t for t in curated.tables()]
    return pa.concat_tables(tables) if tables else None


def check_semdedup(work: Path, run_dir: Path, step_dir: str, store, n: int) -> dict:
    import pyarrow.parquet as pq

    kept = curated_table(run_dir / step_dir, ["id"]).column("id").to_numpy(zero_copy_only=False)
    kept_pos = np.sort(store.positions_of(kept))
    removed = np.ones(n, dtype=bool)
    removed[kept_pos] = False
    pairs = pq.read_table(work / "pairs.parquet")
    dup, orig = pairs.column("dup").to_numpy(), pairs.column("orig").to_numpy()
    recovered = removed[dup] | removed[orig]
    both = removed[dup] & removed[orig]
    in_pair = np.zeros(n, dtype=bool)
    in_pair[dup] = True
    in_pair[orig] = True
    others_removed = int((removed & ~in_pair).sum())
    return {"rows_kept": int(len(kept_pos)), "rows_removed": int(removed.sum()), "pairs": int(len(dup)),
            "pair_recall": float(recovered.mean()), "pairs_both_removed": int(both.sum()),
            "non_duplicates_removed": others_removed, "non_duplicates_removed_share": float(others_removed / max(1, int((~in_pair).sum()))),
            "duplicate_ids_in_output": int(len(kept) - len(np.unique(kept)))}


def brute_force_rds(store, subset: np.ndarray, targets: dict[str, np.ndarray], budget: int, groups: np.ndarray, caps: dict[int, int],
                    block: int = 65_536) -> np.ndarray:
    """The RDS+ definition, blockwise: float64 cosine of every subset row to every query, per-task max, rank by (-score, position),
    round-robin over tasks (a picked row spends the turn; a row of a capped-out group is passed over). Returns store positions."""
    q64 = {t: _unit(np.asarray(q, dtype=np.float64)) for t, q in targets.items()}
    scores = {t: np.empty(len(subset)) for t in targets}
    for lo in range(0, len(subset), block):
        x = store.take(subset[lo : lo + block], dtype=np.float64)
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        for t, q in q64.items():
            scores[t][lo : lo + block] = (x @ q.T).max(axis=1)
    rankings = [np.lexsort((subset, -scores[t])) for t in targets]  # indices into subset
    picked: list[int] = []
    taken = np.zeros(len(subset), dtype=bool)
    group_count: dict[int, int] = {}
    pointer = [0] * len(rankings)
    while len(picked) < budget:
        progressed = False
        for t, ranking in enumerate(rankings):
            if len(picked) == budget:
                break
            while pointer[t] < len(ranking):
                i = int(ranking[pointer[t]])
                g = int(groups[i])
                if g in caps and group_count.get(g, 0) >= caps[g]:
                    pointer[t] += 1  # a full group's row does not spend the turn
                    continue
                break
            if pointer[t] >= len(ranking):
                continue
            progressed = True
            i = int(ranking[pointer[t]])
            pointer[t] += 1
            if not taken[i]:
                taken[i] = True
                picked.append(i)
                g = int(groups[i])
                group_count[g] = group_count.get(g, 0) + 1
        if not progressed:
            break
    return subset[np.asarray(picked, dtype=np.int64)]


def check_rds(work: Path, run_dir: Path, dedup_dir: str, rds_dir: str, store, n: int) -> dict:
    import pyarrow.parquet as pq

    from thresher.stores import open_embedding_store

    started = time.perf_counter()
    kept = curated_table(run_dir / dedup_dir, ["id"]).column("id").to_numpy(zero_copy_only=False)
    subset = np.sort(store.positions_of(kept))
    rds = curated_table(run_dir / rds_dir)
    got_ids = rds.column("id").to_numpy(zero_copy_only=False)
    if "rank" in rds.column_names:
        got_ids = got_ids[np.argsort(rds.column("rank").to_numpy(), kind="stable")]
    names, source_code = np.unique(pq.read_table(work / "pool.parquet", columns=["source"]).column("source").to_numpy(zero_copy_only=False),
                                   return_inverse=True)  # the pool file is in store order (the store was imported from its ids)
    spec = json.loads((run_dir / "manifest.json").read_text())["spec"]
    rds_spec = next(s for s in spec["steps"] if s["step"] == "rds")
    caps = {int(np.searchsorted(names, g)): int(c) for g, c in rds_spec["group_quotas"].items()}
    targets = {t: open_embedding_store(d).to_numpy() for t, d in rds_spec["targets"].items()}
    budget = len(got_ids)
    expected = brute_force_rds(store, subset, targets, budget, source_code[subset], caps)
    got_pos = store.positions_of(got_ids)
    same_order = bool(len(expected) == len(got_pos) and (expected == got_pos).all())
    same_set = bool(set(expected.tolist()) == set(got_pos.tolist()))
    first_diff = None
    if not same_order:
        k = int(np.flatnonzero(expected[: len(got_pos)] != got_pos[: len(expected)])[0]) if min(len(expected), len(got_pos)) else 0
        first_diff = {"rank": k}
    return {"rows": int(budget), "equals_brute_force_in_order": same_order, "equals_brute_force_as_set": same_set, "first_difference": first_diff,
            "duplicate_ids_in_output": int(len(got_ids) - len(np.unique(got_ids))), "source_00_rows": int((source_code[got_pos] == 0).sum()),
            "source_00_cap": int(next(iter(caps.values()))), "oracle_seconds": round(time.perf_counter() - started, 1)}


def check_smote(run_dir: Path, rds_dir: str, smote_dir: str) -> dict:
    from imblearn.utils import check_sampling_strategy

    import pyarrow.parquet as pq  # noqa: F401

    rds = curated_table(run_dir / rds_dir, ["id", "label"])
    y = rds.column("label").to_numpy(zero_copy_only=False)
    expected = {str(k): int(v) for k, v in check_sampling_strategy("auto", y, "over-sampling").items()}
    out = curated_table(run_dir / smote_dir, ["id", "label", "synthetic"])
    synthetic = out.column("synthetic").to_numpy(zero_copy_only=False)
    labels = out.column("label").to_numpy(zero_copy_only=False)
    got = {str(c): int(((labels == c) & synthetic).sum()) for c in np.unique(labels)}
    got = {c: v for c, v in got.items() if v}
    real_ids = out.column("id").to_numpy(zero_copy_only=False)[~synthetic]
    return {"class_counts_before": {str(c): int((y == c).sum()) for c in np.unique(y)}, "synthetic_expected": expected, "synthetic_got": got,
            "equals_imblearn": got == expected, "duplicate_ids_in_output": int(len(real_ids) - len(np.unique(real_ids))),
            "all_ids_unique": bool(len(np.unique(out.column("id").to_numpy(zero_copy_only=False))) == out.num_rows)}


def check_b3(run_dir: Path, step_dir: str, store, seed: int = 0, sample: int = 1000) -> dict:
    table = curated_table(run_dir / step_dir, ["id", "batch", "community"])
    ids = table.column("id").to_numpy(zero_copy_only=False)
    batch = table.column("batch").to_numpy()
    community = table.column("community").to_numpy()
    _, sizes = np.unique(community, return_counts=True)
    pairs = np.unique(np.stack([community, batch], axis=1), axis=0)
    whole = len(np.unique(pairs[:, 0])) == len(pairs)
    rng = np.random.default_rng(seed)
    comms = np.unique(community)
    picked = rng.choice(comms, size=min(sample, len(comms)), replace=False)
    order = np.argsort(community, kind="stable")
    starts = np.searchsorted(community[order], picked)
    positions = store.positions_of(ids)

    def mean_pair_cos(groups: list[np.ndarray]) -> float:
        values = []
        for g in groups:
            x = _unit(store.take(g, dtype=np.float64))
            s = x @ x.T
            values.append((s.sum() - np.trace(s)) / (len(g) * (len(g) - 1)))
        return float(np.mean(values))

    in_comm = mean_pair_cos([positions[order[s : s + COMMUNITY]] for s in starts])
    random_groups = [rng.choice(positions, size=COMMUNITY, replace=False) for _ in range(len(picked))]
    return {"rows": int(len(ids)), "batches": int(len(np.unique(batch))), "communities": int(len(comms)),
            "all_communities_exactly_k": bool((sizes == COMMUNITY).all()), "communities_whole": bool(whole),
            "duplicate_ids_in_output": int(len(ids) - len(np.unique(ids))), "mean_in_community_cosine": round(in_comm, 4),
            "mean_random_group_cosine": round(mean_pair_cos(random_groups), 4)}


# -- one size ------------------------------------------------------------------------------------------------------


def run_size(n: int, work: Path, *, regenerate: bool, semdedup_mode: str = "paper", resume: bool = False) -> dict:
    from thresher.stores import open_embedding_store

    result: dict = {"rows": n, "semdedup_mode": semdedup_mode}
    t0 = time.perf_counter()
    if regenerate or not (work / "pairs.parquet").exists():
        result["data"] = generate(n, work)
        (work / "data.json").write_text(json.dumps(result["data"]), encoding="utf-8")
    else:
        result["data"] = json.loads((work / "data.json").read_text(encoding="utf-8"))
    result["generate_seconds"] = round(time.perf_counter() - t0, 1)

    store_dir = work / "store"
    samples = work / "samples.txt"
    if resume and (work / "import.json").exists():  # an interrupted run goes on: finished steps keep their first measurements
        result["import"] = json.loads((work / "import.json").read_text(encoding="utf-8"))
    else:
        for old in (store_dir, work / "run", *sorted((work / "targets").glob("task*-store")), samples, work / "run.log"):
            if old.is_dir():
                shutil.rmtree(old)  # the bench's own outputs: each size is measured from the import on
            else:
                old.unlink(missing_ok=True)
        _, sampler, seconds = run_measured(thresher("embeddings", "import", str(work / "vectors.npy"), "--ids", str(work / "pool.parquet"),
                                                    "--out", str(store_dir), "--model", "bench-generated-384", "--pooling", "mean",
                                                    "--normalized", "--dtype", "float16", "--quiet"))
        rss, anon = sampler.peak()
        result["import"] = {"seconds": round(seconds, 1), "peak_rss": rss, "peak_anon": anon, "bytes": dir_bytes(store_dir)}
        (work / "import.json").write_text(json.dumps(result["import"]), encoding="utf-8")
    for t in range(N_TASKS):
        subprocess.run(thresher("embeddings", "import", str(work / "targets" / f"task{t}.npy"), "--ids", str(work / "targets" / f"task{t}.txt"),
                                "--out", str(work / "targets" / f"task{t}-store"), "--model", "bench-generated-384", "--pooling", "mean",
                                "--normalized", "--quiet"), check=True, cwd=ROOT, capture_output=True)

    spec = write_spec(work, n, semdedup_mode)
    dry = subprocess.run(thresher("run", str(spec), "--dry-run"), capture_output=True, text=True, cwd=ROOT)
    result["dry_run"] = dry.stdout + dry.stderr
    run_dir = work / "run"
    done, sampler, seconds = run_measured(thresher("run", str(spec), "--quiet"), log=work / "run.log", samples=samples)
    all_samples = TreeSampler.read(samples)
    steps = step_windows(run_dir)
    for s in steps:
        s["peak_rss"], s["peak_anon"] = peak_of(all_samples, s["start"], s["end"])
        s["bytes_written"] = dir_bytes(run_dir / s["dir"]) if s.get("dir") else None
    result["steps"] = steps
    result["resumed"] = resume
    # the whole run: this attempt's wall time, or, resumed, the steps' times added up (the attempts' start-up counted once)
    result["run_seconds"] = round(seconds if not resume else sum(s["seconds"] or 0 for s in steps) + 10.0, 1)
    result["run_peak_rss"], result["run_peak_anon"] = peak_of(all_samples) if resume else sampler.peak()
    result["estimates"] = dry_run_estimates(result["dry_run"], [s["name"] for s in steps])

    store = open_embedding_store(store_dir)
    dirs = {s["name"]: s["dir"] for s in steps}
    checks = {}
    checks["dedup"] = check_semdedup(work, run_dir, dirs["dedup"], store, n)
    checks["rds"] = check_rds(work, run_dir, dirs["dedup"], dirs["rds"], store, n)
    checks["balanced"] = check_smote(run_dir, dirs["rds"], dirs["balanced"])
    checks["b3_rds"] = check_b3(run_dir, dirs["b3_rds"], store)
    checks["b3_pool"] = check_b3(run_dir, dirs["b3_pool"], store)
    result["checks"] = checks
    return result


# -- report --------------------------------------------------------------------------------------------------------


def gib(b: int | None) -> str:
    return "" if b is None else f"{b / 2**30:.2f}"


def slopes(results: list[dict]) -> dict[str, float]:
    """Log-log slope of time against rows per step, between the smallest and the largest size measured."""
    if len(results) < 2:
        return {}
    a, b = results[0], results[-1]
    out = {}
    for s in b["steps"]:
        first = next((x for x in a["steps"] if x["name"] == s["name"]), None)
        if first and first["seconds"] and s["seconds"]:
            out[s["name"]] = float(np.log(s["seconds"] / first["seconds"]) / np.log(b["rows"] / a["rows"]))
    return out


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = [s["name"] for s in results[-1]["steps"]]
    fitted = slopes(results)
    for name in names:
        xs, ys = [], []
        for r in results:
            s = next((x for x in r["steps"] if x["name"] == name), None)
            if s and s["seconds"]:
                xs.append(r["rows"])
                ys.append(s["seconds"])
        if xs:
            label = f"{name} (slope {fitted[name]:.2f})" if name in fitted else name
            ax.plot(xs, ys, marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("pool rows")
    ax.set_ylabel("step wall time (s)")
    ax.set_title("thresher run: time per step against pool rows")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def markdown(results: list[dict], command: str, note: str) -> str:
    lines = [f"Command: `{command}` ({machine_line()}).", "",
             "Generated pool (text, 20 sources, 5 labels one at 2%), N × 384 float16 vectors in topic clusters of very different sizes, "
             "5% injected near-duplicates (cosine ≥ 0.97), 5 tasks × 200 queries. Store made by `thresher embeddings import`; one spec "
             "through `thresher run` on the default in-process cluster over that store. Peak = the whole process tree (driver, scheduler, "
             "nanny, workers), sampled every 0.2 s and attributed to the step running; RSS counts memory-mapped store pages, anon does not.", ""]
    lines += ["| rows | step | time s | peak RSS GiB | peak anon GiB | written GiB | rows in → out | dry-run estimate |",
              "| ---: | --- | ---: | ---: | ---: | ---: | --- | --- |"]
    for r in results:
        lines.append(f"| {r['rows']:,} | import (store) | {r['import']['seconds']} | {gib(r['import']['peak_rss'])} | {gib(r['import']['peak_anon'])} "
                     f"| {gib(r['import']['bytes'])} | {r['rows']:,} | |")
        for s in r["steps"]:
            est = r.get("estimates", {}).get(s["name"], "").replace("|", "/")
            lines.append(f"| {r['rows']:,} | {s['name']} ({s['kind']}) | {s['seconds']:.1f} | {gib(s['peak_rss'])} | {gib(s['peak_anon'])} "
                         f"| {gib(s['bytes_written'])} | {s['rows_in'] or 0:,} → {s['rows_out'] or 0:,} | {est} |")
        lines.append(f"| {r['rows']:,} | **whole run** | **{r['run_seconds']}** | **{gib(r['run_peak_rss'])}** | **{gib(r['run_peak_anon'])}** | | | |")
    fitted = slopes(results)
    if fitted:
        lines += ["", "Log-log slope of time against rows, " + f"{results[0]['rows']:,} → {results[-1]['rows']:,}: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in fitted.items()) + f". Plot: `{PLOT.relative_to(ROOT)}`."]
        last = results[-1]
        if last["rows"] < 5_800_000:
            projected = {s["name"]: s["seconds"] * (5_800_000 / last["rows"]) ** fitted[s["name"]] for s in last["steps"] if s["name"] in fitted}
            lines += ["", f"Projected at 5,800,000 rows from these slopes (from the {last['rows']:,}-row times, same load): "
                      + ", ".join(f"{k} {v / 60:,.0f} min" for k, v in projected.items())
                      + f"; all steps {sum(projected.values()) / 3600:.1f} h."]
    lines += ["", "Correctness (computed by the benchmark, independently of thresher):", "",
              "| rows | SemDeDup pair recall | non-duplicates removed | RDS+ = brute force (order, set) | source_00 rows / cap | SMOTE = imblearn | "
              "B3 (RDS+) K-exact, whole | B3 (RDS+) cos in-community / random | B3 (pool) K-exact, whole | B3 (pool) cos / random | any id twice |",
              "| ---: | ---: | ---: | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        c = r["checks"]
        twice = sum(c[k]["duplicate_ids_in_output"] for k in c)
        lines.append(f"| {r['rows']:,} | {c['dedup']['pair_recall']:.4f} ({r.get('semdedup_mode', 'paper')} mode) | {c['dedup']['non_duplicates_removed_share']:.4%} "
                     f"| {c['rds']['equals_brute_force_in_order']}, {c['rds']['equals_brute_force_as_set']} "
                     f"| {c['rds']['source_00_rows']} / {c['rds']['source_00_cap']} | {c['balanced']['equals_imblearn']} "
                     f"| {c['b3_rds']['all_communities_exactly_k']}, {c['b3_rds']['communities_whole']} "
                     f"| {c['b3_rds']['mean_in_community_cosine']} / {c['b3_rds']['mean_random_group_cosine']} "
                     f"| {c['b3_pool']['all_communities_exactly_k']}, {c['b3_pool']['communities_whole']} "
                     f"| {c['b3_pool']['mean_in_community_cosine']} / {c['b3_pool']['mean_random_group_cosine']} | {twice} |")
    lines += ["", "Load average (1 min) at the start and end of each size's run, on " + f"{os.cpu_count()} cores: "
              + ", ".join(f"{r['rows']:,}: {r['load_average'][0]} → {r['load_average'][1]} ({r.get('measured_at', '')})" for r in results if "load_average" in r)
              + " — above the core count the machine was shared with other jobs and times are inflated.", "", note]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--work", type=Path, default=Path("/tmp/thresher-bench-scale"), help="Where the data and runs go (kept).")
    parser.add_argument("--regenerate", action="store_true", help="Generate the data again even if it is there.")
    parser.add_argument("--no-write", action="store_true", help="Do not touch BENCHMARKS.md, bench/scale.json or the plot.")
    parser.add_argument("--merge", action="store_true", help="Keep the other sizes already in bench/scale.json (measured earlier).")
    parser.add_argument("--resume", action="store_true",
                        help="Go on with an interrupted run: keep the store and the run directory; finished steps keep their measurements.")
    parser.add_argument("--semdedup-mode", choices=["paper", "exact"], default="paper",
                        help="SemDeDup's mode in the spec (paper: within k-means clusters only, the default; exact: across cluster borders).")
    parser.add_argument("--report-only", action="store_true", help="Measure nothing: rewrite the table and plot from bench/scale.json.")
    args = parser.parse_args()
    if args.report_only:
        write_report(json.loads(RESULTS_JSON.read_text(encoding="utf-8")))
        return
    results = []
    for n in sorted(args.rows):
        print(f"== {n:,} rows", file=sys.stderr, flush=True)
        before = os.getloadavg()[0]
        r = run_size(n, args.work / str(n), regenerate=args.regenerate, semdedup_mode=args.semdedup_mode,
                     resume=args.resume)
        r["load_average"] = [round(before, 1), round(os.getloadavg()[0], 1)]
        r["measured_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="minutes")
        results.append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "dry_run"}, default=str), flush=True)
    if args.no_write:
        return
    if args.merge and RESULTS_JSON.exists():
        measured = {r["rows"] for r in results}
        results = sorted([r for r in json.loads(RESULTS_JSON.read_text(encoding="utf-8")) if r["rows"] not in measured] + results,
                         key=lambda r: r["rows"])
    write_report(results)


def write_report(results: list[dict]) -> None:
    """bench/scale.json, the plot and the BENCHMARKS.md section, from the results of every size."""
    for r in results:
        if "dry_run" in r:  # the printed line of a size carries its estimates only
            r["estimates"] = dry_run_estimates(r["dry_run"], [s["name"] for s in r["steps"]])
        for s in r["steps"]:
            if s["kind"] == "store":
                s["bytes_written"] = None  # read in place: the import's row holds what was written
    command = "python bench/bench_scale.py --rows " + " ".join(str(r["rows"]) for r in results)
    RESULTS_JSON.write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    if len(results) > 1:
        plot(results, PLOT)
    update_benchmarks_md("Pool scale (issue 13)", markdown(results, command, NOTES.read_text(encoding="utf-8") if NOTES.exists() else ""))


if __name__ == "__main__":
    main()
