"""Curated shards read by a PyTorch DataLoader: stored order, every row once, weights and B3 batches intact."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch.utils.data import DataLoader

import thresher
from thresher.data import read_demo_pool
from thresher.exceptions import InputDataError, ParameterError
from thresher.pipeline.plan import write_plan
from thresher.pipeline.select import select_batches
from thresher.pipeline.smote import select_smote
from thresher.selectors.infobatch import InfoBatch
from thresher.stores import build_index, open_pool, write_curated
from thresher.training.torch_data import CuratedShardDataset, CuratedShardMapDataset, collate
from thresher.jobs.executor import Executor


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory):
    """A real embedded chat pool, its B3 batches, and hand-made curated shards whose batches straddle shards."""
    tmp = tmp_path_factory.mktemp("torch-data")
    rows = read_demo_pool(128)
    pool_path = tmp / "pool.jsonl"
    pool_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = thresher.embed(str(pool_path), tmp / "emb", messages_column="messages", id_column="id", partition_rows=64,
                           max_length=64, executor=Executor.in_process(progress=False))
    build_index(store, tmp / "index")
    b3 = select_batches(store.path, tmp / "b3", index=tmp / "index", batch_size=16, community_size=8, rank_window=(3, 23),
                        seed=0, executor=Executor.in_process(progress=False))

    # 117 of the rows in a seeded order, in batches of 5..13 rows, 20 rows per shard (so batches cross shards),
    # with a float32 weight and the rows' embeddings as a fixed-size-list column
    rng = np.random.default_rng(0)
    positions = rng.permutation(store.n_rows)[:117]
    sizes = []
    while sum(sizes) < 117:
        sizes.append(int(min(rng.integers(5, 14), 117 - sum(sizes))))
    batch = np.repeat(np.arange(len(sizes)), sizes)
    weight = rng.uniform(0.5, 2.0, 117).astype(np.float32)
    vectors = store.take(positions)
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])
    pool = open_pool(str(pool_path), id_column="id", partition_rows=64)
    mixed = write_curated(tmp / "mixed", pool=pool, positions=positions, selector="test", params={}, fingerprint="fp-torch",
                          columns={"weight": weight, "batch": batch, "embedding": embedding}, expected_ids=store.ids()[positions],
                          rows_per_shard=20)
    return {"store": store, "b3": b3, "mixed": mixed, "positions": positions, "weight": weight, "batch": batch, "vectors": vectors}


def _stored(curated, column):
    return curated.to_table().column(column).to_pylist()


def test_rows_stream_in_stored_order_with_weights_and_embeddings(artefacts):
    mixed = artefacts["mixed"]
    assert len(mixed.shards) == 6
    ds = CuratedShardDataset(mixed.path, columns=["id", "rank", "embedding", "messages"], block_rows=7)
    rows = list(DataLoader(ds, batch_size=None))
    assert len(rows) == len(ds) == 117
    assert [r["id"] for r in rows] == _stored(mixed, "id") == artefacts["store"].ids()[artefacts["positions"]].tolist()
    assert [int(r["rank"]) for r in rows] == list(range(117))
    weights = torch.stack([r["weight"] for r in rows])
    assert weights.dtype == torch.float32 and torch.equal(weights, torch.from_numpy(artefacts["weight"]))
    embeddings = torch.stack([r["embedding"] for r in rows])
    assert embeddings.dtype == torch.float32 and embeddings.shape == (117, artefacts["store"].dim)
    assert torch.equal(embeddings, torch.from_numpy(artefacts["vectors"]))
    assert rows[3]["messages"] == _stored(mixed, "messages")[3]  # nested values stay Python objects

    # batched with thresher's collate: ragged chat messages stay lists, tensors are stacked, order unchanged
    batches = list(DataLoader(ds, batch_size=10, collate_fn=collate))
    assert [len(b["id"]) for b in batches] == [10] * 11 + [7]
    assert torch.equal(torch.cat([b["embedding"] for b in batches]), embeddings)
    assert sum((b["id"] for b in batches), []) == _stored(mixed, "id")


def test_two_workers_and_three_ranks_see_every_row_once(artefacts):
    mixed = artefacts["mixed"]
    stored_ids = _stored(mixed, "id")
    weight_of = dict(zip(stored_ids, artefacts["weight"].tolist()))
    seen = []
    for rank in range(3):
        ds = CuratedShardDataset(mixed.path, columns=["id", "rank"], rank=rank, world_size=3, block_rows=8)
        batches = list(DataLoader(ds, batch_size=4, num_workers=2))
        ids = [i for b in batches for i in b["id"]]
        assert len(ids) == len(ds) == 39
        for b in batches:  # each row keeps its own weight, and each worker's batch is a contiguous run of stored rows
            assert b["weight"].tolist() == [weight_of[i] for i in b["id"]]
            assert torch.equal(b["rank"], torch.arange(int(b["rank"][0]), int(b["rank"][0]) + len(b["id"])))
        seen.extend(ids)
    assert sorted(seen) == sorted(stored_ids) and len(set(seen)) == 117

    for drop_uneven in (False, True):
        parts = [CuratedShardDataset(mixed.path, columns=["id"], rank=r, world_size=5, drop_uneven=drop_uneven) for r in range(5)]
        counts = [len(list(part)) for part in parts]
        assert counts == [len(part) for part in parts]
        assert sorted(counts) == ([23] * 5 if drop_uneven else [23, 23, 23, 24, 24])


def test_b3_batches_arrive_whole_and_in_stored_order_with_any_worker_count(artefacts):
    b3 = artefacts["b3"]
    stored_ids, stored_batch = _stored(b3, "id"), _stored(b3, "batch")
    expected = [[i for i, b in zip(stored_ids, stored_batch) if b == k] for k in sorted(set(stored_batch))]
    assert len(expected) == 8 and all(len(e) == 16 for e in expected)
    for num_workers in (0, 2):
        ds = CuratedShardDataset(b3.path, columns=["id", "batch"], batch_column="batch")
        got = list(DataLoader(ds, batch_size=None, num_workers=num_workers))
        assert [g["id"] for g in got] == expected
        assert [int(g["batch"][0]) for g in got] == list(range(8))
        assert all(torch.equal(g["weight"], torch.ones(16)) for g in got)  # no weight column: every row counts once
    # two ranks × two workers: rank r gets stored batches r, r + 2, … in order
    for rank in range(2):
        ds = CuratedShardDataset(b3.path, columns=["id"], batch_column="batch", rank=rank, world_size=2)
        got = [g["id"] for g in DataLoader(ds, batch_size=None, num_workers=2)]
        assert got == expected[rank::2] and len(ds) == 4


def test_batches_that_cross_shards_stay_intact(artefacts):
    mixed, batch = artefacts["mixed"], artefacts["batch"]
    stored_ids = _stored(mixed, "id")
    ds = CuratedShardDataset(mixed.path, columns=["id", "embedding"], batch_column="batch")
    got = list(DataLoader(ds, batch_size=None, num_workers=2))
    assert ds.n_batches == len(got) == batch.max() + 1
    for k, item in enumerate(got):
        rows = np.flatnonzero(batch == k)
        assert item["id"] == [stored_ids[r] for r in rows]
        assert torch.equal(item["embedding"], torch.from_numpy(artefacts["vectors"][rows]))
        assert torch.equal(item["weight"], torch.from_numpy(artefacts["weight"][rows]))


def test_seeded_shuffle_per_epoch(artefacts):
    mixed = artefacts["mixed"]
    stored_ids = _stored(mixed, "id")

    def epoch_ids(epoch, num_workers=0, **kw):
        ds = CuratedShardDataset(mixed.path, columns=["id"], shuffle=True, seed=5, block_rows=16, **kw)
        ds.set_epoch(epoch)
        return [i for b in DataLoader(ds, batch_size=8, num_workers=num_workers) for i in b["id"]]

    first, again, second = epoch_ids(0), epoch_ids(0), epoch_ids(1)
    assert first == again and first != second and first != stored_ids
    assert sorted(first) == sorted(second) == sorted(stored_ids)
    across_ranks = [i for r in range(2) for i in epoch_ids(1, num_workers=2, rank=r, world_size=2)]
    assert sorted(across_ranks) == sorted(stored_ids)  # ranks share the epoch's permutation: disjoint and covering

    batch = artefacts["batch"]
    ds = CuratedShardDataset(mixed.path, columns=["id"], batch_column="batch", shuffle=True, seed=5)
    ds.set_epoch(3)
    got = list(DataLoader(ds, batch_size=None, num_workers=2))
    order = [stored_ids.index(g["id"][0]) for g in got]
    assert sorted(batch[order].tolist()) == list(range(batch.max() + 1)) and batch[order].tolist() != sorted(batch[order].tolist())
    for item in got:
        rows = np.flatnonzero(batch == batch[stored_ids.index(item["id"][0])])
        assert item["id"] == [stored_ids[r] for r in rows]


def test_infobatch_plan_weights_are_the_stored_column(tmp_path):
    ib = InfoBatch(n_samples=300, epochs=4, prune_ratio=0.5, seed=1)
    ib.update(np.arange(300), np.random.default_rng(2).random(300))
    plan = write_plan(ib, 1, tmp_path / "plan", rows_per_shard=64)
    table = plan.to_table()
    assert len(set(table.column("weight").to_pylist())) == 2  # kept low-loss rows are up-weighted: weights are not all 1
    rows = list(DataLoader(CuratedShardDataset(plan.path, columns=["index"]), batch_size=32))
    assert torch.equal(torch.cat([r["index"] for r in rows]), torch.from_numpy(table.column("index").to_numpy()))
    assert torch.equal(torch.cat([r["weight"] for r in rows]), torch.from_numpy(table.column("weight").to_numpy()))


def test_smote_shards_stream_with_synthetic_rows(artefacts, tmp_path):
    store = artefacts["store"]
    cur = select_smote(store.path, tmp_path / "smote", labels="label", k_neighbors=3, executor=Executor.in_process(progress=False))
    rows = list(DataLoader(CuratedShardDataset(cur.path, columns=["id", "label", "synthetic", "parents", "gap", "embedding"]),
                           batch_size=16, collate_fn=collate))
    ids = sum((b["id"] for b in rows), [])
    synthetic = torch.cat([b["synthetic"] for b in rows])
    gap, embedding = torch.cat([b["gap"] for b in rows]), torch.cat([b["embedding"] for b in rows])
    parents = sum((b["parents"] for b in rows), [])
    assert ids == _stored(cur, "id") and synthetic.dtype == torch.bool and int(synthetic.sum()) > 0
    labels = sum((b["label"] for b in rows), [])
    assert len(set(np.unique(labels, return_counts=True)[1].tolist())) == 1  # "auto": every class brought to the majority's count
    real = ~synthetic
    assert torch.isnan(gap[real]).all() and not torch.isnan(gap[synthetic]).any()  # null gaps of real rows arrive as NaN
    real_ids = [i for i, s in zip(ids, synthetic.tolist()) if not s]
    assert torch.equal(embedding[real], torch.from_numpy(store.take(store.positions_of(real_ids))))
    for j in np.flatnonzero(synthetic.numpy())[:20]:  # x + gap (x_nn - x), from the parents' stored vectors
        base, nn = store.take(store.positions_of(list(parents[j])))
        np.testing.assert_allclose(embedding[j].numpy(), base + float(gap[j]) * (nn - base), atol=1e-5)


def test_map_style_dataset(artefacts):
    mixed = artefacts["mixed"]
    ds = CuratedShardMapDataset(mixed.path, columns=["id", "embedding"])
    assert len(ds) == 117
    assert ds[45]["id"] == _stored(mixed, "id")[45] and ds[-1]["id"] == _stored(mixed, "id")[-1]
    assert torch.equal(ds[45]["embedding"], torch.from_numpy(artefacts["vectors"][45]))
    loaded = list(DataLoader(ds, batch_size=16, num_workers=2))
    assert torch.equal(torch.cat([b["weight"] for b in loaded]), torch.from_numpy(artefacts["weight"]))
    with pytest.raises(IndexError):
        ds[117]


def test_bad_inputs_are_named(artefacts, tmp_path):
    b3, mixed = artefacts["b3"], artefacts["mixed"]
    with pytest.raises(InputDataError, match="'nope'.*curated shards"):
        CuratedShardDataset(mixed.path, columns=["id", "nope"])
    with pytest.raises(InputDataError, match="no 'weight' column"):
        CuratedShardDataset(b3.path, default_weight=None)
    with pytest.raises(ParameterError, match="'rank'"):
        CuratedShardDataset(b3.path, rank=2, world_size=2)
    with pytest.raises(InputDataError, match="'nope' is not a column"):
        CuratedShardDataset(b3.path, batch_column="nope")
    path = tmp_path / "p.jsonl"
    path.write_text("".join(f'{{"text": "row {i}"}}\n' for i in range(6)))
    scattered = write_curated(tmp_path / "scattered", pool=open_pool(str(path)), positions=range(6), selector="t", params={},
                              fingerprint="f", columns={"batch": [0, 0, 1, 1, 0, 2]}, rows_per_shard=4)
    with pytest.raises(InputDataError, match=r"Batch 0 .* row 0 of .*part-00001.arrow"):
        CuratedShardDataset(scattered.path, batch_column="batch")


def test_string_batch_labels_crossing_a_shard(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(f'{{"text": "row {i}"}}\n' for i in range(7)))
    cur = write_curated(tmp_path / "cur", pool=open_pool(str(path)), positions=[6, 0, 5, 1, 4, 2, 3], selector="t", params={},
                        fingerprint="f", columns={"batch": ["x", "x", "x", "a", "a", "m", "m"]}, rows_per_shard=2)
    got = list(DataLoader(CuratedShardDataset(cur.path, columns=["text", "batch"], batch_column="batch"), batch_size=None, num_workers=2))
    assert [g["text"] for g in got] == [["row 6", "row 0", "row 5"], ["row 1", "row 4"], ["row 2", "row 3"]]
    assert [set(g["batch"]) for g in got] == [{"x"}, {"a"}, {"m"}]


def test_importing_the_module_does_not_import_torch():
    code = "import sys, thresher.training.torch_data, thresher.stores.torch_data; assert 'torch' not in sys.modules; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.stdout.strip() == "ok", done.stderr
