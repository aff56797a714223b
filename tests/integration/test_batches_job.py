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


# -- two levels (issue 13): coarse regions, METIS inside each region, one task per part ------------------------------


def write_topic_store(tmp, name: str, rows: list[int], x: np.ndarray, *, partition_rows: int):
    """A pool (jsonl: id, text, source) of the given row numbers and an embedding store of their vectors ``x[rows]``."""
    from thresher.stores import finalize_embedding_store, open_embedding_store, write_embedding_shard
    from thresher.stores.pool import open_pool

    pool_path = tmp / f"{name}.jsonl"
    pool_path.write_text("".join(json.dumps({"id": f"r{i}", "text": f"row {i}", "source": "ab"[i % 2]}) + "\n" for i in rows))
    pool = open_pool(str(pool_path), id_column="id", partition_rows=partition_rows)
    out = tmp / f"{name}-emb"
    out.mkdir()
    shards, lo = [], 0
    for i in range(pool.n_partitions):
        ids = pool.read_partition(i, columns=[]).column("id")
        shards.append(write_embedding_shard(out, i, ids, x[rows[lo : lo + len(ids)]]))
        lo += len(ids)
    finalize_embedding_store(out, shards=shards, fingerprint=f"topics-{name}", dim=x.shape[1], dtype="float32",
                             encoder={"normalize": True}, pool=pool.describe())
    return open_embedding_store(out)


@pytest.fixture(scope="module")
def topic_store(tmp_path_factory):
    """3,000 rows around 40 topics of very different sizes, 3 shards, and an IVF index (searched list by list)."""
    tmp = tmp_path_factory.mktemp("b3-two-level")
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(40, 16))
    shares = rng.lognormal(0.0, 1.0, 40)
    x = centres[rng.choice(40, size=3000, p=shares / shares.sum())] + 0.6 * rng.normal(size=(3000, 16))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    store = write_topic_store(tmp, "pool", list(range(3000)), x, partition_rows=1000)
    build_index(store, tmp / "index", index_type="IVF16,Flat", nprobe=4, recall_sample=0)
    return tmp, store, x


TWO_LEVEL = dict(batch_size=64, community_size=16, rank_window=(3, 23), n_hard_negatives=2, partition="two_level", part_rows=700, seed=3)


@pytest.mark.parametrize("rank_scope", ["pool", "part"])
def test_two_levels_give_the_same_batches_on_one_or_two_workers_and_in_process(topic_store, dask_client, tmp_path, rank_scope):
    from thresher.jobs.cluster import dask_client as connect
    from thresher.selectors.batch_mining import BatchMiner
    from thresher.stores import open_index

    tmp, store, _ = topic_store
    settings = dict(index=tmp / "index", group_column="source", rank_scope=rank_scope, **TWO_LEVEL)
    here = select_batches(store.path, tmp_path / "here", executor=Executor.in_process(), **settings)
    two = select_batches(store.path, tmp_path / "two", executor=Executor.on_client(dask_client), **settings)
    with connect(workers=1, quiet=True) as client:
        one = select_batches(store.path, tmp_path / "one", executor=Executor.on_client(client), **settings)
    assert here.to_table().equals(two.to_table()) and here.to_table().equals(one.to_table())
    s = here.manifest["summary"]
    assert s["partition"] == "two_level" and s["n_regions"] == 5 and s["n_parts"] == 10  # (source, region) pairs
    # pool ranks: regions are unions of the IVF index's lists; part ranks read no index: lists of a k-means
    assert s["regions_from"] == ("index IVF lists" if rank_scope == "pool" else "k-means lists")
    assert here.manifest["params"]["partition"] == "two_level" and here.manifest["params"]["part_rows"] == 700
    # part ranks read no index: it is not an input of the output
    assert ("index" in here.manifest["inputs"]) == (rank_scope == "pool")
    # the stage (regions and parts as tasks) gives what the selector gives on the same store and index in one process
    groups = np.array(["ab"[i % 2] for i in range(3000)])
    want = BatchMiner(rank_scope=rank_scope, **TWO_LEVEL).select(store, budget=1.0, neighbors=open_index(tmp / "index", store=store),
                                                                 groups=groups)
    # pool ranks through the IVF index: its depth chosen for window recall 0.95 by a task, as the selector chooses it in process
    assert s["teacher"] == (want.summary["teacher"] if rank_scope == "pool" else None)
    if rank_scope == "pool":
        assert s["teacher"]["window_recall"] >= 0.95 and s["teacher"]["nprobe"] <= 16
    table = here.to_table()
    assert table.column("id").to_pylist() == want.ids.tolist()
    assert table.column("batch").to_pylist() == want.columns["batch"].tolist()
    assert table.column("hard_negatives").to_pylist() == want.columns["hard_negatives"]
    # whole communities of exactly 16, one source a batch, no row twice
    batch, community = np.array(table.column("batch")), np.array(table.column("community"))
    assert np.all(np.bincount(batch) == 64) and len(set(table.column("id").to_pylist())) == table.num_rows
    assert all(np.sum(community == c) == 16 for c in np.unique(community))
    sources = np.array(table.column("source"))
    assert all(len(set(sources[batch == b])) == 1 for b in np.unique(batch))
    assert s["mean_in_community_similarity"] > s["mean_in_batch_similarity_random"] + 0.3


