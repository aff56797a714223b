"""The embedding job end to end: real Dask workers, the real bundled model, shards read back with datasets."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest

import thresher
from thresher.exceptions import ArtifactError, InputDataError, ParameterError
from thresher.jobs.executor import Executor

TEMPLATE = "{instruction}\n\n{response}"


def pool_texts(path):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [r["uid"] for r in rows], [TEMPLATE.format(**r) for r in rows]


def test_embed_on_dask_matches_sentence_transformers(text_pool, tmp_path, dask_client, minilm_path):
    from sentence_transformers import SentenceTransformer

    store = thresher.embed(str(text_pool), tmp_path / "emb", text=TEMPLATE, id_column="uid",
                           partition_rows=25, executor=Executor.on_client(dask_client, progress=False))
    ids, texts = pool_texts(text_pool)
    assert store.n_rows == len(ids) and store.n_shards == 4 and store.dim == 384
    assert store.ids().tolist() == ids
    expected = SentenceTransformer(minilm_path, device="cpu").encode(texts, normalize_embeddings=True)
    got = store.to_numpy()
    cosine = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() >= 0.9999
    m = store.manifest
    assert m["normalized"] and m["dim"] == 384 and m["n_truncated"] > 0
    assert m["encoder"]["model"] and m["pool"] and m["text"]
    loaded = datasets.load_dataset("arrow", data_files=sorted(str(p) for p in (tmp_path / "emb").glob("part-*.arrow")),
                                   split="train", cache_dir=str(tmp_path / "hf"))
    assert loaded["id"] == ids
    np.testing.assert_allclose(np.asarray(loaded["embedding"], dtype=np.float32), got, rtol=0, atol=0)


def test_in_process_run_and_rerun_reuse(text_pool, tmp_path):
    out = tmp_path / "emb"
    store = thresher.embed(str(text_pool), out, text=TEMPLATE, id_column="uid", partition_rows=50, executor=Executor.in_process(progress=False))
    created = store.manifest["created_at"]
    again = thresher.embed(str(text_pool), out, text=TEMPLATE, id_column="uid", partition_rows=50, executor=Executor.in_process(progress=False))
    assert again.manifest["created_at"] == created  # complete store with the same fingerprint is reused, not rebuilt
    with pytest.raises(ArtifactError, match="other inputs or parameters"):
        thresher.embed(str(text_pool), out, text="{instruction}", id_column="uid", partition_rows=50, executor=Executor.in_process(progress=False))


def test_missing_text_column_fails_before_work_naming_column_and_file(text_pool, tmp_path):
    out = tmp_path / "emb"
    with pytest.raises(InputDataError, match=r"'answer'.*pool\.jsonl"):
        thresher.embed(str(text_pool), out, text="{instruction} {answer}", executor=Executor.in_process(progress=False))
    assert not (out / "manifest.json").exists()


def test_unknown_pooling_is_refused(text_pool, tmp_path):
    with pytest.raises(ParameterError, match="avg"):
        thresher.embed(str(text_pool), tmp_path / "emb", text=TEMPLATE, pooling="avg", executor=Executor.in_process(progress=False))
    assert not (tmp_path / "emb" / "manifest.json").exists()


@pytest.mark.parametrize("partition_rows, message", [(10, "repeats the id 'a'"), (1, "'a' appears 2 times")])
def test_duplicate_ids_are_refused_and_store_left_incomplete(tmp_path, partition_rows, message):
    # within one partition the reader sees the repeat; across partitions the job's id check does
    pool = tmp_path / "dup.jsonl"
    pool.write_text("\n".join(json.dumps({"k": k, "text": f"text number {i}"}) for i, k in enumerate(["a", "b", "a"])) + "\n")
    with pytest.raises(InputDataError, match=message):
        thresher.embed(str(pool), tmp_path / "emb", id_column="k", partition_rows=partition_rows, executor=Executor.in_process(progress=False))
    assert not (tmp_path / "emb" / "manifest.json").exists()
