"""Data for the integration tests: small pools of real, mixed-length text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from thresher.data import read_demo_pool


def demo_rows(n: int) -> list[dict]:
    return read_demo_pool(n)


def write_text_pool(path: Path, n: int) -> Path:
    """A jsonl pool of ``n`` rows with instruction/response columns of very different lengths."""
    rows = []
    for i, row in enumerate(demo_rows(n)):
        turns = [m["content"] for m in row["messages"]]
        response = " ".join(turns[1:]) * (1 + i % 7)  # some far longer than the model's 256-token limit
        rows.append({"uid": row["id"], "instruction": turns[0], "response": response or turns[0], "source": "chitchat"})
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


@pytest.fixture
def text_pool(tmp_path) -> Path:
    return write_text_pool(tmp_path / "pool.jsonl", 90)


@pytest.fixture
def make_text_pool():
    """``make_text_pool(path, n)`` writes a pool like :func:`text_pool` of any size."""
    return write_text_pool


def write_random_store(pool_path: Path, out: Path, *, partition_rows: int, dim: int = 16, seed: int = 0, id_column: str = "uid"):
    """An embedding store of seeded random unit vectors for the rows of a real pool, one shard per pool partition (no model: fast)."""
    import numpy as np

    from thresher.stores import finalize_embedding_store, open_embedding_store, write_embedding_shard
    from thresher.stores.pool import open_pool

    pool = open_pool(str(pool_path), id_column=id_column, partition_rows=partition_rows)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shards = []
    for i in range(pool.n_partitions):
        ids = pool.read_partition(i, columns=[]).column("id")
        x = rng.standard_normal((len(ids), dim)).astype(np.float32)
        shards.append(write_embedding_shard(out, i, ids, x / np.linalg.norm(x, axis=1, keepdims=True)))
    finalize_embedding_store(out, shards=shards, fingerprint=f"random-{seed}-{pool.fingerprint}", dim=dim, dtype="float32",
                             encoder={"normalize": True}, pool=pool.describe())
    return open_embedding_store(out)


@pytest.fixture
def make_random_store():
    """``make_random_store(pool_path, out, partition_rows=…)``: see :func:`write_random_store`."""
    return write_random_store


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A throw-away single-node SLURM cluster (``slurm_cluster.py`` beside this file), ``SLURM_CONF`` naming it for the session.

    Skips, giving the reason, only where SLURM is not installed or the daemons cannot be started (not root).
    At the end its daemons and job processes are stopped by pid, and a job left in the queue fails the session.
    """
    import importlib.util

    spec = importlib.util.spec_from_file_location("thresher_tests_slurm_cluster", Path(__file__).with_name("slurm_cluster.py"))
    helper = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helper)
    reason = helper.unavailable_reason()
    if reason:
        pytest.skip(reason)
    cluster = helper.SlurmTestCluster(tmp_path_factory.mktemp("slurm"))
    with pytest.MonkeyPatch.context() as patch:
        try:
            cluster.start()
        except BaseException:
            cluster.stop()
            raise
        patch.setenv("SLURM_CONF", str(cluster.conf))
        try:
            yield cluster
        finally:
            left = cluster.stop()
        assert not left, f"jobs left in the test SLURM queue: {left}"
