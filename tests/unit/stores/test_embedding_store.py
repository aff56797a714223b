"""The embedding store: round trips, zero-copy views, blocks, and refusals."""

from __future__ import annotations

import datasets
import numpy as np
import pyarrow as pa
import pytest

from thresher.exceptions import ArtifactError, IncompleteArtifactError, InputDataError, ParameterError
from thresher.stores import finalize_embedding_store, open_embedding_store, write_embedding_shard


def make_store(path, vectors, ids, shard_rows, dtype="float32"):
    shards = []
    for i, lo in enumerate(range(0, len(ids), shard_rows)):
        shards.append(write_embedding_shard(path, i, ids[lo : lo + shard_rows], vectors[lo : lo + shard_rows], dtype=dtype))
    finalize_embedding_store(path, shards=shards, fingerprint="f" * 32, dim=vectors.shape[1], dtype=dtype,
                             encoder={"model": "m", "pooling": "mean", "layer": -1, "normalize": False}, pool={})
    return open_embedding_store(path)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(103, 8)).astype(np.float32), [f"row-{i}" for i in range(103)]


def test_round_trip_in_order_across_shards(tmp_path, data):
    vectors, ids = data
    store = make_store(tmp_path, vectors, ids, shard_rows=25)
    assert store.n_rows == 103 and store.n_shards == 5 and store.dim == 8
    np.testing.assert_array_equal(store.to_numpy(), vectors)
    assert store.ids().tolist() == ids
    np.testing.assert_array_equal(store.take([102, 0, 50]), vectors[[102, 0, 50]])
    assert store.positions_of(["row-7", "row-99"]).tolist() == [7, 99]


def test_reader_takes_what_take_takes_and_maps_each_shard_once(tmp_path, data, monkeypatch):
    vectors, ids = data
    store = make_store(tmp_path, vectors, ids, shard_rows=25)
    mapped = []
    original = store.shard_embeddings
    monkeypatch.setattr(store, "shard_embeddings", lambda i: mapped.append(i) or original(i))
    rng = np.random.default_rng(1)
    with store.reader() as take:
        for _ in range(20):
            positions = rng.choice(103, size=17, replace=False)
            np.testing.assert_array_equal(take(positions), vectors[positions])
            np.testing.assert_array_equal(take(positions, dtype=np.float64), vectors[positions].astype(np.float64))
        with pytest.raises(ParameterError, match=r"\[0, 103\)"):
            take([5, 103])
    assert sorted(mapped) == [0, 1, 2, 3, 4]  # once each, not once per call
    with store.reader() as take:
        take([3])
    assert sorted(mapped) == [0, 0, 1, 2, 3, 4]  # a new block maps afresh: nothing outlives it


def test_blocks_cover_store_once_whatever_block_size(tmp_path, data):
    vectors, ids = data
    store = make_store(tmp_path, vectors, ids, shard_rows=40)
    for block_rows in (1, 7, 40, 1000):
        blocks = list(store.iter_blocks(block_rows))
        assert all(len(b.ids) <= block_rows for b in blocks)
        np.testing.assert_array_equal(np.concatenate([b.vectors for b in blocks]), vectors)
        assert np.concatenate([b.positions for b in blocks]).tolist() == list(range(103))


def test_shard_view_is_zero_copy_memory_map(tmp_path, data):
    vectors, ids = data
    store = make_store(tmp_path, vectors, ids, shard_rows=200)
    view = store.shard_embeddings(0)
    assert not view.flags.owndata and not view.flags.writeable
    np.testing.assert_array_equal(view, vectors)


def test_float16_store_returns_float32_blocks(tmp_path, data):
    vectors, ids = data
    store = make_store(tmp_path, vectors, ids, shard_rows=50, dtype="float16")
    assert store.shard_embeddings(0).dtype == np.float16
    np.testing.assert_allclose(store.to_numpy(), vectors.astype(np.float16).astype(np.float32))


def test_shards_load_with_datasets_and_pyarrow(tmp_path, data):
    vectors, ids = data
    store = make_store(tmp_path, vectors, ids, shard_rows=60)
    ds = datasets.Dataset.from_file(str(tmp_path / "part-00000.arrow"))
    assert ds["id"][:3] == ids[:3]
    np.testing.assert_allclose(np.array(ds["embedding"][:3]), vectors[:3])
    table = pa.ipc.open_stream(pa.memory_map(str(tmp_path / "part-00001.arrow"))).read_all()
    assert table.num_rows == 43 and table.schema.field("embedding").type == pa.list_(pa.float32(), 8)
    assert store.manifest["shards"][1]["rows"] == 43


def test_non_finite_vector_refused_with_its_id(tmp_path, data):
    vectors, ids = data
    vectors = vectors.copy()
    vectors[5, 3] = np.nan
    with pytest.raises(InputDataError, match="row-5"):
        write_embedding_shard(tmp_path, 0, ids, vectors)
    assert not list(tmp_path.glob("part-*"))


def test_directory_without_manifest_is_incomplete(tmp_path, data):
    vectors, ids = data
    write_embedding_shard(tmp_path, 0, ids, vectors)
    with pytest.raises(IncompleteArtifactError, match="manifest.json"):
        open_embedding_store(tmp_path)


def test_verify_names_a_corrupt_shard(tmp_path, data):
    vectors, ids = data
    make_store(tmp_path, vectors, ids, shard_rows=60)
    shard = tmp_path / "part-00001.arrow"
    shard.write_bytes(shard.read_bytes()[:-100])
    open_embedding_store(tmp_path)  # opening without verify trusts the manifest
    with pytest.raises(ArtifactError, match="part-00001.arrow"):
        open_embedding_store(tmp_path, verify=True)
