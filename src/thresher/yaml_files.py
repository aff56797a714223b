"""Reading YAML the user wrote (pipeline specs, SLURM configs): a key named twice is an error, not a silent overwrite.

YAML loaders keep the last of two equal keys, which hides a typo or a pasted
block; every YAML file thresher reads goes through :func:`load_yaml`, which
refuses that naming both lines, and reports syntax errors by line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from thresher.exceptions import ParameterError


def load_yaml(text: str, path: str | Path, *, what: str = "", error: type[ParameterError] = ParameterError) -> tuple[Any, Any]:
    """``(value, node tree)`` of a YAML document; ``error`` names ``path:line`` for a syntax error or a repeated key.

    ``what`` prefixes the syntax-error reason ("the SLURM config is ..."); the node tree (None for
    an empty document) lets callers map values back to their lines.
    """
    try:
        node = yaml.compose(text)
        if node is not None:
            refuse_duplicate_keys(node, path, error=error)
        return yaml.safe_load(text), node
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise error(f"{at}: {what}not valid YAML: {getattr(exc, 'problem', None) or exc}") from None


def refuse_duplicate_keys(node: Any, path: str | Path, *, error: type[ParameterError] = ParameterError) -> None:
    """Refuse any mapping in the node tree that names a key twice, naming both lines (merge keys ``<<`` excepted)."""
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, yaml.MappingNode):
            first: dict[Any, int] = {}
            for k, v in current.value:
                stack.append(v)
                if not isinstance(k, yaml.ScalarNode) or k.tag == "tag:yaml.org,2002:merge":
                    continue
                line = k.start_mark.line + 1
                if k.value in first:
                    raise error(f"{path}:{line}: key {k.value!r} repeated (first at line {first[k.value]}).")
                first[k.value] = line
        elif isinstance(current, yaml.SequenceNode):
            stack.extend(current.value)
