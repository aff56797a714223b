"""`thresher run spec.yaml`: a whole pipeline from a spec, cached by fingerprint, on a real LocalCluster."""

from __future__ import annotations

import gzip
import os
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from thresher.cli import main
from thresher.describe import describe_artifact, lineage_chain
from thresher.jobs.events import read_events
from thresher.pipeline.runner import run_pipeline
from thresher.pipeline.spec import load_spec
from thresher.stores.curated import open_curated
from thresher.stores.embedding_store import open_embedding_store
from thresher.stores.manifest import read_manifest
from thresher.jobs.executor import Executor

N_POOL = 400


@pytest.fixture(scope="module")
def small_pool(tmp_path_factory) -> Path:
    """Rows of the bundled demo pool (real chat text with source and label columns): 300 openings, 100 continuations."""
    from thresher.pipeline.spec import bundled_path

    path = tmp_path_factory.mktemp("pool") / "pool.jsonl"
    with gzip.open(bundled_path("demo_pool.jsonl.gz"), "rt", encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)
    openings = [line for line in lines if '"chitchat/opening"' in line][:300]
    continuations = [line for line in lines if '"chitchat/continuation"' in line][:100]
    assert len(openings) + len(continuations) == N_POOL
    path.write_text("".join(openings + continuations), encoding="utf-8")
    return path


def _spec(pool: Path, minilm_path: str, **changes) -> dict:
    spec = {
        "name": "test",
        "pool": {"path": str(pool), "id_column": "id", "messages_column": "messages", "partition_rows": 150},
        "embedding": {"model": minilm_path, "max_length": 64},
        "index": {"type": "flat"},
        "steps": [
            {"step": "rds", "budget": 160, "targets": "bundled:demo_targets.jsonl", "target_task_column": "task",
             "group_column": "source", "group_quotas": {"chitchat/continuation": 12}},
            {"step": "smote", "name": "balanced", "input": "rds", "labels": "label", "k_neighbors": 2},
            {"step": "batches", "input": "rds", "batch_size": 32, "community_size": 8, "rank_window": [1, 9]},
        ],
        "report": {"html": False},
    }
    spec.update(changes)
    return spec


def _write(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, small_pool, minilm_path, dask_client):
    root = tmp_path_factory.mktemp("run")
    spec = _write(root / "spec.yaml", _spec(small_pool, minilm_path))
    result = run_pipeline(spec, out=root / "run", client=dask_client, progress=False, echo=lambda *_: None)
    return root, spec, result


def test_run_writes_every_step_and_a_run_manifest(first_run, small_pool, dask_client):
    root, spec, result = first_run
    run = read_manifest(root / "run", "run")
    assert [s["name"] for s in run["steps"]] == ["embed", "index", "rds", "balanced", "batches"]
    assert run["output"] == "steps/03-batches" and set(run["outputs"]) == {"steps/02-balanced", "steps/03-batches"}
    assert run["spec"]["pool"]["path"] == str(small_pool)
    store = open_embedding_store(root / "run" / "embeddings")
    assert store.n_rows == N_POOL

    # RDS+ over the whole pool equals the same stage run on its own with the same targets
    from thresher.pipeline.select import select_rds

    rows = [json.loads(line) for line in Path(load_spec(spec)[0].steps[0].targets).read_text(encoding="utf-8").splitlines()]
    targets = {}
    for task in sorted({r["task"] for r in rows}):
        p = root / f"{task}.jsonl"
        p.write_text("".join(json.dumps({"messages": r["messages"]}) + "\n" for r in rows if r["task"] == task), encoding="utf-8")
        targets[task] = p
    alone = select_rds(store.path, targets, root / "alone", budget=160, group_column="source",
                       group_quotas={"chitchat/continuation": 12}, executor=Executor.on_client(dask_client, progress=False))
    rds = open_curated(root / "run" / "steps" / "01-rds")
    assert rds.to_table().column("id").to_pylist() == alone.to_table().column("id").to_pylist()
    # the per-source cap holds (the pool's continuation rows would otherwise take more of the budget)
    sources = rds.to_table().column("source").to_pylist()
    assert sources.count("chitchat/continuation") <= 12 and len(sources) == 160
    assert read_manifest(root / "run" / "steps" / "01-rds")["summary"]["per_group_selected"]["chitchat/continuation"] == sources.count("chitchat/continuation")
    uncapped = select_rds(store.path, targets, root / "uncapped", budget=160, executor=Executor.on_client(dask_client, progress=False))
    assert uncapped.to_table().column("source").to_pylist().count("chitchat/continuation") > 12

    # the two steps fed by rds see exactly its rows: batches are whole, from rds only; smote's originals are rds rows
    rds_ids = set(rds.to_table().column("id").to_pylist())
    batches = open_curated(root / "run" / "steps" / "03-batches").to_table()
    assert set(batches.column("id").to_pylist()) <= rds_ids
    assert batches.num_rows == 160 // 32 * 32 and len(set(batches.column("id").to_pylist())) == batches.num_rows
    balanced = open_curated(root / "run" / "steps" / "02-balanced").to_table()
    synthetic = np.asarray(balanced.column("synthetic").to_pylist(), dtype=bool)
    originals = [i for i, s in zip(balanced.column("id").to_pylist(), synthetic) if not s]
    assert set(originals) <= rds_ids and synthetic.any()
    for step in run["steps"]:
        assert not step["cached"] and step["rows_out"] == read_manifest(root / "run" / step["dir"]).get("n_rows", step["rows_out"])
    assert [s["rows_in"] for s in run["steps"][2:]] == [N_POOL, 160, 160]


