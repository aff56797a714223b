"""The spec's ``report`` section: ``explore`` (the interactive page beside report.html) is a checked bool, on by default."""

from __future__ import annotations

import pytest

from thresher.pipeline.spec import SpecError, apply_overrides, validate_spec

POOL = {"path": "pool.jsonl", "text_column": "text"}


def test_explore_is_on_by_default_and_can_be_turned_off():
    assert validate_spec({"pool": POOL}).report.explore is True
    assert validate_spec({"pool": POOL, "report": {"explore": False}}).report.explore is False
    overridden = apply_overrides({"pool": POOL}, ["report.explore=false"])
    assert validate_spec(overridden).report.explore is False
    # html: false alone is valid (no pages at all: the runner writes neither)
    assert validate_spec({"pool": POOL, "report": {"html": False}}).report.html is False


@pytest.mark.parametrize("value", ["maybe", 2, [True], {"on": True}])
def test_a_value_that_is_not_a_bool_names_the_key(value):
    with pytest.raises(SpecError, match=r"^spec\.yaml:7: report\.explore: Input should be a valid boolean"):
        validate_spec({"pool": POOL, "report": {"explore": value}}, where="spec.yaml", lines={("report", "explore"): 7})


def test_explore_without_the_report_is_refused_naming_the_key():
    with pytest.raises(SpecError, match=r"^spec\.yaml: report\.explore: .*explore: true needs html: true.*thresher explore RUN"):
        validate_spec({"pool": POOL, "report": {"html": False, "explore": True}}, where="spec.yaml")
    with pytest.raises(SpecError, match=r"--set report\.explore=true: report\.explore: .*needs html: true"):
        origins: dict = {}
        raw = apply_overrides({"pool": POOL, "report": {"html": False}}, ["report.explore=true"], origins=origins)
        validate_spec(raw, where="spec.yaml", lines={key: f"--set {item}" for key, item in origins.items()})
