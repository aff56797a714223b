"""B3 batches on real embedded text: through the index, read back in batch order, richer in negatives than random."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import thresher
from thresher.cli import main
from thresher.data import read_demo_pool
from thresher.exceptions import ArtifactError
from thresher.pipeline.select import select_batches
from thresher.stores import build_index
from thresher.jobs.executor import Executor


@pytest.fixture(scope="module")
def chat_store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("b3")
    rows = read_demo_pool(384)
    for i, r in enumerate(rows):
        r["source"] = "even" if i % 2 == 0 else "odd"
    pool = tmp / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = thresher.embed(str(pool), tmp / "emb", messages_column="messages", partition_rows=200, executor=Executor.in_process(progress=False))
    build_index(store, tmp / "index")
    return tmp, store


def test_b3_batches_from_the_index(chat_store, dask_client):
    tmp, store = chat_store
    settings = dict(index=tmp / "index", batch_size=32, community_size=8, rank_window=(3, 23), n_hard_negatives=2, seed=0)
    cur = select_batches(store.path, tmp / "batches", executor=Executor.on_client(dask_client), **settings)
    local = select_batches(store.path, tmp / "batches-local", executor=Executor.in_process(), **settings)
    assert cur.to_table().equals(local.to_table())  # neighbour search on workers = in-process
    table = cur.to_hf_dataset()
    batch = np.array(table["batch"])
    assert np.all(np.diff(batch) >= 0) and np.all(np.bincount(batch) == 32)
    assert len(set(table["id"])) == len(table)
    s = cur.manifest["summary"]
    assert s["mean_in_batch_similarity"] > s["mean_in_batch_similarity_random"]
    vectors = store.take(store.positions_of(table["id"])).astype(np.float64)
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def mean_similarity(labels):
        values = []
        for b in np.unique(labels):
            sims = v[labels == b] @ v[labels == b].T
            values.append((sims.sum() - np.trace(sims)) / (32 * 31))
        return np.mean(values)

    assert mean_similarity(batch) == pytest.approx(s["mean_in_batch_similarity"], abs=1e-6)
    # clearly above chance: higher than every one of 30 random batchings of the same rows
    rng = np.random.default_rng(0)
    assert mean_similarity(batch) > max(mean_similarity(rng.permutation(batch)) for _ in range(30))


def test_cli_grouped_batches_and_missing_index(chat_store):
    tmp, store = chat_store
    result = CliRunner().invoke(main, ["select", "batches", "--pool-embeddings", str(store.path), "--batch-size", "32",
                                       "--community-size", "16", "--rank-window", "2:18", "--group-column", "source", "--local", "--quiet",
                                       "--out", str(tmp / "grouped")])
    assert result.exit_code == 0, result.output
    assert "mean in-batch similarity" in result.output
    table = thresher.open_curated(tmp / "grouped").to_table()
    for b in set(table.column("batch").to_pylist()):
        sources = {s for s, bb in zip(table.column("source").to_pylist(), table.column("batch").to_pylist()) if bb == b}
        assert len(sources) == 1
    with pytest.raises(ArtifactError, match="does not exist"):
        select_batches(store.path, tmp / "x", index=tmp / "no-index", batch_size=32, community_size=16, rank_window=(2, 18), executor=Executor.in_process())


def test_sharded_windows_equal_the_whole_pool_search(chat_store, dask_client):
    from thresher.jobs.neighbors_job import window_on_cluster
    from thresher.selectors.batch_mining import window_neighbors
    from thresher.stores import open_index

    tmp, store = chat_store
    whole = window_neighbors(store, open_index(tmp / "index"), 3, 20)
    np.testing.assert_array_equal(window_on_cluster(store, tmp / "index", 3, 20, executor=Executor.on_client(dask_client)), whole)
    assert store.n_shards > 1