def test_every_artefact_records_the_spec_and_its_lineage_back_to_the_pool(first_run, small_pool):
    root, spec, result = first_run
    manifest = read_manifest(root / "run" / "steps" / "03-batches")
    assert manifest["lineage"]["spec"]["steps"][2]["batch_size"] == 32
    chain = lineage_chain(root / "run" / "steps" / "03-batches")
    assert [link["step"] for link in chain] == ["batches", "rds", "index", "embed", "pool"]
    assert chain[-1]["path"] and str(small_pool) in chain[-1]["path"]
    text = describe_artifact(root / "run" / "steps" / "03-batches")
    assert "lineage" in text and "01-rds" in text and "embeddings" in text
    assert "steps:" in describe_artifact(root / "run")


def test_embed_and_index_fingerprints_are_the_formulas_runs_were_cached_under(first_run, small_pool, minilm_path):
    """Embed and index became stage kinds (issue 15): the fingerprints they give are the ones runs made before carry, so those stay cached.

    The formulas are spelled out here, independently of the code that computes them.
    """
    from thresher.embeddings.encoders import EncoderSpec, weights_fingerprint
    from thresher.fingerprint import fingerprint_of
    from thresher.pipeline.steps import STEPS
    from thresher.stores.pool import open_pool

    root, _, result = first_run
    encoder_spec = EncoderSpec(model=minilm_path, max_length=64)
    encoder = {k: v for k, v in encoder_spec.to_dict().items() if k not in ("model_path", "device")}
    encoder["weights"] = weights_fingerprint(encoder_spec)
    params = {"encoder": encoder, "text": {"kind": "messages", "messages_column": "messages", "chat_format": "tulu"},
              "dtype": "float32", "partitions": [150, 150, 100]}
    pool = open_pool(str(small_pool), id_column="id", partition_rows=150)
    fp_embed = fingerprint_of("embed", 1, params, [pool.fingerprint])
    # index version 2 (issue 19): IVF lists trained by thresher's thread-invariant k-means, so every index is rebuilt once
    fp_index = fingerprint_of("index", 2, {"type": "flat", "metric": None, "nprobe": None, "ef_search": None, "train_size": None, "seed": 0},
                              [fp_embed])
    records = {r.name: r for r in result.steps}
    assert records["embed"].fingerprint == fp_embed == read_manifest(root / "run" / "embeddings")["fingerprint"]
    assert records["index"].fingerprint == fp_index
    assert (records["embed"].dir, records["index"].dir, records["embed"].step, records["index"].step) == ("embeddings", "index", "embed", "index")
    # a step's fingerprint is its kind's over the fingerprints of what it reads, in order: the step it takes rows from, then the index
    kind = STEPS["batches"]
    spec = load_spec(first_run[1])[0]
    assert records["batches"].fingerprint == kind.fingerprint([records["rds"].fingerprint, fp_index], kind.params(spec.steps[2]))
    lineage = read_manifest(root / "run" / "steps" / "03-batches")["lineage"]
    assert lineage["inputs"] == [{"step": "rds", "dir": "steps/01-rds", "fingerprint": records["rds"].fingerprint},
                                 {"step": "index", "dir": "index", "fingerprint": fp_index}]


