"""The explore page at scale (issue 18): for a run of N rows, the page's bytes, the time to build it, and the time until it is
usable in headless Chromium, against the static report on the same run.

The run is built directly with thresher's writers, streaming, so it costs no
model and no selection work (the page reads artefacts; how they were made
does not matter to it): a parquet pool of N rows (real texts of mixed length
from the chitchat and BBC corpora, ``source`` with 20 unequal values,
``label`` with 5 classes), an embedding store of N generated 384-d vectors in
200 topic clusters (float16), and four steps with every per-row fact a real
run stores, each made under the lineage a run records:

* ``dedup`` (semdedup): 95% of the pool kept; ``removed.arrow`` names each
  removed row's kept twin and their similarity;
* ``rds`` (rds_plus, on dedup): 10% of the pool, 5 tasks, ``task_scores``,
  ``nearest_target`` and ``targets.arrow`` (5 x 200 target texts);
* ``balanced`` (smote, on rds, a branch): rds's rows plus 20% as many
  synthetic rows with parents, gap and their vector;
* ``batches`` (b3, on rds): rds's rows in batches of 1,024 (communities of
  32), the run's final output.

Measured, each in a fresh process (so its peak memory is its own; anonymous
RSS, see ``_common.PeakMemory``): ``thresher.explore`` (PCA map: the default
when umap-learn is not installed) and the baseline, ``thresher report`` with
``explore=False`` — the static page a run already writes. Then both pages
are opened in headless Chromium through Selenium (a fresh browser each
time): for the explore page, navigation start to the ``data-ready-ms``
marker its script sets on ``<body>`` once the map and the table's first page
are drawn (``performance.now()`` at that moment, whose origin is the
navigation's start), and ``loadEventEnd``; for the report, ``loadEventEnd``.

    python bench/bench_explore.py --rows 100000             # then BENCHMARKS.md ("Explore page")
    python bench/bench_explore.py --rows 1000000 --work /big/disk --keep

Memory while building the run: one 50,000-row chunk of the pool and its
vectors, plus numpy arrays of positions (8 bytes a row) and the selections'
columns (the rds selection's vectors: N/10 x 384 float32). No Python object
per pool row.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    PeakMemory,
    bbc_documents,
    chitchat_utterances,
    load_note,
    machine_line,
    run_variant,
    update_benchmarks_md,
)

DIM = 384
CHUNK = 50_000
N_TOPICS = 200
N_SOURCES = 20
LABELS = ["c0", "c1", "c2", "c3", "c4"]
LABEL_P = [0.40, 0.30, 0.18, 0.10, 0.02]
TASKS = ["math", "code", "travel", "food", "health"]
N_TARGETS = 200
KEEP_DEDUP, KEEP_RDS, SYNTHETIC_SHARE = 0.95, 0.10, 0.20
BATCH, COMMUNITY = 1024, 32
BROWSER_RUNS = 3


# -- the run ------------------------------------------------------------------------------------------------------


def _ids(positions: np.ndarray) -> np.ndarray:
    """Pool ids of positions as a numpy string array ("row-0000042"): no Python object per row."""
    return np.char.add("row-", np.char.zfill(np.asarray(positions).astype(str), 7))


def _texts(lo: int, hi: int, short: list[str], long: list[str]) -> list[str]:
    """Rows lo..hi of a mixed corpus: every fifth a long news-summary prompt, the others chat turns (as _common.mixed_texts)."""
    return [long[(i // 5) % len(long)] if i % 5 == 4 else short[(i - i // 5) % len(short)] for i in range(lo, hi)]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _column_at(pool, positions: np.ndarray, name: str) -> np.ndarray:
    """A pool column's values at sorted ``positions``, read partition by partition."""
    import pyarrow as pa

    parts = []
    for i, part in enumerate(pool.partitions):
        mine = positions[(positions >= part.start) & (positions < part.stop)] - part.start
        if len(mine):
            parts.append(pool.read_partition(i, columns=[name]).column(name).take(pa.array(mine)).to_numpy(zero_copy_only=False))
    return np.concatenate(parts).astype(str)


