"""Declared parameter validation: one helper, one message template (thresher.params)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pytest

from thresher.exceptions import ParameterError
from thresher.params import Check, HasMethods, Instance, Interval, StrOptions, check_param, describe

BUDGET = [Interval(int, 1, None), Interval(float, 0, 1, closed="right")]


def test_the_template():
    with pytest.raises(ParameterError) as info:
        check_param("RDSPlus", "budget", 0, BUDGET)
    assert str(info.value) == "The 'budget' parameter of RDSPlus must be an int >= 1 or a float in (0, 1]; got 0."


@pytest.mark.parametrize("value", [1, 7, np.int64(3), 0.5, 1.0, np.float32(0.25)])
def test_accepted(value):
    check_param("X", "budget", value, BUDGET)


@pytest.mark.parametrize("value", [0, -1, True, np.bool_(True), 0.0, 1.5, math.nan, math.inf, "3", None, [1]])
def test_refused(value):
    with pytest.raises(ParameterError, match=r"^The 'budget' parameter of X must be "):
        check_param("X", "budget", value, BUDGET)


@pytest.mark.parametrize(
    "constraints,words",
    [
        ([None, Interval(int, 1, None)], "None or an int >= 1"),
        ([Interval(float, 0, 1, closed="left")], "a float in [0, 1)"),
        ([Interval(float, 0, None, closed="neither")], "a float > 0"),
        ([Interval(int, 1, 10, note="the rows")], "an int in [1, 10] (the rows)"),
        ([Interval(float, None, None)], "a finite float"),
        ([StrOptions("max", "mean")], "'max' or 'mean'"),
        ([StrOptions("a", "b", "c")], "one of 'a', 'b', 'c'"),
        ([StrOptions("auto", "exact"), HasMethods("fit", "kneighbors")], "'auto', 'exact' or an object with fit() and kneighbors()"),
        (["boolean"], "True or False"),
        ([None, Instance(Mapping, "a dict {class: ratio}")], "None or a dict {class: ratio}"),
    ],
)
def test_descriptions(constraints, words):
    assert describe(constraints) == words


def test_each_kind_accepts_what_it_says():
    check_param("X", "flag", np.bool_(False), ["boolean"])
    with pytest.raises(ParameterError, match="got 1"):
        check_param("X", "flag", 1, ["boolean"])
    check_param("X", "neighbors", np.random.default_rng(0), [HasMethods("integers")])
    with pytest.raises(ParameterError, match="got an object of type object"):
        check_param("X", "neighbors", object(), [HasMethods("kneighbors")])
    check_param("X", "strategy", len, [callable])
    pair = [Check(lambda v: len(v) == 2, "a pair")]
    check_param("X", "window", (1, 2), pair)
    with pytest.raises(ParameterError, match="must be a pair; got 3"):
        check_param("X", "window", 3, pair)  # a predicate's TypeError is a refusal, not a crash
    with pytest.raises(ParameterError, match=r"must be an int in \[1, 3\]; got 4"):
        check_param("X", "k", 4, [Interval(int, 1, 3)])
    with pytest.raises(ParameterError, match=r"must be a float in \(0, 1\); got 1"):
        check_param("X", "eps", 1, [Interval(float, 0, 1, closed="neither")])
