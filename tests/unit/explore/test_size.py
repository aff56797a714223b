"""The page's size is bounded by construction: a capped number of rows, texts cut, numbers rounded — whatever the run's size."""

from __future__ import annotations

import json
import time

import re
import shutil
import subprocess

import numpy as np
import pyarrow as pa
import pytest
import pyarrow.parquet as pq

from thresher.explore import explore
from thresher.stores import finalize_embedding_store, write_embedding_shard
from thresher.stores.curated import write_curated
from thresher.stores.manifest import write_manifest
from thresher.stores.pool import open_pool

N_ROWS = 200_000
TEXT = "word " * 160  # 800 characters: longer than any cut


def _big_run(root):
    """A run of 200,000 pool rows (parquet, long texts), random 8-d embeddings, one selection keeping half of them."""
    rng = np.random.default_rng(0)
    ids = np.array([f"row-{i:06d}" for i in range(N_ROWS)], dtype=object)
    pq.write_table(pa.table({"id": ids, "text": [f"{i} {TEXT}" for i in range(N_ROWS)], "source": [f"s{i % 7}" for i in range(N_ROWS)]}),
                   root / "pool.parquet", row_group_size=50_000)
    pool = open_pool(str(root / "pool.parquet"), id_column="id", partition_rows=50_000)
    store_dir = root / "run" / "embeddings"
    store_dir.mkdir(parents=True)
    shards = []
    for i, part in enumerate(pool.partitions):
        x = rng.standard_normal((part.stop - part.start, 8)).astype(np.float32)
        shards.append(write_embedding_shard(store_dir, i, pa.array(ids[part.start : part.stop].tolist()), x))
    finalize_embedding_store(store_dir, shards=shards, fingerprint="big", dim=8, dtype="float32", encoder={"normalize": False},
                             pool=pool.describe(), extra={"text": {"kind": "column", "text_column": "text"}})
    chosen = np.sort(rng.choice(N_ROWS, size=N_ROWS // 2, replace=False))
    write_curated(root / "run" / "steps" / "01-pick", pool=pool, positions=chosen,
                  columns={"score": rng.random(len(chosen)), "task": np.array(["a", "b"], dtype=object)[chosen % 2]},
                  selector="rds_plus", params={"targets": ["a", "b"]}, fingerprint="pick")
    steps = [{"name": "embed", "step": "embed", "dir": "embeddings", "rows_in": N_ROWS, "rows_out": N_ROWS},
             {"name": "pick", "step": "rds", "dir": "steps/01-pick", "rows_in": N_ROWS, "rows_out": len(chosen)}]
    write_manifest(root / "run", "run", fingerprint="big-run", body={"steps": steps, "output": "steps/01-pick"})
    return root / "run"


@pytest.fixture(scope="module")
def big_page(tmp_path_factory):
    root = tmp_path_factory.mktemp("big")
    run = _big_run(root)
    started = time.perf_counter()
    page = explore(run, root / "explore.html", map_rows=20_000, table_rows=5_000, method="pca")
    return page, time.perf_counter() - started


def test_a_page_of_a_large_run_embeds_a_bounded_number_of_rows(big_page):
    page, seconds = big_page
    html = page.read_text(encoding="utf-8")
    tag = '<script type="application/json" id="thresher-data">'
    start = html.index(tag) + len(tag)
    payload = json.loads(html[start : html.index("</script>", start)])
    counts, rows = payload["counts"], payload["rows"]
    # the caps, by construction: at most map_rows + table_rows rows (their union), texts cut
    assert counts["n_pool"] == N_ROWS and counts["n_final"] == N_ROWS // 2
    assert counts["n_map_sample"] == 20_000 and counts["n_table"] == 5_000
    assert len(rows["id"]) == counts["n_rows"] <= 25_000
    in_table = np.array(rows["in_table"], dtype=bool)
    lengths = np.array([len(t) for t in rows["text"]])
    assert lengths[in_table].max() == 501 and lengths[~in_table].max() == 201  # cut, plus the ellipsis
    assert rows["text"][0].endswith("…")
    # and the page stays well under 15 MB (the same bound holds at 1M rows: nothing above grows with the pool)
    size = page.stat().st_size
    assert size < 15 * 2**20, size
    assert size < len(rows["id"]) * 700 + 200_000  # about a row's text, id and numbers each: nothing else grows
    print(f"\n200k-row run: page {size / 2**20:.1f} MiB, {len(rows['id'])} rows embedded, written in {seconds:.1f} s")


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_the_large_page_draws_its_map_and_table_in_headless_chromium(big_page, tmp_path):
    """The page sets data-ready-ms on <body> when its map and table are drawn (time since navigation began).

    How fast is measured in bench/bench_explore.py, not here (timed tests are noise on a shared machine)."""
    page, _ = big_page
    args = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom"]
    dom = subprocess.run([*args, page.as_uri()], capture_output=True, text=True, timeout=120, check=True).stdout
    ready = re.search(r'data-ready-ms="(\d+)"', dom)
    assert ready is not None, "the page's script did not finish"
    assert int(ready.group(1)) > 0
    assert dom.count("<tr data-row=") == 25  # the table's first page was drawn
