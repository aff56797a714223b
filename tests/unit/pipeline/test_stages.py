"""Every stage of a run (embed or an existing store, index, the steps) through one protocol; the spec's ``embedding: {store: DIR}``."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import thresher.pipeline.runner as runner
from thresher.exceptions import InputDataError
from thresher.pipeline.spec import SpecError, load_spec, validate_spec
from thresher.pipeline.steps import STAGES, STEPS, SourceKind, StageKind, embedding_kind, stage_kind
from thresher.stores.embedding_store import finalize_embedding_store, open_embedding_store, write_embedding_shard
from thresher.stores.pool import open_pool
from thresher.stores.pool_binding import check_same_ids


def test_every_stage_is_a_registered_kind_and_its_version_is_the_one_its_code_uses():
    from thresher.jobs.embed_job import EMBED_JOB_VERSION
    from thresher.pipeline.steps.store import VERSION as STORE_VERSION
    from thresher.stores.index import INDEX_VERSION

    assert list(STAGES) == ["embed", "store", "index", *STEPS]
    for name, kind in STAGES.items():
        assert isinstance(kind, StageKind) and kind.name == name and stage_kind(name) is kind
        assert runner.step_version(name) == kind.version
    assert runner.step_version("embed") == EMBED_JOB_VERSION and runner.step_version("index") == INDEX_VERSION
    assert runner.step_version("store") == STORE_VERSION
    assert isinstance(STAGES["embed"], SourceKind) and isinstance(STAGES["store"], SourceKind)
    # the store is recognised by its manifest's own fingerprint, the index and steps by the run step that made them
    assert STAGES["embed"].cached_by == "manifest" and STAGES["index"].cached_by == "lineage" and STEPS["rds"].cached_by == "lineage"


def test_the_runner_holds_no_branch_on_any_stage_kind():
    source = inspect.getsource(runner)
    kinds = "|".join(STAGES)
    assert not re.search(r"\.step\s*==", source) and not re.search(r"\.step\s*!=", source)
    assert not re.search(rf"""==\s*["']({kinds})["']""", source)
    assert "_run_embed" not in source and "_run_index" not in source and "_embed_memory" not in source


def test_embedding_section_chooses_the_source_kind():
    assert embedding_kind(validate_spec({"pool": {"path": "p.jsonl"}})).name == "embed"
    assert embedding_kind(validate_spec({"pool": {"path": "p.jsonl"}, "embedding": {"store": "emb"}})).name == "store"


@pytest.mark.parametrize("key,value", [("model", "default"), ("pooling", "mean"), ("batch_size", 8), ("dtype", "float16")])
def test_a_store_with_model_keys_is_refused_naming_both(key, value):
    with pytest.raises(SpecError, match=rf"embedding: .*embedding\.store and embedding\.{key} were given"):
        validate_spec({"pool": {"path": "p.jsonl"}, "embedding": {"store": "emb", key: value}})


def _write_spec(tmp_path: Path, embedding: dict) -> Path:
    path = tmp_path / "specs" / "spec.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pool": {"path": "pool.jsonl"}, "embedding": embedding}), encoding="utf-8")  # JSON is YAML
    return path


def test_store_path_is_taken_from_the_spec_file_and_embeddings_replaces_the_section(tmp_path):
    spec, resolved = load_spec(_write_spec(tmp_path, {"store": "../emb"}))
    assert spec.embedding.store == str((tmp_path / "emb").resolve()) and resolved["embedding"] == {"store": spec.embedding.store}
    # --embeddings replaces a section of model settings whole (no 'both given' error): the store alone is recorded
    spec, resolved = load_spec(_write_spec(tmp_path, {"model": "default", "batch_size": 8}), embeddings="/data/emb")
    assert spec.embedding.store == "/data/emb" and resolved["embedding"] == {"store": "/data/emb"}
    # a spec without a store records its embedding section exactly as before stores could be named (no 'store' key)
    spec, resolved = load_spec(_write_spec(tmp_path, {"batch_size": 8}))
    assert spec.embedding.store is None and "store" not in resolved["embedding"] and resolved["embedding"]["batch_size"] == 8


