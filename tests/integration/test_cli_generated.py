"""``thresher select <step>``: options generated from the step configs, values reaching the config, old spellings, errors naming the flag."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from thresher.cli import main
from thresher.cli_steps import flag, step_fields
from thresher.jobs.executor import Executor
from thresher.pipeline.dedup import select_semdedup
from thresher.pipeline.select import select_batches, select_rds
from thresher.pipeline.spec import validate_spec
from thresher.pipeline.steps import STEPS
from thresher.stores import open_curated

#: Fields a command reads from its other options (batches: exact search when there is no --index; rds: targets are always TASK=PATH).
NOT_OPTIONS = {"batches": ("exact",), "rds": ("target_task_column",)}
LOCAL = ["--local", "--quiet"]


def _ids(path) -> list[str]:
    return open_curated(path).to_table().column("id").to_pylist()


def _in_process():
    return Executor.in_process(progress=False)


@pytest.fixture
def pool(tmp_path, make_text_pool):
    return make_text_pool(tmp_path / "pool.jsonl", 42)


@pytest.fixture
def store(pool, make_random_store):
    """42 rows of seeded random unit vectors (dim 8) in 3 shards."""
    return make_random_store(pool, pool.parent / "emb", partition_rows=20, dim=8)


@pytest.mark.parametrize("kind", sorted(STEPS))
def test_help_lists_every_config_field_with_its_default_and_description(kind):
    result = CliRunner().invoke(main, ["select", kind, "--help"], terminal_width=400)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    fields = STEPS[kind].Config.model_fields
    names = step_fields(STEPS[kind], NOT_OPTIONS.get(kind, ()))
    assert names and set(names) == set(fields) - {"step", "name", "input", *NOT_OPTIONS.get(kind, ())}
    for name in names:
        field = fields[name]
        assert flag(name) in text, name
        assert " ".join(field.description.split()) in text, name
        if field.default is not None and not field.is_required():
            default = field.default
            shown = f"{default[0]}:{default[1]}" if isinstance(default, tuple) else (
                ("drop-last" if name == "drop_last" else name.replace("_", "-") if default else "no-" + name.replace("_", "-"))
                if isinstance(default, bool) else str(default))
            assert f"{flag(name)}" in text and f"[default: {shown}]" in text, (name, shown)


def test_semdedup_options_reach_the_config_and_match_the_python_api(store, tmp_path):
    args = ["select", "semdedup", "--pool-embeddings", str(store.path), "--n-clusters", "3", "--eps", "0.6", "--n-iter", "2",
            "--sample-size", "30", "--seed", "7", *LOCAL]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    python = select_semdedup(store.path, tmp_path / "py", n_clusters=3, eps=0.6, n_iter=2, sample_size=30, seed=7, executor=_in_process())
    assert _ids(tmp_path / "cli") == _ids(python.path)
    params = open_curated(tmp_path / "cli").manifest["params"]
    assert params == python.manifest["params"]
    assert python.manifest["summary"]["removed"] > 0  # eps this wide removes rows: the comparison says something
    # a different seed is a different selection, so the seed did reach the stage
    other = select_semdedup(store.path, tmp_path / "py-other", n_clusters=3, eps=0.6, n_iter=2, sample_size=30, seed=8, executor=_in_process())
    assert other.manifest["params"] != params


def test_old_semdedup_flags_note_the_new_ones_and_give_identical_output(store, tmp_path):
    new = ["select", "semdedup", "--pool-embeddings", str(store.path), "--n-clusters", "3", "--eps", "0.6", "--n-iter", "2", *LOCAL]
    old = ["select", "semdedup", "--pool-embeddings", str(store.path), "--clusters", "3", "--eps", "0.6", "--iterations", "2", *LOCAL]
    runner = CliRunner()
    new_result = runner.invoke(main, [*new, "--out", str(tmp_path / "new")])
    old_result = runner.invoke(main, [*old, "--out", str(tmp_path / "old")])
    assert new_result.exit_code == 0 and old_result.exit_code == 0, old_result.output
    assert "deprecated" not in new_result.stderr
    assert "note: --clusters is deprecated; use --n-clusters" in old_result.stderr
    assert "note: --iterations is deprecated; use --n-iter" in old_result.stderr
    assert _ids(tmp_path / "old") == _ids(tmp_path / "new")
    both = runner.invoke(main, [*new, "--clusters", "3", "--out", str(tmp_path / "both")])
    assert both.exit_code == 2 and "give --n-clusters only (--clusters is its old spelling)" in both.stderr


def test_rds_options_reach_the_config_and_match_the_python_api(pool, store, tmp_path, make_random_store):
    # targets may be embedding stores: the pool's own store as one task, another seeded store as the other
    other = make_random_store(pool, tmp_path / "other", partition_rows=42, dim=8, seed=5)
    targets = {"a": str(store.path), "b": str(other.path)}
    args = ["select", "rds", "--pool-embeddings", str(store.path), "--budget", "10", "--aggregation", "mean", "--quota", "a=3", "--quota", "b=20",
            "--targets", f"a={targets['a']}", "--targets", f"b={targets['b']}", *LOCAL]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    python = select_rds(store.path, targets, tmp_path / "py", budget=10, aggregation="mean", quotas={"a": 3, "b": 20}, executor=_in_process())
    assert _ids(tmp_path / "cli") == _ids(python.path)
    assert open_curated(tmp_path / "cli").manifest["summary"]["per_task_selected"] == {"a": 3, "b": 7}
    default = select_rds(store.path, targets, tmp_path / "py-max", budget=10, quotas={"a": 3, "b": 20}, executor=_in_process())
    assert _ids(python.path) != _ids(default.path)  # --aggregation mean made a difference, so the value was used


def test_keep_last_reaches_drop_last(store, tmp_path):
    args = ["select", "batches", "--pool-embeddings", str(store.path), "--batch-size", "8", "--community-size", "2", "--rank-window", "2:6",
            "--n-hard-negatives", "1", *LOCAL]
    runner = CliRunner()
    kept = runner.invoke(main, [*args, "--keep-last", "--out", str(tmp_path / "kept")])
    dropped = runner.invoke(main, [*args, "--drop-last", "--out", str(tmp_path / "dropped")])
    assert kept.exit_code == 0 and dropped.exit_code == 0, kept.output + dropped.output
    python = select_batches(store.path, tmp_path / "py", batch_size=8, community_size=2, rank_window=(2, 6), n_hard_negatives=1,
                            drop_last=False, executor=_in_process())
    assert _ids(tmp_path / "kept") == _ids(python.path) and len(_ids(python.path)) == 42
    assert len(_ids(tmp_path / "dropped")) == 40  # 42 rows: 5 whole batches of 8
    old = runner.invoke(main, [*args, "--keep-last", "--hard-negatives", "1", "--out", str(tmp_path / "old")])
    assert old.exit_code == 2 and "give --n-hard-negatives only" in old.stderr
    old = runner.invoke(main, [*args[:-4], "--hard-negatives", "1", *LOCAL, "--keep-last", "--out", str(tmp_path / "old2")])
    assert old.exit_code == 0 and "note: --hard-negatives is deprecated; use --n-hard-negatives" in old.stderr
    assert _ids(tmp_path / "old2") == _ids(python.path)


@pytest.mark.parametrize("argv, message", [
    (["semdedup", "--n-clusters", "3", "--eps", "1.5"], r"Invalid value for '--eps': 'eps': Input should be less than 1; got 1\.5"),
    (["semdedup", "--n-clusters", "3"], r"Missing option '--eps'"),
    (["semdedup", "--n-clusters", "3", "--eps", "0.1", "--n-iter", "many"], r"Invalid value for '--n-iter': 'many' is not a valid integer"),
    (["smote", "--labels", "source", "--undersample-majority", "0"], r"Invalid value for '--undersample-majority': 'undersample_majority'.*got 0"),
    (["smote", "--labels", "source", "--neighbors", "approx"], r"Invalid value for '--neighbors': 'approx' is not one of 'auto', 'exact'"),
    (["batches", "--rank-window", "6:2"], r"rank_window must be \[p, p \+ m\]"),
    (["rds", "--targets", "t=x", "--budget", "1.5"], r"Invalid value for '--budget': 'budget': must be a positive row count"),
])
def test_a_bad_value_names_its_flag(store, tmp_path, argv, message):
    result = CliRunner().invoke(main, ["select", *argv[:1], "--pool-embeddings", str(store.path), *argv[1:], "--out", str(tmp_path / "o"), *LOCAL])
    assert result.exit_code == 2, result.output
    assert re.search(message, result.stderr), result.stderr
    assert not (tmp_path / "o").exists()


def test_spec_clusters_is_the_old_spelling_of_n_clusters(capsys):
    def spec(step):
        return {"pool": {"path": "p.jsonl"}, "steps": [step]}

    new = validate_spec(spec({"step": "semdedup", "n_clusters": 4, "eps": 0.1})).steps[0]
    assert "deprecated" not in capsys.readouterr().err
    old = validate_spec(spec({"step": "semdedup", "clusters": 4, "eps": 0.1})).steps[0]
    assert capsys.readouterr().err.strip() == "note: semdedup key 'clusters' is deprecated; use 'n_clusters'"
    assert old == new and new.n_clusters == 4
    kind = STEPS["semdedup"]
    # the runner's cache key is unchanged by the rename: outputs cached before it are still found
    assert kind.params(new) == {"step": "semdedup", "input": None, "clusters": 4, "eps": 0.1, "sample_size": None, "seed": 0}
    assert kind.params(new.model_copy(update={"n_iter": 5}))["n_iter"] == 5
