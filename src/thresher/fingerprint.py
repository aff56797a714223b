"""Fingerprints: short content hashes that identify inputs and artefacts.

As in HF datasets, an artefact's fingerprint is the hash of its inputs'
fingerprints, the step name, the step's version and its sorted parameters, so
the same inputs and settings give the same fingerprint on any machine, and a
changed input is detected before a partial run is resumed on top of it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import xxhash

_CHUNK = 8 << 20


def hash_bytes(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def hash_file(path: str | Path, *, fs: Any = None) -> str:
    """Hash a file's content, streaming (bounded memory). ``fs`` is an fsspec filesystem or None for local."""
    h = xxhash.xxh3_128()
    opener = fs.open if fs is not None else open
    with opener(str(path), "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: the same value always gives the same text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_json_default, ensure_ascii=False)


def fingerprint_of(step: str, version: str | int, params: Mapping[str, Any], inputs: Iterable[str] = ()) -> str:
    """Fingerprint of an artefact made by ``step`` (at ``version``) with ``params`` from ``inputs``."""
    payload = {"step": step, "version": str(version), "params": params, "inputs": list(inputs)}
    return hash_bytes(canonical_json(payload).encode("utf-8"))


def _json_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"cannot fingerprint a value of type {type(value).__name__}: {value!r}")