def test_an_error_in_the_store_given_by_embeddings_names_the_option(tmp_path):
    with pytest.raises(SpecError, match=r"^--embeddings: embedding\.store: Input should be a valid string"):
        load_spec(_write_spec(tmp_path, {}), embeddings=3)  # type: ignore[arg-type]


# -- the pool's ids against the store's -------------------------------------------------------------


def _pool(path: Path, ids: list, partition_rows: int = 4):
    path.write_text("".join(json.dumps({"uid": i, "text": f"row {i}"}) + "\n" for i in ids), encoding="utf-8")
    return open_pool(str(path), id_column="uid", partition_rows=partition_rows)


def _store(path: Path, ids: list, shard_rows: int = 3):
    path.mkdir()
    shards = []
    for n, lo in enumerate(range(0, len(ids), shard_rows)):
        chunk = ids[lo : lo + shard_rows]
        shards.append(write_embedding_shard(path, n, pa.array(chunk), np.ones((len(chunk), 4), np.float32)))
    finalize_embedding_store(path, shards=shards, fingerprint="test", dim=4, dtype="float32", encoder={"normalize": False}, pool=None)
    return open_embedding_store(path)


def _oracle(pool_ids: list, store_ids: list) -> tuple[set, set]:
    return set(pool_ids) - set(store_ids), set(store_ids) - set(pool_ids)


@pytest.mark.parametrize("kind", ["str", "int"])
def test_equal_ids_in_the_same_order_pass_whatever_the_partitions_and_shards(tmp_path, kind):
    ids = [f"id-{i}" for i in range(11)] if kind == "str" else [i * 7 for i in range(11)]
    check_same_ids(_store(tmp_path / "s", ids, shard_rows=5), _pool(tmp_path / "p.jsonl", ids, partition_rows=3))


@pytest.mark.parametrize("kind", ["str", "int"])
def test_one_id_missing_and_one_extra_are_named_with_the_counts(tmp_path, kind):
    make = (lambda i: f"id-{i}") if kind == "str" else (lambda i: 1000 + i)
    store_ids = [make(i) for i in range(10)]
    pool_ids = [make(i) for i in range(10) if i != 4] + [make(99)]
    only_pool, only_store = _oracle(pool_ids, store_ids)
    with pytest.raises(InputDataError) as err:
        check_same_ids(_store(tmp_path / "s", store_ids), _pool(tmp_path / "p.jsonl", pool_ids))
    message = str(err.value)
    assert f"id {next(iter(only_pool))!r} is in the pool but not in the store (1 such id)" in message
    assert f"id {next(iter(only_store))!r} is in the store but not in the pool (1 such id)" in message
    assert "the pool has 10 rows, the store 10" in message and str(tmp_path / "s") in message


def test_a_shorter_pool_names_the_first_missing_id_in_store_order_and_how_many(tmp_path):
    store_ids = [f"id-{i}" for i in range(12)]
    pool_ids = store_ids[:5] + store_ids[8:]  # 3 missing
    only_pool, only_store = _oracle(pool_ids, store_ids)
    assert not only_pool and len(only_store) == 3
    with pytest.raises(InputDataError, match=r"the pool has 9 rows, the store 12; id 'id-5' is in the store but not in the pool \(3 such ids\)"):
        check_same_ids(_store(tmp_path / "s", store_ids), _pool(tmp_path / "p.jsonl", pool_ids))


def test_the_same_ids_in_another_order_are_refused_naming_the_first_row_that_differs(tmp_path):
    store_ids = [f"id-{i}" for i in range(10)]
    pool_ids = store_ids[:6] + [store_ids[7], store_ids[6]] + store_ids[8:]
    with pytest.raises(InputDataError, match=r"in another order: row 6 is id 'id-7' in the pool and 'id-6' in the store"):
        check_same_ids(_store(tmp_path / "s", store_ids), _pool(tmp_path / "p.jsonl", pool_ids))


def test_integer_ids_against_string_ids_say_so(tmp_path):
    with pytest.raises(InputDataError, match=r"the pool's ids are integers and the store's strings"):
        check_same_ids(_store(tmp_path / "s", [str(i) for i in range(5)]), _pool(tmp_path / "p.jsonl", list(range(5))))