def test_event_log_has_steps_and_per_partition_progress_with_eta(first_run):
    root, _, _ = first_run
    events = read_events(root / "run" / "events.jsonl")
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run_start" and kinds[-1] == "run_end"
    starts = [e["step"] for e in events if e["event"] == "step_start"]
    assert starts == ["embed", "index", "rds", "balanced", "batches"]
    assert len([e for e in events if e["event"] == "step_end"]) == 5
    progress = [e for e in events if e["event"] == "progress" and e["step"] == "embed"]
    assert len(progress) >= 3  # per encoded batch (at most every 0.5 s), at least one per partition of 150 rows
    assert all(b["rows_done"] > a["rows_done"] for a, b in zip(progress, progress[1:]))
    assert progress[-1]["rows_done"] == progress[-1]["rows_total"] == N_POOL and progress[-1]["eta_s"] == 0
    # the selection steps report their Dask tasks too: RDS+ scores every pool row, B3 ranks the rds rows
    score = [e for e in events if e["event"] == "progress" and e["step"] == "rds"]
    assert score and score[-1]["rows_done"] == N_POOL and {e["task"] for e in score} == {"score"}
    ranks = [e for e in events if e["event"] == "progress" and e["step"] == "batches"]
    assert ranks and ranks[-1]["rows_done"] == 160


def test_changing_a_late_step_reuses_everything_before_it(first_run, dask_client):
    root, spec, _ = first_run
    shard = root / "run" / "embeddings" / "part-00000.arrow"
    before = shard.stat().st_mtime_ns
    rds_before = (root / "run" / "steps" / "01-rds" / "manifest.json").read_bytes()

    plans = run_pipeline(spec, ["batches.seed=7"], out=root / "run", dry_run=True, echo=lambda *_: None)
    assert [p.cached for p in plans] == [True, True, True, True, False]
    result = run_pipeline(spec, ["batches.seed=7"], out=root / "run", client=dask_client, progress=False, echo=lambda *_: None)
    assert [r.cached for r in result.steps] == [True, True, True, True, False]
    assert shard.stat().st_mtime_ns == before
    assert (root / "run" / "steps" / "01-rds" / "manifest.json").read_bytes() == rds_before
    assert read_manifest(root / "run" / "steps" / "03-batches")["lineage"]["spec"]["steps"][2]["seed"] == 7
    # a change upstream reruns what depends on it, and only that
    plans = run_pipeline(spec, ["rds.budget=128"], out=root / "run", dry_run=True, echo=lambda *_: None)
    assert [p.cached for p in plans] == [True, True, False, False, False]


def test_bumping_a_stage_version_invalidates_that_step_and_everything_downstream(first_run, monkeypatch):
    """One version per step kind, in the registry, read by the stage and the runner (SMOTE once sat at 2 in its stage and 1 in the runner)."""
    import thresher.pipeline.smote as smote_stage
    from thresher.pipeline.runner import step_version
    from thresher.pipeline.steps import STEPS

    root, spec, _ = first_run
    assert step_version("smote") == STEPS["smote"].version == smote_stage.SMOTE_STAGE_VERSION == 3
    overrides = ["batches.seed=7"]  # what the run directory holds after the test above
    plans = run_pipeline(spec, overrides, out=root / "run", dry_run=True, echo=lambda *_: None)
    assert [(p.name, p.cached) for p in plans] == [("embed", True), ("index", True), ("rds", True), ("balanced", True), ("batches", True)]
    monkeypatch.setattr(STEPS["smote"], "version", STEPS["smote"].version + 1)
    plans = run_pipeline(spec, overrides, out=root / "run", dry_run=True, echo=lambda *_: None)
    assert [(p.name, p.cached) for p in plans] == [("embed", True), ("index", True), ("rds", True), ("balanced", False), ("batches", True)]
    monkeypatch.setattr(STEPS["rds"], "version", STEPS["rds"].version + 1)
    plans = run_pipeline(spec, overrides, out=root / "run", dry_run=True, echo=lambda *_: None)
    assert [p.cached for p in plans] == [True, True, False, False, False]


def test_a_step_version_is_also_its_stage_fingerprint_version(tmp_path, make_text_pool, make_random_store, monkeypatch):
    """The stage run alone fingerprints its output with the registry's version: bumping it changes the artefact's identity."""
    from thresher.pipeline.select import select_rds
    from thresher.pipeline.steps import STEPS

    store = make_random_store(make_text_pool(tmp_path / "pool.jsonl", 40), tmp_path / "emb", partition_rows=20)
    targets = {"t": store.take([0, 1])}
    before = select_rds(store.path, targets, tmp_path / "a", budget=5, executor=Executor.in_process(progress=False))
    monkeypatch.setattr(STEPS["rds"], "version", STEPS["rds"].version + 1)
    after = select_rds(store.path, targets, tmp_path / "b", budget=5, executor=Executor.in_process(progress=False))
    assert before.manifest["fingerprint"] != after.manifest["fingerprint"]
    assert before.to_table().column("id").to_pylist() == after.to_table().column("id").to_pylist()


