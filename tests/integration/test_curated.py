"""Curated shards: the selected pool rows with selection columns, read back with datasets and pyarrow."""

from __future__ import annotations

import datasets
import numpy as np
import pyarrow as pa
import pytest

import thresher
from thresher.exceptions import InputDataError, ParameterError
from thresher.jobs.cluster import dask_map
from thresher.stores import open_curated, open_pool, write_curated
from thresher.jobs.executor import Executor


@pytest.fixture
def pool_and_store(text_pool, tmp_path):
    store = thresher.embed(str(text_pool), tmp_path / "emb", text="{instruction}", id_column="uid", partition_rows=20,
                           executor=Executor.in_process(progress=False))
    return open_pool(str(text_pool), id_column="uid", partition_rows=20), store


def test_selected_rows_in_rank_order_with_columns(pool_and_store, tmp_path, dask_client):
    pool, store = pool_and_store
    rng = np.random.default_rng(3)
    positions = rng.choice(pool.n_rows, size=37, replace=False)
    score = rng.random(37)
    ids = store.ids()[positions]
    common = dict(pool=pool, positions=positions, columns={"score": score, "task": [f"t{i % 3}" for i in range(37)]},
                  selector="test", params={"k": 1}, fingerprint="fp-test", seed=7, expected_ids=ids, rows_per_shard=10)
    local = write_curated(tmp_path / "cur-local", **common)
    on_dask = write_curated(tmp_path / "cur-dask", **common, map_fn=dask_map(dask_client))
    assert local.n_rows == 37 and len(local.shards) == 4
    for a, b in zip(local.files, on_dask.files):
        with open(a, "rb") as fa, open(b, "rb") as fb:
            assert fa.read() == fb.read()

    full = pa.concat_tables([pool.read_partition(i) for i in range(pool.n_partitions)])
    expected = full.take(pa.array(positions))
    loaded = datasets.load_dataset("arrow", data_files=local.files, split="train", cache_dir=str(tmp_path / "hf"))
    assert loaded["id"] == ids.tolist() == expected.column("id").to_pylist()
    assert loaded["instruction"] == expected.column("instruction").to_pylist()
    assert loaded["rank"] == list(range(37))
    np.testing.assert_allclose(loaded["score"], score)
    table = local.to_pyarrow_dataset().to_table()
    assert table.column("response").to_pylist() == expected.column("response").to_pylist()
    assert local.to_hf_dataset()["task"][:4] == ["t0", "t1", "t2", "t0"]
    m = open_curated(tmp_path / "cur-local", verify=True).manifest
    assert m["selector"] == "test" and m["seed"] == 7 and m["n_selected"] == 37 and m["n_pool"] == pool.n_rows
    assert not (tmp_path / "cur-local" / ".staging").exists()


def test_pool_column_named_like_a_selection_column_is_kept(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(f'{{"text": "row {i}", "score": {i}}}\n' for i in range(5)))
    pool = open_pool(str(path))
    cur = write_curated(tmp_path / "cur", pool=pool, positions=[4, 1], columns={"score": [0.9, 0.1]}, selector="t", params={}, fingerprint="f")
    table = cur.to_table()
    assert table.column("score_pool").to_pylist() == [4, 1] and table.column("score").to_pylist() == [0.9, 0.1]


def test_changed_pool_and_bad_positions_are_refused(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(f'{{"text": "row {i}"}}\n' for i in range(5)))
    pool = open_pool(str(path))
    with pytest.raises(InputDataError, match="pool changed"):
        write_curated(tmp_path / "a", pool=pool, positions=[1], columns={}, selector="t", params={}, fingerprint="f",
                      expected_ids=np.array(["p.jsonl:2"], dtype=object))
    assert not (tmp_path / "a" / "manifest.json").exists()
    with pytest.raises(ParameterError, match="duplicates"):
        write_curated(tmp_path / "b", pool=pool, positions=[1, 1], columns={}, selector="t", params={}, fingerprint="f")
    with pytest.raises(ParameterError, match=r"\[0, 5\)"):
        write_curated(tmp_path / "c", pool=pool, positions=[5], columns={}, selector="t", params={}, fingerprint="f")
