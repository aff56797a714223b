"""Behaviour that used to be silent, made visible, and the input checks behind the bad-input cases (issue 14, parts 3-5).

Files a pool directory holds but leaves out are listed by ``thresher embed`` and in the store's manifest;
a fractional budget that is not a whole number of rows says how it was rounded; hard negatives wider than
the rank window are refused; ``thresher inspect --verify`` on a run checks every step artefact; devices,
column types and InfoBatch sizes are checked before any work.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner

from thresher.cli import main
from thresher.exceptions import InputDataError, ParameterError


def _invoke(argv: list[str]):
    result = CliRunner().invoke(main, argv)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def _rows(n: int) -> str:
    return "".join(json.dumps({"uid": f"r{i}", "text": f"row {i} talks about {'cats' if i % 2 else 'dogs'}"}) + "\n" for i in range(n))


# ---- skipped files of a pool directory


def test_skipped_directory_files_are_listed_in_the_summary_and_the_manifest(tmp_path: Path, minilm_path: str):
    from thresher.stores import open_embedding_store
    from thresher.stores.pool import reopen_pool

    data = tmp_path / "data"
    (data / ".git").mkdir(parents=True)
    (data / ".git" / "HEAD").write_text("ref\n")
    (data / ".git" / "config").write_text("x\n")
    (data / "a.jsonl").write_text(_rows(3))
    (data / "notes.txt").write_text("not data\n")
    (data / "_draft.jsonl").write_text(_rows(2))
    (data / "linked").symlink_to(tmp_path)  # a link to a directory: not followed, and said so
    result = _invoke(["embed", "--pool", str(data), "--id-column", "uid", "--out", str(tmp_path / "emb"), "--model", minilm_path,
                      "--local", "--quiet"])
    assert result.exit_code == 0, result.output
    expected = [f"{data}/.git/ (hidden: a name starting with '.' or '_')", f"{data}/_draft.jsonl (hidden: a name starting with '.' or '_')",
                f"{data}/linked (a symbolic link to a directory, not followed)", f"{data}/notes.txt (not a supported extension)"]
    assert "skipped 4 paths in the pool's directories:" in result.output
    for line in expected:
        assert f"\n  {line}" in result.output
    store = open_embedding_store(tmp_path / "emb")
    assert store.n_rows == 3
    assert store.manifest["pool"]["skipped"] == expected
    assert reopen_pool(store.manifest["pool"]).skipped == expected


def test_a_single_file_pool_skips_nothing(tmp_path: Path):
    from thresher.stores.pool import open_pool

    (tmp_path / "a.jsonl").write_text(_rows(2))
    pool = open_pool(str(tmp_path / "a.jsonl"))
    assert pool.skipped == [] and pool.describe()["skipped"] == []


# ---- budget rounding


def test_a_fractional_budget_says_how_it_was_rounded(tmp_path: Path, make_random_store):
    pool = tmp_path / "pool.jsonl"
    pool.write_text(_rows(24))
    make_random_store(pool, tmp_path / "emb", partition_rows=12)
    make_random_store(pool, tmp_path / "targets", partition_rows=24, seed=1)
    result = _invoke(["select", "rds", "--pool-embeddings", str(tmp_path / "emb"), "--targets", f"t={tmp_path / 'targets'}",
                      "--budget", "0.1", "--out", str(tmp_path / "out"), "--local", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "budget 0.1 of 24 rows = 2.4, rounded down to 2" in result.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["n_selected"] == 2
    assert manifest["summary"]["budget_rounding"] == "budget 0.1 of 24 rows = 2.4, rounded down to 2"
    exact = _invoke(["select", "rds", "--pool-embeddings", str(tmp_path / "emb"), "--targets", f"t={tmp_path / 'targets'}",
                     "--budget", "0.25", "--out", str(tmp_path / "out2"), "--local", "--quiet"])
    assert exact.exit_code == 0, exact.output
    assert "rounded" not in exact.output
    assert "budget_rounding" not in json.loads((tmp_path / "out2" / "manifest.json").read_text())["summary"]


def test_budget_rounding_words():
    from thresher.selectors._base import budget_rounding, resolve_budget

    assert budget_rounding(0.1, 25, resolve_budget(0.1, 25, "X")) == "budget 0.1 of 25 rows = 2.5, rounded down to 2"
    assert budget_rounding(0.01, 24, resolve_budget(0.01, 24, "X")) == "budget 0.01 of 24 rows = 0.24, rounded up to 1"
    assert budget_rounding(0.5, 24, 12) is None
    assert budget_rounding(7, 24, 7) is None


def test_selector_summary_records_budget_rounding():
    from thresher.selectors.diversity import KCenterGreedy

    x = np.random.default_rng(0).standard_normal((30, 4)).astype(np.float32)
    selection = KCenterGreedy().select(x, budget=0.1)
    assert len(selection.ids) == 3
    assert "budget_rounding" not in selection.summary
    selection = KCenterGreedy().select(x, budget=0.15)
    assert len(selection.ids) == 4
    assert selection.summary["budget_rounding"] == "budget 0.15 of 30 rows = 4.5, rounded down to 4"


# ---- hard negatives and the rank window


def test_hard_negatives_wider_than_the_rank_window_are_refused():
    from thresher.pipeline.spec import BatchesStep
    from thresher.selectors.batch_mining import BatchMiner

    x = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    with pytest.raises(ParameterError, match=r"'n_hard_negatives' parameter of BatchMiner \(5\).*\(2, 6\) \(m = 4\)"):
        BatchMiner(batch_size=4, community_size=2, rank_window=(2, 6), n_hard_negatives=5).select(x, budget=1.0)
    selection = BatchMiner(batch_size=4, community_size=2, rank_window=(2, 6), n_hard_negatives=4).select(x, budget=1.0)
    assert all(len(row) == 4 for row in selection.columns["hard_negatives"])
    with pytest.raises(ValueError, match=r"n_hard_negatives 9 is more than the rank window \[30, 38\] holds \(m = 8\)"):
        BatchesStep(step="batches", rank_window=(30, 38), n_hard_negatives=9)
    assert BatchesStep(step="batches", rank_window=(30, 38), n_hard_negatives=8).n_hard_negatives == 8


# ---- inspect --verify on a run directory


def test_inspect_verify_checks_every_step_of_a_run(tmp_path: Path, make_random_store):
    from thresher.stores.manifest import write_manifest

    pool = tmp_path / "pool.jsonl"
    pool.write_text(_rows(10))
    run = tmp_path / "run"
    make_random_store(pool, run / "embeddings", partition_rows=5)
    shutil.copytree(run / "embeddings", run / "steps" / "01-copy")
    steps = [{"name": name, "step": "embed", "dir": d, "fingerprint": None, "cached": False, "rows_in": 10, "rows_out": 10, "seconds": 1.0}
             for name, d in (("embed", "embeddings"), ("copy", "steps/01-copy"))]
    write_manifest(run, "run", fingerprint="run-fp", body={"spec": {}, "steps": steps, "output": "steps/01-copy", "outputs": [],
                                                           "report": None, "events": "events.jsonl"})
    ok = _invoke(["inspect", str(run), "--verify"])
    assert ok.exit_code == 0, ok.output
    assert "verified: 2 step artefacts, 4 file checksums match" in ok.output
    shard = run / "steps" / "01-copy" / "part-00001.arrow"
    shard.write_bytes(shard.read_bytes()[:-8])
    bad = _invoke(["inspect", str(run), "--verify"])
    assert bad.exit_code == 2 and "steps/01-copy/part-00001.arrow" in bad.stderr
    shutil.rmtree(run / "steps" / "01-copy")
    gone = _invoke(["inspect", str(run), "--verify"])
    assert gone.exit_code == 2
    assert f"lists step 'copy' in {run / 'steps' / '01-copy'}, which is missing" in gone.stderr
    assert _invoke(["inspect", str(run)]).exit_code == 0  # without --verify the run is only described


# ---- devices


def test_absent_devices_are_named():
    import torch

    from thresher.embeddings.encoders import check_device_available

    check_device_available("auto")
    check_device_available("cpu")
    with pytest.raises(ParameterError, match=r"^device 'mps' is not available on this machine \(torch sees no MPS device\)\.$"):
        check_device_available("mps")
    with pytest.raises(ParameterError, match=r"'device' parameter .* got 'gpu'"):
        check_device_available("gpu")
    with pytest.raises(ParameterError, match=r"device 'hpu' is a torch device type thresher does not embed on"):
        check_device_available("hpu")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n == 0:
        with pytest.raises(ParameterError, match=r"^device 'cuda' is not available on this machine \(torch sees no CUDA device\)\.$"):
            check_device_available("cuda")
    else:
        check_device_available("cuda")
        check_device_available(f"cuda:{n - 1}")
        with pytest.raises(ParameterError, match=rf"device 'cuda:{n}' is not available on this machine \(torch sees {n} CUDA device"):
            check_device_available(f"cuda:{n}")


def test_a_device_the_workers_lack_is_refused_naming_the_worker(dask_client):
    from thresher.pipeline.embed import check_device_where_it_runs

    check_device_where_it_runs("cpu", dask_client)
    with pytest.raises(ParameterError, match=r"device 'mps' is not available on the worker's machine .*\(Dask worker tcp://"):
        check_device_where_it_runs("mps", dask_client)


# ---- column types from the schema


def test_text_builder_checks_the_schema_before_reading_rows():
    from thresher.pipeline.text import TextBuilder

    schema = pa.schema([("text", pa.int64()), ("ok", pa.string()), ("cat", pa.dictionary(pa.int32(), pa.string())),
                        ("chat", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
                        ("bare", pa.list_(pa.string())), ("empty", pa.null())])
    TextBuilder(text_column="ok").check_schema(schema)
    TextBuilder(text_column="cat").check_schema(schema)
    TextBuilder(text_column="empty").check_schema(schema)  # no value seen: left to build
    TextBuilder(messages_column="chat").check_schema(schema)
    with pytest.raises(InputDataError, match=r"Column 'text' named by text_column of p\.jsonl must hold strings; it holds int64 values \(row 3 holds 7\)\."):
        TextBuilder(text_column="text").check_schema(schema, where="p.jsonl", example=lambda column: "row 3 holds 7")
    with pytest.raises(InputDataError, match=r"Column 'text' named by the text template"):
        TextBuilder("{ok}: {text}").check_schema(schema)
    with pytest.raises(InputDataError, match=r"'bare' .*its messages are string values"):
        TextBuilder(messages_column="bare").check_schema(schema)
    with pytest.raises(InputDataError, match=r"'ok' .*it holds string values, not lists"):
        TextBuilder(messages_column="ok").check_schema(schema)
    table = pa.table({"id": ["a", "b"], "cat": pa.array(["x", "y"]).dictionary_encode()})
    assert TextBuilder(text_column="cat").build(table) == ["x", "y"]


# ---- InfoBatch sizes


def test_infobatch_refuses_a_state_larger_than_memory():
    from thresher.selectors.infobatch import BYTES_PER_SAMPLE, InfoBatch, check_fits_in_memory

    check_fits_in_memory(1000, total_bytes=1000 * BYTES_PER_SAMPLE)
    with pytest.raises(ParameterError, match=r"--n-samples 1001\) needs 27\.0 KB of memory .*this machine has 27\.0 KB\.$"):
        check_fits_in_memory(1001, total_bytes=1000 * BYTES_PER_SAMPLE)
    with pytest.raises(ParameterError, match=r"needs 270\.0 TB"):
        InfoBatch(n_samples=10**13, epochs=3)
    assert InfoBatch(n_samples=10, epochs=3).n_samples == 10


def test_thresher_run_shows_skipped_files_and_budget_rounding(tmp_path: Path, minilm_path: str):
    import yaml

    data = tmp_path / "data"
    data.mkdir()
    (data / "pool.jsonl").write_text(_rows(24))
    (data / "README.md").write_text("about this data\n")
    (tmp_path / "targets.jsonl").write_text(json.dumps({"text": "a question about cats"}) + "\n")
    spec = {"pool": {"path": str(data), "id_column": "uid"}, "embedding": {"model": minilm_path},
            "steps": [{"step": "rds", "budget": 0.1, "targets": {"cats": str(tmp_path / "targets.jsonl")}}], "report": {"html": False},
            "cluster": {"local": True}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    result = _invoke(["run", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"[embed] skipped 1 path in the pool's directories: {data}/README.md (not a supported extension)" in result.output
    assert "[rds] budget 0.1 of 24 rows = 2.4, rounded down to 2" in result.output