def test_cli_dry_run_prints_the_plan(tmp_path, small_pool, minilm_path, monkeypatch):
    (tmp_path / "specs").mkdir()
    spec = _write(tmp_path / "specs" / "spec.yaml", _spec(small_pool, minilm_path, out="from-spec"))
    monkeypatch.chdir(tmp_path)
    # --out is relative to the working directory, the spec's own out to the spec file
    result = CliRunner().invoke(main, ["run", str(spec), "--out", "run", "--dry-run", "--set", "rds.budget=96"])
    assert result.exit_code == 0, result.output
    assert f"plan for {tmp_path / 'run'}:" in result.output
    assert "5 of 5 steps to run" in result.output and "96" in result.output
    assert not (tmp_path / "run").exists()
    result = CliRunner().invoke(main, ["run", str(spec), "--dry-run"])
    assert f"plan for {tmp_path / 'specs' / 'from-spec'}:" in result.output, result.output


def test_toml_spec_is_read_like_yaml(tmp_path, small_pool, minilm_path):
    toml = tmp_path / "spec.toml"
    toml.write_text(
        f'name = "t"\n[pool]\npath = "{small_pool}"\nid_column = "id"\nmessages_column = "messages"\n'
        f'[embedding]\nmodel = "{minilm_path}"\n[[steps]]\nstep = "rds"\nbudget = 10\ntargets = "bundled:demo_targets.jsonl"\ntarget_task_column = "task"\n',
        encoding="utf-8",
    )
    spec, resolved = load_spec(toml)
    assert spec.steps[0].budget == 10 and resolved["embedding"]["model"] == minilm_path


BAD_SPECS = [
    ("unknown step", lambda s: s["steps"].append({"step": "shuffle"}), r"spec.yaml:\d+: steps\[3\]\.step: unknown step 'shuffle'"),
    ("missing pool", lambda s: s.pop("pool"), r"spec.yaml(:\d+)?: pool: required key is missing"),
    ("missing key in a step", lambda s: s["steps"][0].pop("budget"), r"spec.yaml:\d+: steps\[0\]\.budget: required key is missing"),
    ("unknown key", lambda s: s["embedding"].update(colour="red"), r"spec.yaml:\d+: embedding\.colour: unknown key \(allowed: model,"),
    ("wrong type", lambda s: s["steps"][2].update(batch_size="big"), r"spec.yaml:\d+: steps\[2\]\.batch_size: Input should be a valid integer"),
    ("batches without an index", lambda s: s.pop("index"), r"steps\[2\] \(batches\): batch mining needs the teacher's ranks from an index"),
    ("a step after smote", lambda s: s["steps"][2].update(input="balanced"), r"cannot take its rows from smote step 'balanced'"),
    ("input not an earlier step", lambda s: s["steps"][1].update(input="batches"), r"input 'batches' is not an earlier step"),
    ("budget over what survives", lambda s: s["steps"][2].update(batch_size=256, community_size=8), r"batch_size 256 is larger than the 160 rows"),
    ("budget over the pool", lambda s: s["steps"][0].update(budget=N_POOL + 1), rf"budget {N_POOL + 1} is larger than the {N_POOL} rows"),
    ("negative budget", lambda s: s["steps"][0].update(budget=-3), r"steps\[0\]\.budget: Value error, must be a positive row count"),
    ("zero budget", lambda s: s["steps"][0].update(budget=0), r"steps\[0\]\.budget: Value error"),
    ("two steps of one name", lambda s: s["steps"][2].update(name="rds"), r"two steps are named 'rds'"),
    ("label column not in the pool", lambda s: s["steps"][1].update(labels="colour"), r"column 'colour' is not in the pool"),
    ("missing target file", lambda s: s["steps"][0].update(targets="nope.jsonl"), r"target file .*nope.jsonl does not exist"),
    ("one target file without its task column", lambda s: s["steps"][0].pop("target_task_column"),
     r"spec.yaml:\d+: steps\[0\]: Value error, targets is one file .*name its task column with target_task_column"),
    ("unknown bundled file", lambda s: s["steps"][0].update(targets="bundled:nope.jsonl"), r"bundled:nope.jsonl: no such bundled file"),
    ("eps out of range", lambda s: s["steps"].insert(0, {"step": "semdedup", "n_clusters": 4, "eps": 1.5}), r"steps\[0\]\.eps: Input should be less than 1"),
    ("group quotas without a column", lambda s: s["steps"][0].pop("group_column"), r"group_column and group_quotas go together"),
    ("group column not in the pool", lambda s: s["steps"][0].update(group_column="site"), r"column 'site' is not in the pool"),
    ("two cluster places", lambda s: s.update(cluster={"scheduler": "tcp://x:1", "local": True}), r"choose one of scheduler, slurm, local"),
]


