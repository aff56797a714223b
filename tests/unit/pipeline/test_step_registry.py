"""The step registry: each step kind declared once, and spec.py / runner.py going through it with no per-kind branch."""

from __future__ import annotations

import inspect
import re

import pytest

import thresher.pipeline.runner as runner
import thresher.pipeline.spec as spec_module
from thresher.fingerprint import fingerprint_of
from thresher.pipeline.spec import STEP_MODELS, SpecError, validate_spec
from thresher.pipeline.steps import STEPS, StepKind, step_kind


def test_every_kind_is_registered_once_with_its_config_version_and_stage():
    assert list(STEPS) == ["semdedup", "rds", "smote", "batches"]
    for name, kind in STEPS.items():
        assert isinstance(kind, StepKind) and kind.name == name
        assert STEP_MODELS[name] is kind.Config
        assert kind.Config.model_fields["step"].annotation.__args__ == (name,)
        assert runner.step_version(name) == kind.version
        assert type(kind).run is not StepKind.run  # each kind runs its stage


def test_a_kinds_fingerprint_is_its_stage_tag_version_params_and_inputs():
    kind = STEPS["rds"]
    assert kind.fingerprint(["a", "b"], {"x": 1}) == fingerprint_of("rds_plus", kind.version, {"x": 1}, ["a", "b"])
    assert STEPS["batches"].fingerprint([], {}) == fingerprint_of("b3", STEPS["batches"].version, {}, [])


def test_spec_and_runner_hold_no_branch_on_a_step_kind():
    source = inspect.getsource(spec_module) + inspect.getsource(runner)
    kinds = "|".join(STEPS)
    assert not re.search(r"isinstance\([^)]*(Step|step)\b[^)]*,\s*\w+Step\)", source)
    assert not re.search(rf"""\.step\s*==\s*["']({kinds})["']""", source)
    assert "_STEP_VERSION_SOURCES" not in source


def _spec(*steps, index=True):
    raw = {"pool": {"path": "pool.jsonl"}, "steps": list(steps)}
    if index:
        raw["index"] = {}
    return validate_spec(raw)


def test_the_kinds_bounds_checks_and_estimates():
    spec = _spec({"step": "semdedup", "n_clusters": 4, "eps": 0.1}, {"step": "rds", "budget": 0.5, "targets": "t.jsonl", "target_task_column": "task"},
                 {"step": "batches", "batch_size": 8, "community_size": 4})
    assert [step_kind(s).name for s in spec.steps] == ["semdedup", "rds", "batches"]
    assert spec_module.upper_bound_before(spec, 2, 100) == 50  # semdedup keeps ≤ 100, rds half of them
    assert spec_module.upper_bound_after(spec, 2, 100) == 48  # whole batches of 8
    assert step_kind(spec.steps[2]).expected_rows(spec.steps[2], 50) == "≤ 48 (6 batches of 8)"
    assert step_kind(spec.steps[1]).expected_rows(spec.steps[1], 50) == "50% of ≤ 50"
    assert step_kind(spec.steps[2]).uses_index(spec.steps[2]) and not step_kind(spec.steps[1]).uses_index(spec.steps[1])
    with pytest.raises(SpecError, match=r"4 clusters for at most 3 rows"):
        spec_module.check_budget(spec, 0, 3, "steps[0]")
    smote = _spec({"step": "smote", "labels": "y"})
    assert spec_module.upper_bound_after(smote, 0, 100) is None and not STEPS["smote"].keeps_pool_rows
    assert STEPS["smote"].pool_columns(smote.steps[0]) == ["y"]


def test_kind_checks_run_through_check_order():
    spec = _spec({"step": "batches", "batch_size": 10, "community_size": 4})
    with pytest.raises(SpecError, match="batch_size 10 is not a multiple of community_size 4"):
        spec_module.check_order(spec)
    spec = _spec({"step": "batches"}, index=False)
    with pytest.raises(SpecError, match="batch mining needs the teacher's ranks from an index"):
        spec_module.check_order(spec)
    spec_module.check_order(_spec({"step": "batches", "exact": True}, index=False))
