"""Selection stages on a subset of a store's rows equal the same stage on a store built from only those rows.

The pipeline runner chains steps by passing ``subset`` (the rows the previous
step kept). Each test runs a stage on a real embedded pool with a subset that
drops a whole shard, splits duplicate pairs and leaves gaps, and compares it
with the stage on a second store holding just those rows (same vectors, same
ids, its own pool file), or with brute force among the subset.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import thresher
from thresher.data import read_demo_pool
from thresher.exceptions import ParameterError
from thresher.jobs.neighbors_job import window_on_cluster
from thresher.pipeline.select import select_batches, select_rds
from thresher.pipeline.smote import select_smote
from thresher.stores import build_index, open_pool
from thresher.stores.embedding_store import finalize_embedding_store, open_embedding_store, write_embedding_shard
from thresher.jobs.executor import Executor

N_ROWS = 240
PARTITION_ROWS = 60
N_DUPLICATES = 10


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def chained(tmp_path_factory):
    """A 240-row pool in 4 shards (its last 10 rows repeat the texts of the first 10), a subset of it, and a store of just the subset."""
    tmp = tmp_path_factory.mktemp("subset")
    rows = read_demo_pool(N_ROWS - N_DUPLICATES)
    rows += [{**rows[i], "id": f"dup-{i}"} for i in range(N_DUPLICATES)]
    write_rows(tmp / "pool.jsonl", rows)
    store = thresher.embed(str(tmp / "pool.jsonl"), tmp / "emb", messages_column="messages", id_column="id",
                           partition_rows=PARTITION_ROWS, executor=Executor.in_process(progress=False))
    keep = np.random.default_rng(0).random(N_ROWS) < 0.7
    keep[PARTITION_ROWS : 2 * PARTITION_ROWS] = False  # a whole shard gone
    keep[:5] = False  # these duplicates' first occurrences gone: their copies are first in the subset
    keep[5:N_DUPLICATES] = True
    keep[N_ROWS - N_DUPLICATES :] = True
    subset = np.flatnonzero(keep)
    small = subset_store(store, subset, rows, tmp / "small")
    return tmp, rows, store, subset, small


def subset_store(store, subset, rows, folder):
    """An embedding store of just the rows at ``subset``: a pool file of those rows, and the big store's own vectors and text hashes."""
    (folder / "emb").mkdir(parents=True)
    pool = open_pool(str(write_rows(folder / "pool.jsonl", [rows[i] for i in subset])), id_column="id", partition_rows=50)
    hashes = np.concatenate([store.shard_column(i, "text_hash") for i in range(store.n_shards)])[subset]
    shards = []
    for i, part in enumerate(pool.partitions):
        positions = subset[part.start : part.stop]
        shards.append(write_embedding_shard(folder / "emb", i, store.ids()[positions].tolist(), store.take(positions),
                                            extra_columns={"text_hash": hashes[part.start : part.stop]}))
    finalize_embedding_store(folder / "emb", shards=shards, fingerprint=f"subset-of-{store.fingerprint}", dim=store.dim,
                             dtype=store.dtype, encoder=store.manifest["encoder"], pool=pool.describe(), extra={"text": store.manifest["text"]})
    return open_embedding_store(folder / "emb")


