"""A killed job (embedding, RDS selection), rerun, gives the same artefact as an uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from thresher.stores import open_curated, open_embedding_store


def embed_command(pool: Path, out: Path, partition_rows: int = 20) -> list[str]:
    return [sys.executable, "-m", "thresher", "embed", "--pool", str(pool), "--out", str(out), "--text", "{instruction}\\n\\n{response}",
            "--id-column", "uid", "--partition-rows", str(partition_rows), "--workers", "1", "--quiet"]


def _content(shards: list[dict]) -> list[dict]:
    """A manifest's shard entries without when each file was written (``mtime_ns``)."""
    return [{k: s[k] for k in ("file", "rows", "checksum", "size")} for s in shards]


def test_killed_job_resumes_to_identical_store(tmp_path, make_text_pool):
    pool = make_text_pool(tmp_path / "pool.jsonl", 100)  # 10 partitions: nine still to embed when the first is done
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    subprocess.run(embed_command(pool, reference, 10), check=True, capture_output=True, timeout=300)

    proc = subprocess.Popen(embed_command(pool, resumed, 10), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    # wait for a partition's completion marker (written right after its shard), then kill
    while not list(resumed.glob(".part-*.done.json")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its cluster, as a machine crash would
    proc.wait()
    assert list(resumed.glob("part-*.arrow")), "the job never wrote a shard before being killed"
    assert not (resumed / "manifest.json").exists(), "the job finished before it could be killed; enlarge the pool"

    subprocess.run(embed_command(pool, resumed, 10), check=True, capture_output=True, timeout=300)
    a, b = open_embedding_store(reference, verify=True), open_embedding_store(resumed, verify=True)
    assert b.manifest["n_resumed_partitions"] >= 1
    assert _content(a.manifest["shards"]) == _content(b.manifest["shards"])  # same names, rows and checksums
    for shard in a.manifest["shards"]:
        assert (reference / shard["file"]).read_bytes() == (resumed / shard["file"]).read_bytes()
    assert not list(resumed.glob(".tmp-*")) and not list(resumed.glob(".*.done.json"))


def test_second_writer_to_the_same_output_is_refused(tmp_path, make_text_pool):
    pool = make_text_pool(tmp_path / "pool.jsonl", 200)
    out = tmp_path / "emb"
    first = subprocess.Popen(embed_command(pool, out), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out / ".thresher-lock.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        second = subprocess.run(embed_command(pool, out), capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert "being written by another thresher job" in second.stderr and f"pid {first.pid}" in second.stderr
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()


def rds_command(store: Path, target: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "thresher", "select", "rds", "--pool-embeddings", str(store), "--targets", f"t={target}",
            "--budget", "200", "--out", str(out), "--workers", "1", "--quiet"]


def without_timestamps(manifest: dict) -> dict:
    """The manifest less when it and its files were written (``created_at``, each shard's ``mtime_ns``)."""
    out = {k: v for k, v in manifest.items() if k != "created_at"}
    for key in ("shards", "attachments"):
        if key in out:
            out[key] = [{k: v for k, v in s.items() if k != "mtime_ns"} for s in out[key]]
    return out


def test_killed_rds_selection_reruns_to_identical_shards_and_manifest(tmp_path, make_text_pool, make_random_store):
    pool = make_text_pool(tmp_path / "pool.jsonl", 300)
    store = make_random_store(pool, tmp_path / "emb", partition_rows=5)  # 60 partitions: 60 staging tasks
    target = make_random_store(pool, tmp_path / "target", partition_rows=100, seed=1)
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    subprocess.run(rds_command(store.path, target.path, reference), check=True, capture_output=True, timeout=300)

    proc = subprocess.Popen(rds_command(store.path, target.path, resumed), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not list(resumed.glob(".staging/stage-*.arrow")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(resumed.glob(".staging/stage-*.arrow")), "the job never staged a partition before being killed"
    assert not (resumed / "manifest.json").exists(), "the job finished before it could be killed"
    assert (resumed / ".thresher-lock.json").exists()  # left by the killed driver: the rerun must take it over

    subprocess.run(rds_command(store.path, target.path, resumed), check=True, capture_output=True, timeout=300)
    a, b = open_curated(reference, verify=True), open_curated(resumed, verify=True)
    assert without_timestamps(a.manifest) == without_timestamps(b.manifest)
    assert b.manifest["job"]["tasks"] > 0 and b.manifest["job"]["retries"] == 0
    for shard in a.manifest["shards"]:
        assert (reference / shard["file"]).read_bytes() == (resumed / shard["file"]).read_bytes()
    assert sorted(p.name for p in resumed.iterdir()) == sorted(p.name for p in reference.iterdir())
