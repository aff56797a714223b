"""Pool ids <-> store positions, in one place.

Every artefact refers to rows by their pool ``id`` (an int64 or a string);
inside a computation rows are ``positions`` (offsets into an embedding store
or index). These helpers convert between the two:

- :func:`ids_to_numpy` — an Arrow id column as numpy (int64, or an object array of str);
- :func:`ids_at` — the ids at some positions of an id column (``-1`` positions give a missing id);
- :func:`store_ids_at` — the ids at some positions of a sharded store, reading one shard's ids at a time;
- :class:`IdPositions` — the full id -> position map of a store, for many look-ups;
- :func:`find_positions` — the positions of a few ids, streaming the store's id column (no full map).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from thresher.exceptions import InputDataError, ParameterError


def ids_to_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """An id column as numpy: int64 for integer ids, an object array of str otherwise."""
    if pa.types.is_integer(column.type):
        return column.to_numpy().astype(np.int64, copy=False)
    return np.asarray(column.to_pylist(), dtype=object)


def ids_at(column: pa.ChunkedArray, positions: np.ndarray, *, where: str = "the id map") -> np.ndarray:
    """The ids at ``positions`` (any shape) of an id column; ``-1`` gives ``-1`` (int ids) or ``None`` (str ids)."""
    positions = np.asarray(positions, dtype=np.int64)
    missing = positions < 0
    flat = np.where(missing, 0, positions).reshape(-1)
    if flat.size and flat.max() >= len(column):
        raise ParameterError(f"positions must lie in [-1, {len(column)}) for {where}; got {flat.max()}.")
    taken = column.take(pa.array(flat, type=pa.int64()))
    if pa.types.is_integer(column.type):
        out = taken.to_numpy().astype(np.int64, copy=False).reshape(positions.shape).copy()
        out[missing] = -1
    else:
        out = np.empty(flat.size, dtype=object)
        out[:] = taken.to_pylist()
        out = out.reshape(positions.shape)
        out[missing] = None
    return out


def store_ids_at(store: Any, positions: np.ndarray) -> np.ndarray:
    """Pool ids at store ``positions`` (any order), reading one shard's ids at a time (``store.shard_ids``)."""
    positions = np.asarray(positions, dtype=np.int64)
    shard_of = np.searchsorted(store.shard_offsets, positions, side="right") - 1
    out = None
    for i in np.unique(shard_of):
        ids = store.shard_ids(int(i))
        if out is None:
            out = np.empty(len(positions), dtype=ids.dtype)
        sel = np.flatnonzero(shard_of == i)
        out[sel] = ids[positions[sel] - store.shard_offsets[i]]
    return out if out is not None else store.shard_ids(0)[:0]


class IdPositions:
    """The id -> position map of all rows (a dict: for many look-ups; :func:`find_positions` for a few).

    Parameters
    ----------
    ids : ndarray of shape (n_rows,)
        The ids in position order.
    where : str
        What holds them, for error messages (e.g. "the embedding store <path>").
    """

    def __init__(self, ids: np.ndarray, where: str):
        self._lookup = {key: pos for pos, key in enumerate(np.asarray(ids).tolist())}
        self.where = where

    def __len__(self) -> int:
        return len(self._lookup)

    def positions_of(self, ids: Sequence[Any] | np.ndarray) -> np.ndarray:
        """Positions of the given ids, int64; an unknown id raises :class:`InputDataError`, naming it."""
        out = np.empty(len(ids), dtype=np.int64)
        for j, key in enumerate(ids.tolist() if isinstance(ids, np.ndarray) else ids):
            try:
                out[j] = self._lookup[key]
            except KeyError:
                raise InputDataError(f"id {key!r} is not in {self.where}.") from None
        return out


def find_positions(store: Any, ids: Sequence[Any]) -> dict[Any, int]:
    """Store positions of a few ``ids``, found by streaming the store's id column shard by shard (no full id map).

    Ids not in the store are left out of the result.
    """
    import pyarrow.compute as pc

    wanted = list(dict.fromkeys(ids))
    found: dict[Any, int] = {}
    if not wanted:
        return found
    for i in range(store.n_shards):
        column = store.shard_table(i).column("id")
        hits = np.flatnonzero(pc.is_in(column, value_set=pa.array(wanted, type=column.type)).to_numpy(zero_copy_only=False))
        base = int(store.shard_offsets[i])
        for offset, key in zip(hits.tolist(), column.take(pa.array(hits)).to_pylist()):
            found[key] = base + offset
        if len(found) == len(wanted):
            break
    return found