def build_run(n: int, root: Path, seed: int = 0) -> Path:
    """Write the pool, the store and the four steps of an n-row run under ``root``; return the run directory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from thresher.stores import finalize_embedding_store, write_embedding_shard
    from thresher.stores.curated import write_curated
    from thresher.stores.embedding_store import open_embedding_store
    from thresher.stores.manifest import manifest_lineage, write_manifest
    from thresher.stores.pool import open_pool

    root.mkdir(parents=True, exist_ok=True)
    run = root / "run"
    rng = np.random.default_rng(seed)
    short = chitchat_utterances()
    long = [f"Summarise the following {cat} article in three sentences.\n\n{text}" for cat, text in bbc_documents()]
    centres = _unit(0.4 * _unit(rng.standard_normal((1, DIM))) + _unit(rng.standard_normal((N_TOPICS, DIM)))).astype(np.float32)
    topic_p = rng.lognormal(0.0, 1.0, N_TOPICS)
    topic_p /= topic_p.sum()
    source_p = 1.0 / np.arange(1, N_SOURCES + 1) ** 1.1
    source_p /= source_p.sum()
    sources = np.array([f"source_{i:02d}" for i in range(N_SOURCES)])

    # the pool (parquet, one row group a chunk) and the store (one shard a pool partition), chunk by chunk
    schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("source", pa.string()), ("label", pa.string())])
    topics = np.empty(n, dtype=np.int16)
    with pq.ParquetWriter(root / "pool.parquet", schema) as writer:
        for c, lo in enumerate(range(0, n, CHUNK)):
            hi = min(n, lo + CHUNK)
            crng = np.random.default_rng([seed, c])
            topics[lo:hi] = crng.choice(N_TOPICS, size=hi - lo, p=topic_p)
            writer.write_table(pa.table({"id": pa.array(_ids(np.arange(lo, hi))), "text": _texts(lo, hi, short, long),
                                         "source": pa.array(sources[crng.choice(N_SOURCES, size=hi - lo, p=source_p)]),
                                         "label": pa.array(np.array(LABELS)[crng.choice(len(LABELS), size=hi - lo, p=LABEL_P)])},
                                        schema=schema))
    pool = open_pool(str(root / "pool.parquet"), id_column="id", partition_rows=CHUNK)
    store_dir = run / "embeddings"
    store_dir.mkdir(parents=True)
    shards = []
    for i, part in enumerate(pool.partitions):
        crng = np.random.default_rng([seed, 10_000 + i])
        t = topics[part.start : part.stop]
        x = _unit(centres[t] + crng.standard_normal((len(t), DIM), dtype=np.float32) * (1.2 / np.sqrt(DIM)))
        shards.append(write_embedding_shard(store_dir, i, pa.array(_ids(np.arange(part.start, part.stop))), x, dtype="float16"))
    finalize_embedding_store(store_dir, shards=shards, fingerprint=f"bench-explore-{n}", dim=DIM, dtype="float16",
                             encoder={"normalize": True}, pool=pool.describe(), extra={"text": {"kind": "column", "text_column": "text"}})
    store = open_embedding_store(store_dir)

    def lineage(step: str, inputs: list[tuple[str, str]]) -> dict:
        return {"run": str(run), "step": step, "step_kind": step, "inputs": [{"step": s, "dir": d, "fingerprint": s} for s, d in inputs]}

    # dedup: 95% kept (position order), the others removed as near-duplicates of a kept row of their topic
    order = rng.permutation(n)
    removed = np.sort(order[: n - int(n * KEEP_DEDUP)])
    kept = np.setdiff1d(np.arange(n), removed)
    twins = kept[np.clip(np.searchsorted(kept, removed), 0, len(kept) - 1)]
    similarity = rng.uniform(0.95, 0.999, len(removed))
    removed_table = pa.table({"id": pa.array(_ids(removed)), "duplicate_of": pa.array(_ids(twins)), "similarity": similarity,
                              "max_similarity": similarity, "cluster": topics[removed].astype(np.int64)})
    with manifest_lineage(lineage("dedup", [("embed", "embeddings")])):
        write_curated(run / "steps/01-dedup", pool=pool, positions=kept,
                      columns={"cluster": topics[kept].astype(np.int64), "centroid_distance": rng.random(len(kept)),
                               "max_similarity": rng.uniform(0.2, 0.95, len(kept))},
                      selector="semdedup", params={"eps": 0.05, "n_clusters": N_TOPICS}, fingerprint="dedup", seed=seed,
                      attachments={"removed.arrow": removed_table})
    del removed_table, twins, similarity

    # rds: 10% of the pool from dedup's rows, best first, with per-task scores and the nearest target example
    rds = rng.choice(kept, size=int(n * KEEP_RDS), replace=False)
    n_rds = len(rds)
    task_scores = rng.uniform(0.1, 0.9, (n_rds, len(TASKS)))
    best = task_scores.max(axis=1)
    order = np.argsort(-best, kind="stable")
    rds, task_scores, best = rds[order], task_scores[order], best[order]
    targets = pa.table({"task": np.repeat(TASKS, N_TARGETS), "position": np.tile(np.arange(N_TARGETS), len(TASKS)),
                        "text": [short[(7 * i) % len(short)] for i in range(len(TASKS) * N_TARGETS)]})
    with manifest_lineage(lineage("rds", [("dedup", "steps/01-dedup")])):
        write_curated(run / "steps/02-rds", pool=pool, positions=rds,
                      columns={"score": best, "task": np.array(TASKS)[task_scores.argmax(axis=1)],
                               "task_scores": pa.FixedSizeListArray.from_arrays(pa.array(task_scores.reshape(-1)), len(TASKS)).cast(pa.list_(pa.float64())),
                               "nearest_target": pa.FixedSizeListArray.from_arrays(
                                   pa.array(rng.integers(0, N_TARGETS, n_rds * len(TASKS))), len(TASKS)).cast(pa.list_(pa.int64()))},
                      selector="rds_plus", params={"targets": TASKS, "budget": n_rds}, fingerprint="rds", seed=seed,
                      attachments={"targets.arrow": targets})
    del task_scores, best

    # balanced (smote on rds): rds's rows in pool order, then synthetic rows between a row and another of its class
    base = np.sort(rds)
    vectors = store.take(base).astype(np.float32)
    label_of = _column_at(pool, base, "label")
    n_syn = int(n_rds * SYNTHETIC_SHARE)
    first, second = rng.integers(0, n_rds, n_syn), rng.integers(0, n_rds, n_syn)
    gap = rng.random(n_syn).astype(np.float32)
    syn_vectors = (vectors[first] + gap[:, None] * (vectors[second] - vectors[first])).astype(np.float32)
    base_ids = _ids(base)

    def fixed(x: np.ndarray) -> pa.Array:
        return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(x, dtype=np.float32).reshape(-1)), DIM)

    synthetic = pa.table({"id": pa.array(np.char.add(np.char.add("synthetic:", label_of[first].astype(str)), np.char.add(":", np.arange(n_syn).astype(str)))),
                          "label": pa.array(label_of[first].astype(str)), "synthetic": pa.array(np.ones(n_syn, dtype=bool)),
                          "parents": pa.FixedSizeListArray.from_arrays(pa.array(np.stack([base_ids[first], base_ids[second]], axis=1).reshape(-1)), 2),
                          "gap": pa.array(gap), "embedding": fixed(syn_vectors)})
    with manifest_lineage(lineage("balanced", [("rds", "steps/02-rds")])):
        write_curated(run / "steps/03-balanced", pool=pool, positions=base,
                      columns={"synthetic": pa.array(np.zeros(n_rds, dtype=bool)), "parents": pa.nulls(n_rds, pa.list_(pa.string(), 2)),
                               "gap": pa.nulls(n_rds, pa.float32()), "embedding": fixed(vectors)},
                      selector="smote", params={"labels": "label", "k_neighbors": 5}, fingerprint="balanced", seed=seed, extra_rows=synthetic)
    del vectors, syn_vectors, synthetic

    # batches (b3 on rds): rds's rows in batch order, whole batches only
    n_b3 = (n_rds // BATCH) * BATCH
    in_batches = rng.permutation(rds)[:n_b3]
    slot = np.arange(n_b3)
    with manifest_lineage(lineage("batches", [("rds", "steps/02-rds")])):
        write_curated(run / "steps/04-batches", pool=pool, positions=in_batches,
                      columns={"batch": slot // BATCH, "community": slot // COMMUNITY, "position": slot % BATCH},
                      selector="b3", params={"batch_size": BATCH, "community_size": COMMUNITY}, fingerprint="batches", seed=seed)

    steps = [{"name": "embed", "step": "embed", "dir": "embeddings", "rows_in": n, "rows_out": n},
             {"name": "dedup", "step": "semdedup", "dir": "steps/01-dedup", "rows_in": n, "rows_out": len(kept)},
             {"name": "rds", "step": "rds", "dir": "steps/02-rds", "rows_in": len(kept), "rows_out": n_rds},
             {"name": "balanced", "step": "smote", "dir": "steps/03-balanced", "rows_in": n_rds, "rows_out": n_rds + n_syn},
             {"name": "batches", "step": "batches", "dir": "steps/04-batches", "rows_in": n_rds, "rows_out": n_b3}]
    write_manifest(run, "run", fingerprint=f"bench-explore-run-{n}",
                   body={"spec": {"report": {"html": True, "columns": ["source", "label"], "explore": True}}, "steps": steps,
                         "output": "steps/04-batches", "outputs": ["steps/03-balanced", "steps/04-batches"], "report": None})
    return run


# -- the measured variants (each in a fresh process) -----------------------------------------------------------------


def variant(kind: str, run: Path, out: Path) -> dict:
    """Build one page of ``run`` at ``out``: "explore" (the explore page) or "report" (the static report, no explore page)."""
    import thresher
    from thresher.report import write_report

    with PeakMemory() as peak:
        started = time.perf_counter()
        if kind == "explore":
            thresher.explore(run, out, method="pca")
        else:
            write_report(run, out, explore=False)
        seconds = time.perf_counter() - started
    return {"kind": kind, "seconds": seconds, "bytes": out.stat().st_size, "peak_bytes": peak.peak}


def open_in_chromium(page: Path, profile: Path, *, explore: bool) -> dict:
    """Open ``page`` in a fresh headless Chromium; navigation start → ready marker (explore page) and → loadEventEnd, in ms."""
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1100", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=shutil.which("chromedriver")))
    try:
        driver.set_page_load_timeout(120)
        driver.get(page.as_uri())
        out = {}
        if explore:
            WebDriverWait(driver, 120).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready-ms"))
            out["ready_ms"] = driver.execute_script("return window.thresherExplore.readyMs;")
            out["script_ms"] = driver.execute_script("return window.thresherExplore.scriptMs;")
            out["table_rows_drawn"] = len(driver.find_elements(By.CSS_SELECTOR, "#rows tbody tr"))
        out["load_ms"] = driver.execute_script("return performance.getEntriesByType('navigation')[0].loadEventEnd;")
        return out
    finally:
        driver.quit()


# -- the whole benchmark -------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000])
    parser.add_argument("--work", type=Path, default=None, help="where the runs are built (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the runs (and reuse a run already built there)")
    parser.add_argument("--no-write", action="store_true", help="print the figures; leave BENCHMARKS.md as it is")
    parser.add_argument("--variant", choices=["explore", "report"], help=argparse.SUPPRESS)
    parser.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(variant(args.variant, args.run, args.out)))
        return

    load_start = os.getloadavg()[0]
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-explore-"))
    results = []
    try:
        for n in args.rows:
            root = work / f"rows-{n}"
            run = root / "run"
            started = time.perf_counter()
            if not (args.keep and (run / "manifest.json").is_file()):
                shutil.rmtree(root, ignore_errors=True)
                with PeakMemory() as peak:
                    build_run(n, root)
                print(f"[{n:,}] run built in {time.perf_counter() - started:.1f} s (peak {peak.peak / 2**30:.2f} GiB)", flush=True)
            pages = root / "pages"
            pages.mkdir(exist_ok=True)
            row = {"rows": n}
            for kind, name in (("explore", "explore.html"), ("report", "report.html")):
                measured = run_variant(Path(__file__), "--variant", kind, "--run", str(run), "--out", str(pages / name))
                browser = [open_in_chromium(pages / name, root / f"profile-{kind}-{i}", explore=kind == "explore") for i in range(BROWSER_RUNS)]
                row[kind] = {**measured, "browser": browser}
                print(f"[{n:,}] {kind}: {json.dumps(row[kind])}", flush=True)
            results.append(row)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    lines = ["| pool rows | page | build (s) | peak memory | size | usable in Chromium: median (runs) | loadEventEnd: median |",
             "| ---: | --- | ---: | ---: | ---: | --- | ---: |"]
    for row in results:
        for kind in ("explore", "report"):
            r = row[kind]
            ready = [b["ready_ms"] for b in r["browser"]] if kind == "explore" else []
            loads = [b["load_ms"] for b in r["browser"]]
            usable = f"{statistics.median(ready):.0f} ms ({', '.join(f'{v:.0f}' for v in ready)})" if ready else "— (no script: usable at load)"
            lines.append(f"| {row['rows']:,} | {'explore.html' if kind == 'explore' else 'report.html (baseline)'} | {r['seconds']:.1f} | "
                         f"{r['peak_bytes'] / 2**30:.2f} GiB | {r['bytes'] / 2**20:.1f} MiB | {usable} | {statistics.median(loads):.0f} ms |")
        e, s = row["explore"], row["report"]
        lines.append(f"| {row['rows']:,} | ratio explore / report | {e['seconds'] / s['seconds']:.2f}× | "
                     f"{e['peak_bytes'] / s['peak_bytes']:.2f}× | {e['bytes'] / s['bytes']:.2f}× | | "
                     f"{statistics.median(b['load_ms'] for b in e['browser']) / statistics.median(b['load_ms'] for b in s['browser']):.2f}× |")
    table = "\n".join(lines)
    body = (f"Command: `python bench/bench_explore.py --rows {' '.join(str(r) for r in args.rows)}` ({machine_line()}).\n\n"
            "A run built directly with thresher's writers (no model): dedup keeps 95%, RDS+ 10% of the pool over 5 tasks, SMOTE adds 20% "
            "synthetic rows on a branch, B3 batches RDS+'s rows (the final output); see the script's docstring. "
            "`explore.html` is `thresher.explore(run, out, method=\"pca\")` (the default map without umap-learn: a 20,000-row "
            "sample; at most 5,000 table rows); the baseline is the static `report.html` of the same run (`write_report(run, out, "
            "explore=False)`). Peak memory: anonymous RSS of the process building the page. Usable: navigation start to the "
            "`data-ready-ms` marker the page sets when its map and first table page are drawn, in a fresh headless Chromium each "
            f"run (Selenium, {BROWSER_RUNS} runs).\n\n{table}\n\n{load_note(load_start)}")
    print(table)
    if not args.no_write:
        update_benchmarks_md("Explore page (issue 18)", body)


if __name__ == "__main__":
    main()
