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


@pytest.fixture
def onnx_cache(tmp_path_factory, monkeypatch):
    """One export cache for the session's onnx-int8 runs (this process; the runs below stay in it)."""
    folder = tmp_path_factory.getbasetemp() / "thresher-onnx-cache"
    monkeypatch.setenv("THRESHER_CACHE_DIR", str(folder))
    return folder


def test_onnx_int8_store_records_quality_figures_that_sentence_transformers_confirms(make_text_pool, tmp_path, onnx_cache, minilm_path):
    from sentence_transformers import SentenceTransformer

    from thresher.pipeline.embed import prepare_embed

    text_pool = make_text_pool(tmp_path / "pool.jsonl", 48)
    store = thresher.embed(str(text_pool), tmp_path / "emb", text=TEMPLATE, id_column="uid", backend="onnx-int8",
                           executor=Executor.in_process(progress=False))
    ids, texts = pool_texts(text_pool)
    assert store.ids().tolist() == ids and store.dim == 384
    encoder = store.manifest["encoder"]
    assert encoder["runtime"] == "onnx-int8" and encoder["onnx"]["fingerprint"] and encoder["export"]["weight_type"] == "QInt8"
    # the gate's figures, recomputed here from the stored int8 vectors and sentence-transformers' own float32 encode
    expected = SentenceTransformer(minilm_path, device="cpu").encode(texts, normalize_embeddings=True)
    got = store.to_numpy()
    cosine = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    quality = encoder["quality"]
    assert quality["rows"] == len(texts) and quality["passed"] and quality["gate"] == "refuse"
    assert quality["median"] == pytest.approx(np.median(cosine), abs=2e-4)
    assert quality["p01"] == pytest.approx(np.percentile(cosine, 1), abs=2e-4)
    assert quality["median"] >= 0.99 and quality["p01"] >= 0.96
    # an int8 store is never the float32 store of the same pool
    kwargs = {"text": TEMPLATE, "id_column": "uid"}
    assert prepare_embed(str(text_pool), backend="onnx-int8", **kwargs).fingerprint() == store.manifest["fingerprint"]
    assert prepare_embed(str(text_pool), **kwargs).fingerprint() != store.manifest["fingerprint"]


def test_unknown_backend_is_refused_naming_the_parameter(text_pool, tmp_path):
    with pytest.raises(ParameterError, match="'backend' parameter of embed must be 'torch' or 'onnx-int8'; got 'int4'"):
        thresher.embed(str(text_pool), tmp_path / "emb", text=TEMPLATE, backend="int4", executor=Executor.in_process(progress=False))
    assert not (tmp_path / "emb" / "manifest.json").exists()


@pytest.mark.parametrize("where", ["dask", "in_process"])
def test_progress_advances_per_batch_not_per_partition(where, make_text_pool, tmp_path, monkeypatch, request):
    from thresher.jobs.events import EventLog, current_event_log, read_events

    monkeypatch.setenv("THRESHER_PROGRESS_INTERVAL", "0")  # every batch reports (default: at most every 0.5 s)
    pool = make_text_pool(tmp_path / "pool.jsonl", 60)
    executor = (Executor.on_client(request.getfixturevalue("dask_client"), progress=False) if where == "dask"
                else Executor.in_process(progress=False))
    with EventLog(tmp_path / "events.jsonl") as log, current_event_log(log):
        store = thresher.embed(str(pool), tmp_path / "emb", text=TEMPLATE, id_column="uid", partition_rows=30, max_length=16,
                               batch_size=2, executor=executor)
    assert store.n_shards == 2
    events = [e for e in read_events(tmp_path / "events.jsonl") if e["event"] == "progress" and e["task"] == "embed"]
    done = [e["rows_done"] for e in events]
    assert len(events) > 2 * store.n_shards  # several per partition
    assert all(b > a for a, b in zip(done, done[1:])) and done[-1] == 60 == sum(e["rows"] for e in events)
    assert all(e["rows_total"] == 60 and e["rows_per_second"] > 0 and e["eta_s"] is not None for e in events)


def test_spec_and_cli_name_the_backend(text_pool, tmp_path):
    from click.testing import CliRunner

    from thresher.cli import main
    from thresher.pipeline.spec import SpecError, validate_spec
    from thresher.pipeline.steps.embed import EmbedKind

    raw = {"name": "t", "pool": {"path": str(text_pool), "id_column": "uid", "text": TEMPLATE}, "steps": []}
    spec = validate_spec({**raw, "embedding": {"backend": "onnx-int8"}})
    config = EmbedKind().prepare(spec, tmp_path / "run")
    assert config.inputs.encoder.runtime == "onnx-int8"  # the spec's key reaches the encoder, hence the fingerprint
    assert validate_spec(raw).embedding.backend == "torch"
    with pytest.raises(SpecError, match="backend"):
        validate_spec({**raw, "embedding": {"backend": "int4"}})
    result = CliRunner().invoke(main, ["embed", "--pool", str(text_pool), "--out", str(tmp_path / "e"), "--backend", "int4", "--local"])
    assert result.exit_code == 2 and "'int4' is not one of 'torch', 'onnx-int8'" in result.output


def test_spec_quality_gate_reaches_the_job_is_validated_and_leaves_the_fingerprint_alone(text_pool, tmp_path):
    """``embedding.quality_gate`` takes what ``thresher embed --quality-gate`` takes, reaches the embed job, and is not part of
    the store's fingerprint: it changes no vector (a passing gate writes what ``warn`` writes; a refusing one writes nothing)."""
    import typing

    from thresher.cli import main
    from thresher.pipeline.spec import EmbeddingSpec, SpecError, validate_spec
    from thresher.pipeline.steps.embed import EmbedKind

    cli_choices = next(p.type.choices for p in main.commands["embed"].params if p.name == "quality_gate")
    assert tuple(typing.get_args(EmbeddingSpec.model_fields["quality_gate"].annotation)) == tuple(cli_choices) == ("refuse", "warn")
    raw = {"name": "t", "pool": {"path": str(text_pool), "id_column": "uid", "text": TEMPLATE}, "steps": []}
    assert validate_spec(raw).embedding.quality_gate == "refuse"
    configs = {gate: EmbedKind().prepare(validate_spec({**raw, "embedding": {"backend": "onnx-int8", "quality_gate": gate}}), tmp_path / "run")
               for gate in ("refuse", "warn")}
    assert {gate: c.inputs.quality_gate for gate, c in configs.items()} == {"refuse": "refuse", "warn": "warn"}  # what run_embed passes on
    assert EmbedKind().plan_fingerprint(configs["warn"], []) == EmbedKind().plan_fingerprint(configs["refuse"], [])
    with pytest.raises(SpecError, match=r"embedding\.quality_gate: Input should be 'refuse' or 'warn'"):
        validate_spec({**raw, "embedding": {"backend": "onnx-int8", "quality_gate": "maybe"}})
    with pytest.raises(SpecError, match=r"embedding\.store and embedding\.quality_gate were given"):
        validate_spec({**raw, "embedding": {"store": str(tmp_path / "emb"), "quality_gate": "warn"}})