def brute_force_windows(vectors: np.ndarray, p: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Every row's ranks [p, p + m) among the others by float64 inner product (ties to the lower position), and the similarities."""
    x = vectors.astype(np.float64)
    sims = x @ x.T
    n = len(x)
    windows = np.empty((n, m), dtype=np.int64)
    for i in range(n):
        order = np.lexsort((np.arange(n), -sims[i]))
        windows[i] = order[order != i][p : p + m]
    return windows, sims


def test_rds_on_a_subset_equals_rds_on_a_store_of_the_subset(chained, dask_client):
    tmp, rows, store, subset, small = chained
    targets = {"first": store.take([3, 200]), "second": store.take([150])}
    on_subset = select_rds(store.path, targets, tmp / "rds-subset", budget=0.25, dedup=True, subset=subset, executor=Executor.on_client(dask_client, progress=False))
    alone = select_rds(small.path, targets, tmp / "rds-alone", budget=0.25, dedup=True, executor=Executor.in_process(progress=False))
    a, b = on_subset.to_table(), alone.to_table()
    assert len(a) == int(0.25 * len(subset))  # the fraction is of the subset
    for column in ("id", "task", "score", "task_scores", "rank"):
        assert a.column(column).to_pylist() == b.column(column).to_pylist(), column
    assert set(a.column("id").to_pylist()) <= set(store.ids()[subset].tolist())
    s, t = on_subset.manifest["summary"], alone.manifest["summary"]
    assert s["rows_in"] == len(subset) and t["rows_in"] == len(subset)
    for key in ("n_scored", "n_excluded", "n_exact_duplicates_removed", "per_task_selected"):
        assert s[key] == t[key], key
    # dedup within the subset: copies whose first occurrence was left out stay, the others go
    texts = [json.dumps(rows[i]["messages"]) for i in subset]
    assert s["n_exact_duplicates_removed"] == len(texts) - len(set(texts)) and s["n_scored"] == len(subset)
    # the subset matters: on the whole store the same call picks rows outside it
    whole = select_rds(store.path, targets, tmp / "rds-whole", budget=int(0.25 * len(subset)), dedup=True, executor=Executor.in_process(progress=False))
    assert set(whole.to_table().column("id").to_pylist()) - set(store.ids()[subset].tolist())
    assert whole.manifest["fingerprint"] != on_subset.manifest["fingerprint"]


def distinct_rows(store, subset):
    """The rows of ``subset`` whose text is not repeated in the store.

    Equal vectors tie exactly in value but not in float32 rounding, which depends
    on the layout of the matrix products; B3 ranks compare only without such ties.
    """
    hashes = np.concatenate([store.shard_column(i, "text_hash") for i in range(store.n_shards)])
    values, counts = np.unique(hashes, return_counts=True)
    return subset[~np.isin(hashes[subset], values[counts > 1])]


def test_b3_on_a_subset_equals_b3_on_a_store_of_the_subset(chained, dask_client):
    tmp, rows, store, subset, _ = chained
    subset = distinct_rows(store, subset)
    small = subset_store(store, subset, rows, tmp / "small-b3")
    settings = dict(batch_size=16, community_size=4, rank_window=(2, 12), n_hard_negatives=2, budget=0.5, seed=3)
    on_subset = select_batches(store.path, tmp / "b3-subset", subset=subset, executor=Executor.on_client(dask_client), **settings)
    alone = select_batches(small.path, tmp / "b3-alone", executor=Executor.in_process(), **settings)
    assert on_subset.to_table().equals(alone.to_table())
    assert on_subset.manifest["summary"]["rows_in"] == len(subset)
    assert on_subset.manifest["summary"]["n_edges"] == alone.manifest["summary"]["n_edges"]
    assert len(on_subset.to_table()) == 16 * -(-(len(subset) // 2) // 16)  # budget 0.5 of the subset, whole batches

    # the teacher windows, without and with a FAISS index over the whole store, equal brute force among the subset
    p, m = 2, 10
    expected, sims = brute_force_windows(store.take(subset), p, m)
    exact = window_on_cluster(store, None, p, m, executor=Executor.on_client(dask_client), subset=subset)
    np.testing.assert_array_equal(exact, expected)
    build_index(store, tmp / "flat", index_type="flat")
    flat = window_on_cluster(store, tmp / "flat", p, m, subset=subset)
    # an exact index over the store is searched block by block over the subset, as without an index (not through a
    # FAISS selector, which scans query by query): the very same windows, near-ties included
    np.testing.assert_array_equal(flat, exact)
    assert flat.shape == (len(subset), m) and flat.min() >= 0
    rows_ = np.arange(len(subset))[:, None]
    np.testing.assert_allclose(sims[rows_, flat], sims[rows_, expected], atol=1e-5)  # equal up to float32 near-ties
    assert (flat == expected).mean() > 0.99


def test_b3_through_an_hnsw_index_ranks_among_the_subset(chained):
    tmp, rows, store, subset, small = chained
    build_index(store, tmp / "hnsw", index_type="HNSW32")
    p, m = 2, 10
    expected, _ = brute_force_windows(store.take(subset), p, m)
    found = window_on_cluster(store, tmp / "hnsw", p, m, subset=subset)
    assert found.shape == (len(subset), m) and found.min() >= 0 and found.max() < len(subset)
    overlap = np.mean([len(set(f) & set(e)) / m for f, e in zip(found.tolist(), expected.tolist())])
    assert overlap > 0.95


def test_smote_on_a_subset_equals_smote_on_a_store_of_the_subset(chained, dask_client):
    tmp, rows, store, subset, small = chained
    settings = dict(labels="label", undersample_majority=0.5, k_neighbors=3, seed=7)
    on_subset = select_smote(store.path, tmp / "smote-subset", subset=subset, executor=Executor.on_client(dask_client), **settings)
    alone = select_smote(small.path, tmp / "smote-alone", executor=Executor.in_process(), **settings)
    assert on_subset.to_table().equals(alone.to_table())
    s, t = on_subset.manifest["summary"], alone.manifest["summary"]
    labels, counts = np.unique([rows[i]["label"] for i in subset], return_counts=True)
    assert s["class_counts_before"] == t["class_counts_before"] == dict(zip(labels.tolist(), counts.tolist()))
    assert s["rows_in"] == len(subset) and s["n_synthetic"] == t["n_synthetic"] > 0
    table = on_subset.to_table()
    kept = [i for i, synthetic in zip(table.column("id").to_pylist(), table.column("synthetic").to_pylist()) if not synthetic]
    assert len(kept) == s["n_kept"]
    assert set(kept) <= set(store.ids()[subset].tolist())


@pytest.mark.parametrize(
    ("subset", "message"),
    [
        (np.array([[0, 1]]), "1-D array of int"),
        (np.array([0.0, 1.0]), "1-D array of int"),
        (np.array([], dtype=np.int64), "is empty"),
        (np.array([0, N_ROWS]), f"position {N_ROWS}, outside"),
        (np.array([-1, 3]), "position -1, outside"),
        (np.array([4, 2, 4]), "position 4 more than once"),
    ],
)
def test_bad_subsets_are_refused(chained, subset, message):
    tmp, rows, store, _, _ = chained
    out = tmp / f"bad-{message[:8].replace(' ', '_')}"
    calls = {
        "select_rds": lambda: select_rds(store.path, {"t": store.take([0])}, out / "rds", budget=5, subset=subset, executor=Executor.in_process(progress=False)),
        "select_batches": lambda: select_batches(store.path, out / "b3", batch_size=8, community_size=4, rank_window=(1, 5), subset=subset,
                                                 executor=Executor.in_process(progress=False)),
        "select_smote": lambda: select_smote(store.path, out / "smote", labels="label", subset=subset, executor=Executor.in_process(progress=False)),
    }
    for owner, call in calls.items():
        with pytest.raises(ParameterError, match=rf"'subset' parameter of {owner} .*{message}"):
            call()
    assert not out.exists() or not any(out.rglob("manifest.json"))