@pytest.mark.parametrize("case,change,message", BAD_SPECS, ids=[c[0] for c in BAD_SPECS])
def test_bad_specs_are_refused_before_any_work(tmp_path, small_pool, minilm_path, case, change, message):
    spec = _spec(small_pool, minilm_path)
    change(spec)
    path = _write(tmp_path / "spec.yaml", spec)
    result = CliRunner().invoke(main, ["run", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    import re

    assert re.search(message, result.output), result.output
    assert not (tmp_path / "run").exists()


def test_bad_overrides_and_yaml_are_refused(tmp_path, small_pool, minilm_path):
    path = _write(tmp_path / "spec.yaml", _spec(small_pool, minilm_path))
    for argv, message in [
        (["--set", "nosuch.budget=1"], "'nosuch' is neither a spec section"),
        (["--set", "rds.budget"], "expected KEY=VALUE"),
        (["--set", "rds=3"], "name a key inside the step"),
    ]:
        result = CliRunner().invoke(main, ["run", str(path), "--dry-run", *argv])
        assert result.exit_code == 2 and message in result.output, result.output
    broken = tmp_path / "broken.yaml"
    broken.write_text("pool:\n  path: [a, b\nsteps: []\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["run", str(broken), "--dry-run"])
    assert result.exit_code == 2 and "broken.yaml:" in result.output and "not valid YAML" in result.output


def _run_command(spec: Path, out: Path) -> list[str]:
    import sys

    return [sys.executable, "-m", "thresher", "run", str(spec), "--out", str(out), "--local", "--quiet"]


def test_killed_run_resumes_to_the_same_artefacts(tmp_path, small_pool, minilm_path):
    import signal
    import subprocess
    import time

    spec = _spec(small_pool, minilm_path)
    spec["pool"]["partition_rows"] = 100
    spec["steps"] = [spec["steps"][0], {"step": "batches", "batch_size": 32, "community_size": 8, "rank_window": [1, 9]}]
    spec["steps"][0]["budget"] = 96
    path = _write(tmp_path / "spec.yaml", spec)
    env = {**os.environ, "THRESHER_LOCK_TTL": "600"}
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    subprocess.run(_run_command(path, reference), check=True, capture_output=True, timeout=300, env=env)

    proc = subprocess.Popen(_run_command(path, resumed), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 240
    while not list((resumed / "embeddings").glob(".part-*.done.json")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver, as a machine crash would
    proc.wait()
    assert not (resumed / "manifest.json").exists(), "the run finished before it could be killed"

    subprocess.run(_run_command(path, resumed), check=True, capture_output=True, timeout=300, env=env)
    a, b = read_manifest(reference, "run"), read_manifest(resumed, "run")
    assert [s["fingerprint"] for s in a["steps"]] == [s["fingerprint"] for s in b["steps"]]
    assert read_manifest(resumed / "embeddings")["n_resumed_partitions"] >= 1
    for step in a["steps"]:
        if step["step"] == "index":
            continue
        ma, mb = read_manifest(reference / step["dir"]), read_manifest(resumed / step["dir"])
        content = [[{k: s[k] for k in ("file", "rows", "checksum")} for s in m["shards"]] for m in (ma, mb)]  # not when written (mtime_ns)
        assert ma["fingerprint"] == mb["fingerprint"] and content[0] == content[1]  # names, rows, checksums
        for shard in ma["shards"]:
            assert (reference / step["dir"] / shard["file"]).read_bytes() == (resumed / step["dir"] / shard["file"]).read_bytes()
    events = [e["event"] for e in read_events(resumed / "events.jsonl")]
    assert events.count("run_start") == 2 and events.count("run_end") == 1  # both attempts logged, one finished


def test_a_second_run_into_the_same_directory_is_refused(tmp_path, small_pool, minilm_path):
    from thresher.stores.lock import output_lock

    path = _write(tmp_path / "spec.yaml", _spec(small_pool, minilm_path))
    (tmp_path / "run").mkdir()
    with output_lock(tmp_path / "run"):
        result = CliRunner().invoke(main, ["run", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "being written by another thresher job" in result.output, result.output
    assert not (tmp_path / "run" / "embeddings").exists()
