"""Argument checks shared by the search functions and the index artefact (one message shape, as everywhere)."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from thresher.exceptions import DimensionMismatchError, InputDataError, parameter_error

Metric = Literal["ip", "l2"]
METRICS = ("ip", "l2")


def check_int(value: Any, name: str, owner: str, *, minimum: int) -> None:
    """Refuse anything but an int (not a bool) of at least ``minimum``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise parameter_error(owner, name, f"an int >= {minimum}", value)


def check_k(k: Any, owner: str) -> None:
    """Neighbours per query: an int >= 1."""
    check_int(k, "k", owner, minimum=1)


def check_metric(metric: Any, owner: str) -> None:
    """``"ip"`` (inner product, higher is nearer) or ``"l2"`` (squared Euclidean distance, lower is nearer)."""
    if metric not in METRICS:
        raise parameter_error(owner, "metric", "'ip' or 'l2'", metric)


def as_queries(vectors: Any, dim: int, where: str) -> np.ndarray:
    """Queries as a C-contiguous float32 (n, dim) array, checked against ``dim`` and for finiteness."""
    queries = np.asarray(vectors)
    if queries.ndim != 2:
        raise InputDataError(f"Queries must be a 2-D array of shape (n_queries, dim); got shape {queries.shape}.")
    if queries.dtype.kind not in "fiu":
        raise InputDataError(f"Queries must be numeric; got dtype {queries.dtype}.")
    if queries.shape[1] != dim:
        raise DimensionMismatchError(f"The queries have dim {queries.shape[1]} but {where} has dim {dim}.")
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    finite = np.isfinite(queries).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise InputDataError(f"Query row {bad} is not finite (NaN or inf in float32).")
    return queries
