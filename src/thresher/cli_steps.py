"""The step options of ``thresher select <step>``, generated from the step's config.

A step's pydantic config (:mod:`thresher.pipeline.steps`) is the one source of
truth for its parameters: each field becomes one option (``n_clusters`` →
``--n-clusters``) with the field's type (a ``Literal`` → a choice, a ``bool`` →
an on/off flag), default and ``Field(description=...)`` as help, and the values
given are validated by the same config a spec step is, with errors naming the
``--flag``. Options that are not step parameters (``--pool-embeddings``,
``--out``, the cluster options) stay hand-written in :mod:`thresher.cli`.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import click
from pydantic import ValidationError

from thresher.pipeline.steps import StepConfig, StepKind

#: The prefix of the hidden options that carry an old flag spelling.
_OLD = "old__"


@dataclass(frozen=True)
class Convert:
    """How a field whose type is not a plain int, float, str, bool or Literal is read from the command line.

    Attributes
    ----------
    parse : callable
        The option's value (a string, or a tuple of strings when ``multiple``) → the config's value.
    multiple : bool
        The option may be repeated.
    show : callable, optional
        The field's default as the command line writes it (for ``--help``); None: ``str``.
    synonyms : tuple of str
        Other visible spellings of the flag (``--quota`` for ``--quotas``: a repeated option reads singular).
    """

    parse: Callable[[Any], Any]
    multiple: bool = False
    show: Callable[[Any], str] | None = None
    synonyms: tuple[str, ...] = ()


def flag(field: str) -> str:
    """The command-line spelling of a config field: ``n_clusters`` → ``--n-clusters``."""
    return "--" + field.replace("_", "-")


def step_fields(kind: StepKind, skip: tuple[str, ...] = ()) -> list[str]:
    """The config fields of ``kind`` that are options: all but the spec-only ones (``step``, ``name``, ``input``) and ``skip``."""
    common = {"step", *StepConfig.model_fields}
    return [f for f in kind.Config.model_fields if f not in common and f not in skip]


def step_options(kind: StepKind, *, skip: tuple[str, ...] = (), convert: dict[str, Convert] | None = None,
                 off_flags: dict[str, str] | None = None, old_flags: dict[str, str] | None = None) -> Callable:
    """A decorator adding one option per config field of ``kind`` (in field order), and the old spellings hidden.

    ``convert`` reads fields of other types; ``off_flags`` names a bool's off switch (default ``--no-<name>``);
    ``old_flags`` maps an old flag spelling to its field (it keeps working, with a note on stderr).
    """
    convert, off_flags, old_flags = convert or {}, off_flags or {}, old_flags or {}
    fields = kind.Config.model_fields
    options = [_option(name, fields[name], convert.get(name), off_flags.get(name)) for name in step_fields(kind, skip)]
    for old, name in old_flags.items():
        how = convert.get(name)
        options.append(click.option(old, _OLD + name, hidden=True, multiple=bool(how and how.multiple),
                                    type=None if how else _click_type(fields[name].annotation), default=None))

    def decorate(f: Callable) -> Callable:
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


def build_config(kind: StepKind, options: dict[str, Any], *, convert: dict[str, Convert] | None = None,
                 fixed: dict[str, Any] | None = None) -> StepConfig:
    """The validated config of ``kind`` from a command's ``options`` (its step fields, old spellings folded in with a note)
    and ``fixed`` values.

    A value pydantic refuses is a usage error naming its ``--flag``, as a bad spec key names the key.
    """
    convert = convert or {}
    fields = set(step_fields(kind))
    values = {k: v for k, v in options.items() if k in fields or k.startswith(_OLD)}
    for key in [k for k in values if k.startswith(_OLD)]:
        old_value, name = values.pop(key), key[len(_OLD):]
        ctx = click.get_current_context()
        old = next(p.opts[0] for p in ctx.command.params if p.name == key)
        given = ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE
        values[name] = old_spelling(flag(name), values.get(name), old, old_value, given=given)
    for name, how in convert.items():
        if name in values and values[name] is not None:
            values[name] = how.parse(values[name])
    present = {k: v for k, v in values.items() if v is not None or not kind.Config.model_fields[k].is_required()}
    try:
        return kind.Config(step=kind.name, **present, **(fixed or {}))
    except ValidationError as exc:
        raise _usage_error(exc) from None


def old_spelling(new: str, value: Any, old: str, old_value: Any, *, given: bool | None = None) -> Any:
    """The value of option ``new``, or of its old spelling ``old`` (with a one-line note on stderr naming ``new``).

    ``given``: whether ``new`` was on the command line (default: it has a value; say so when it has a default).
    """
    if old_value is None or old_value == ():
        return value
    click.echo(f"note: {old} is deprecated; use {new}", err=True)
    both = given if given is not None else value not in (None, ())
    if both:
        raise click.UsageError(f"give {new} only ({old} is its old spelling)")
    return old_value


def _usage_error(exc: ValidationError) -> click.ClickException:
    """The first of pydantic's errors as click reports a bad option: naming the ``--flag``."""
    error = exc.errors()[0]
    message = error["msg"].removeprefix("Value error, ")
    if not error["loc"]:
        return click.UsageError(message)
    field = str(error["loc"][0])
    if error["type"] == "missing":
        return click.UsageError(f"Missing option '{flag(field)}'.")
    return click.BadParameter(f"'{field}': {message}; got {error['input']!r}", param_hint=f"'{flag(field)}'")


def _option(name: str, field: Any, how: Convert | None, off_flag: str | None) -> Callable:
    """The click option of one config field."""
    required = field.is_required()
    default = None if required else field.default
    help_text = field.description or ""
    if how is not None:
        shown = None if default is None else (how.show or str)(default)
        return click.option(flag(name), *how.synonyms, name, multiple=how.multiple, default=() if how.multiple else shown,
                            show_default=shown is not None, help=help_text + ("  [required]" if required else ""))
    annotation = _without_none(field.annotation)
    if annotation is bool:
        return click.option(f"{flag(name)}/{off_flag or '--no-' + name.replace('_', '-')}", name, default=default,
                            show_default=True, help=help_text)
    return click.option(flag(name), name, type=_click_type(annotation), default=default, show_default=default is not None,
                        help=help_text + ("  [required]" if required else ""))


def _without_none(annotation: Any) -> Any:
    """``X | None`` → ``X``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _click_type(annotation: Any) -> click.ParamType:
    """The click type of a plain field type; a Literal is a choice of its values."""
    annotation = _without_none(annotation)
    if typing.get_origin(annotation) is Literal:
        return click.Choice([str(a) for a in typing.get_args(annotation)])
    types_ = {int: click.INT, float: click.FLOAT, str: click.STRING, bool: click.BOOL}
    if annotation not in types_:
        raise TypeError(f"no command-line type for {annotation!r}; give the field a Convert")
    return types_[annotation]
