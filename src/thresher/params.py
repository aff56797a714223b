"""Declared parameter validation (after scikit-learn's ``_parameter_constraints``).

A component declares, per parameter, the forms a value may take; a value is
accepted when it takes any of them. One helper checks them and raises one
:class:`~thresher.exceptions.ParameterError` in the project's one template,
naming the owner, the parameter, every accepted form, and the value got::

    The 'budget' parameter of RDSPlus must be an int >= 1 or a float in (0, 1]; got 0.

Constraints (a list per parameter, any one suffices):

- ``Interval(int, 1, None)`` — an int >= 1 (numpy ints too; never a bool).
- ``Interval(float, 0, 1, closed="right")`` — a real number in (0, 1] (ints
  too; never a bool, NaN or inf).
- ``StrOptions("max", "mean")`` — one of these strings (in this order in the message).
- ``"boolean"`` — True or False (numpy bools too).
- ``None`` — None.
- ``HasMethods("fit", "kneighbors")`` — an object with these methods.
- ``Instance(Mapping, "a dict {class: ratio}")`` — an instance of a type.
- ``Check(predicate, "a pair (p, p + m) of ints with 0 <= p < p + m")`` — anything else.

Each constraint may carry a ``note``, written in parentheses after its form.
This lives outside ``selectors`` so encoders and stages use the same helper.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from thresher.exceptions import parameter_error

__all__ = ["Check", "HasMethods", "Instance", "Interval", "StrOptions", "check_param", "check_params", "describe"]


@dataclass(frozen=True)
class Interval:
    """An int (``kind=int``) or a real number (``kind=float``) between ``left`` and ``right`` (None = unbounded).

    ``closed`` says which ends belong to the interval: "both", "left", "right" or "neither".
    A real interval never holds NaN or inf.
    """

    kind: type
    left: float | None
    right: float | None
    closed: Literal["both", "left", "right", "neither"] = "both"
    note: str | None = None

    def accepts(self, value: Any) -> bool:
        if isinstance(value, (bool, np.bool_)):
            return False
        if self.kind is int:
            if not isinstance(value, (int, np.integer)):
                return False
        elif not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(float(value)):
            return False
        if self.left is not None and (value < self.left or (value == self.left and self.closed in ("right", "neither"))):
            return False
        if self.right is not None and (value > self.right or (value == self.right and self.closed in ("left", "neither"))):
            return False
        return True

    def forms(self) -> list[str]:
        noun = "an int" if self.kind is int else "a float"
        left_in, right_in = self.closed in ("both", "left"), self.closed in ("both", "right")
        if self.left is None and self.right is None:
            text = noun if self.kind is int else "a finite float"
        elif self.right is None:
            text = f"{noun} {'>=' if left_in else '>'} {_num(self.left)}"
        elif self.left is None:
            text = f"{noun} {'<=' if right_in else '<'} {_num(self.right)}"
        else:
            text = f"{noun} in {'[' if left_in else '('}{_num(self.left)}, {_num(self.right)}{']' if right_in else ')'}"
        return [_noted(text, self.note)]


class StrOptions:
    """One of the given strings."""

    def __init__(self, *options: str, note: str | None = None):
        self.options = tuple(options)
        self.note = note

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and value in self.options

    def forms(self) -> list[str]:
        forms = [repr(o) for o in self.options]
        forms[-1] = _noted(forms[-1], self.note)
        return forms


class HasMethods:
    """Any object with every one of the named methods (e.g. a neighbours object with ``kneighbors``)."""

    def __init__(self, *methods: str, note: str | None = None):
        self.methods = tuple(methods)
        self.note = note

    def accepts(self, value: Any) -> bool:
        return all(callable(getattr(value, m, None)) for m in self.methods)

    def forms(self) -> list[str]:
        names = [f"{m}()" for m in self.methods]
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        return [_noted(f"an object with {listed}", self.note)]


@dataclass(frozen=True)
class Instance:
    """An instance of ``types``, described as ``description`` (e.g. ``Instance(Mapping, "a dict {class: ratio}")``)."""

    types: type | tuple[type, ...]
    description: str

    def accepts(self, value: Any) -> bool:
        return isinstance(value, self.types) and not isinstance(value, (bool, np.bool_))

    def forms(self) -> list[str]:
        return [self.description]


@dataclass(frozen=True)
class Check:
    """Any value ``predicate`` accepts, described as ``description`` (for forms the other constraints cannot say)."""

    predicate: Callable[[Any], bool]
    description: str

    def accepts(self, value: Any) -> bool:
        try:
            return bool(self.predicate(value))
        except (TypeError, ValueError):
            return False

    def forms(self) -> list[str]:
        return [self.description]


class _Boolean:
    def accepts(self, value: Any) -> bool:
        return isinstance(value, (bool, np.bool_))

    def forms(self) -> list[str]:
        return ["True", "False"]


class _NoneConstraint:
    def accepts(self, value: Any) -> bool:
        return value is None

    def forms(self) -> list[str]:
        return ["None"]


class _Callable:
    def accepts(self, value: Any) -> bool:
        return callable(value)

    def forms(self) -> list[str]:
        return ["a callable"]


def _as_constraint(constraint: Any) -> Any:
    if constraint is None:
        return _NoneConstraint()
    if constraint == "boolean":
        return _Boolean()
    if constraint is callable or constraint == "callable":
        return _Callable()
    if hasattr(constraint, "accepts") and hasattr(constraint, "forms"):
        return constraint
    raise TypeError(f"Unknown parameter constraint {constraint!r}")


def describe(constraints: Iterable[Any]) -> str:
    """What the constraints accept, in words: "None or an int >= 1", "'max' or 'mean'", "one of 'a', 'b', 'c'"."""
    items = [c for constraint in constraints for c in _as_constraint(constraint).forms()]
    options = all(isinstance(c, StrOptions) for c in constraints)
    if options and len(items) > 2:
        return "one of " + ", ".join(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def check_param(owner: str, name: str, value: Any, constraints: Iterable[Any]) -> None:
    """Raise the standard :class:`~thresher.exceptions.ParameterError` unless ``value`` meets one of ``constraints``."""
    constraints = list(constraints)
    if not any(_as_constraint(c).accepts(value) for c in constraints):
        raise parameter_error(owner, name, describe(constraints), _shown(value))


def check_params(owner: str, values: Mapping[str, Any], constraints: Mapping[str, Iterable[Any]]) -> None:
    """:func:`check_param` for every declared parameter in ``values`` (in the declaration's order)."""
    for name, allowed in constraints.items():
        if name in values:
            check_param(owner, name, values[name], allowed)


#: The default of an argument kept under an old name: "not given".
UNSET: Any = type("Unset", (), {"__repr__": lambda self: "UNSET"})()


def renamed_argument(owner: str, new: str, value: Any, old: str, old_value: Any, default: Any) -> Any:
    """The value of argument ``new`` of ``owner``, or of its old spelling ``old`` (with a DeprecationWarning naming ``new``).

    ``value`` and ``old_value`` are :data:`UNSET` when not given (then ``default``); giving both is a ParameterError.
    """
    import warnings

    from thresher.exceptions import ParameterError

    if old_value is UNSET:
        return default if value is UNSET else value
    if value is not UNSET:
        raise ParameterError(f"{owner}() takes {new}= or its old spelling {old}=, not both.")
    warnings.warn(f"{owner}({old}=) is deprecated; use {new}=.", DeprecationWarning, stacklevel=3)
    return old_value


class _Shown:
    """A value as a message shows it: an object without a useful repr by its type."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _shown(value: Any) -> Any:
    simple = (str, int, float, bool, complex, bytes, np.generic, type(None), tuple, list, dict, set, frozenset)
    if isinstance(value, simple) and len(repr(value)) <= 200:
        return value
    return _Shown(f"an object of type {type(value).__name__}")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _noted(text: str, note: str | None) -> str:
    return text if note is None else f"{text} ({note})"