def test_one_level_over_a_subset_searches_the_ivf_teacher_at_the_depth_it_measured(topic_store, dask_client, tmp_path):
    """One level, a subset, an IVF index: the depth task and the window tasks give on Dask what the selector gives in process."""
    from thresher.selectors.batch_mining import BatchMiner
    from thresher.stores import open_index
    from thresher.stores.subset import StoreSubset, SubsetNeighbors

    tmp, store, _ = topic_store
    subset = np.arange(0, 3000, 3)
    settings = dict(index=tmp / "index", batch_size=64, community_size=16, rank_window=(3, 23), partition="one_level", teacher_recall=0.9,
                    seed=2)
    on_dask = select_batches(store.path, tmp_path / "dask", subset=subset, executor=Executor.on_client(dask_client), **settings)
    here = select_batches(store.path, tmp_path / "here", subset=subset, executor=Executor.in_process(), **settings)
    assert on_dask.to_table().equals(here.to_table())
    teacher = on_dask.manifest["summary"]["teacher"]
    assert teacher == here.manifest["summary"]["teacher"] and teacher["window_recall"] >= 0.9 and teacher["target"] == 0.9
    index = open_index(tmp / "index", store=store)
    want = BatchMiner(batch_size=64, community_size=16, rank_window=(3, 23), partition="one_level", teacher_recall=0.9, seed=2).select(
        StoreSubset(store, subset), budget=1.0, neighbors=SubsetNeighbors(store, subset, index))
    assert want.summary["teacher"] == teacher
    assert here.to_table().column("id").to_pylist() == want.ids.tolist()


def test_two_levels_over_a_subset_equal_a_store_of_those_rows(topic_store, tmp_path):
    """A step's subset is batched as a store holding only those rows would be (ranks among the subset, regions of the subset)."""
    _, store, x = topic_store
    rows = [i for i in range(3000) if i % 5 != 2]
    subset = np.array(rows)
    got = select_batches(store.path, tmp_path / "subset", subset=subset, executor=Executor.in_process(), **TWO_LEVEL).to_table()
    alone = write_topic_store(tmp_path, "alone", rows, x, partition_rows=900)
    want = select_batches(alone.path, tmp_path / "alone-out", executor=Executor.in_process(), **TWO_LEVEL).to_table()
    for column in ("id", "batch", "community", "position", "hard_negatives"):
        assert got.column(column).to_pylist() == want.column(column).to_pylist(), column
