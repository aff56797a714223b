"""Pool ids <-> store positions, in one place.

Every artefact refers to rows by their pool ``id`` (an int64 or a string);
inside a computation rows are ``positions`` (offsets into an embedding store
or index). These helpers convert between the two:

- :func:`ids_to_numpy` — an Arrow id column as numpy (int64, or an object array of str);
- :func:`ids_at` — the ids at some positions of an id column (``-1`` positions give a missing id);
- :func:`store_ids_at` — the ids at some positions of a sharded store, reading one shard's ids at a time;
- :func:`id_keys` — sort keys of ids (integer ids themselves, string ids' 64-bit xxhash);
- :class:`IdPositions` — the full id -> position map of a store, for many look-ups, as numpy arrays (12 bytes a row);
- :func:`first_duplicate` — the first repeated id among many, from their keys (bounded memory);
- :func:`find_positions` — the positions of a few ids, streaming the store's id column (no full map).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import xxhash

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
    """Pool ids at store ``positions`` (any order), reading one shard's ids at a time.

    A store with ``shard_table`` gives only the wanted rows of its memory-mapped id
    column (no Python object for the others); otherwise ``shard_ids`` gives a shard's ids.
    """
    positions = np.asarray(positions, dtype=np.int64)
    shard_of = np.searchsorted(store.shard_offsets, positions, side="right") - 1
    out = None
    for i in np.unique(shard_of):
        sel = np.flatnonzero(shard_of == i)
        local = positions[sel] - store.shard_offsets[i]
        if hasattr(store, "shard_table"):
            ids = ids_to_numpy(store.shard_table(int(i)).column("id").take(pa.array(local, type=pa.int64())))
        else:
            ids = store.shard_ids(int(i))[local]
        if out is None:
            out = np.empty(len(positions), dtype=ids.dtype)
        out[sel] = ids
    return out if out is not None else store.shard_ids(0)[:0]


def hash_text_ids(ids: Sequence[str] | np.ndarray) -> np.ndarray:
    """The 64-bit xxhash (xxh64) of each string id's UTF-8 bytes, uint64 of shape (n,)."""
    return np.fromiter((xxhash.xxh64_intdigest(str(key).encode("utf-8")) for key in ids), dtype=np.uint64, count=len(ids))


def id_keys(ids: np.ndarray, *, hash_ids: Callable[[np.ndarray], np.ndarray] = hash_text_ids) -> np.ndarray:
    """Sort keys of ids: integer ids are their own key (int64, exact); string ids are hashed (uint64, may collide).

    A collision only ever makes two different string ids share a key: every
    user of the keys (:class:`IdPositions`, :func:`first_duplicate`) compares
    the id strings behind equal keys before believing them.
    """
    ids = np.asarray(ids)
    if ids.dtype.kind in "iu":
        return ids.astype(np.int64, copy=False)
    return np.asarray(hash_ids(ids), dtype=np.uint64)


class IdPositions:
    """The id -> position map of all rows, as numpy arrays: sorted id keys and the positions they came from.

    Memory is 8 bytes a key plus 4 (int32, fewer than 2^31 rows) or 8 bytes a
    position: 12 bytes a row, against ~100 for a Python dict of string ids,
    and no N-sized Python object is kept. Integer ids are their own keys;
    string ids are keyed by their 64-bit xxhash, and every look-up compares
    the stored id strings of its matches with the ids asked for, so a hash
    collision can never return a wrong position (the equal-key run is
    searched for the right one).

    Build one from an array of ids (:class:`IdPositions` (ids, where)) or by
    streaming a store's id column shard by shard (:meth:`of_store`).

    Parameters
    ----------
    ids : ndarray of shape (n_rows,)
        The ids in position order (int64, or str objects).
    where : str
        What holds them, for error messages (e.g. "the embedding store <path>").
    hash_ids : callable, optional
        String ids -> uint64 keys (default :func:`hash_text_ids`); tests inject a colliding one.
    """

    def __init__(self, ids: np.ndarray | Sequence[Any], where: str, *, hash_ids: Callable[[np.ndarray], np.ndarray] = hash_text_ids):
        ids = np.asarray(ids) if not isinstance(ids, np.ndarray) else ids
        if ids.dtype.kind == "U":
            ids = ids.astype(object)
        self._setup(id_keys(ids, hash_ids=hash_ids), lambda positions: ids[positions], "int" if ids.dtype.kind in "iu" else "str",
                    where, hash_ids)

    @classmethod
    def of_store(cls, store: Any, where: str, *, hash_ids: Callable[[np.ndarray], np.ndarray] = hash_text_ids) -> IdPositions:
        """The map of a sharded store (``n_shards``, ``shard_ids(i)``, ``shard_offsets``), reading one shard's ids at a time."""
        keys, kind = [], None
        for i in range(store.n_shards):
            ids = store.shard_ids(i)
            kind = kind or ("int" if ids.dtype.kind in "iu" else "str")
            keys.append(id_keys(ids, hash_ids=hash_ids))
        self = cls.__new__(cls)
        all_keys = np.concatenate(keys) if keys else np.empty(0, np.int64)
        self._setup(all_keys, lambda positions: store_ids_at(store, positions), kind or "int", where, hash_ids)
        return self

    def _setup(self, keys: np.ndarray, ids_at: Callable[[np.ndarray], np.ndarray], kind: str, where: str, hash_ids: Callable) -> None:
        order = np.argsort(keys, kind="stable")  # equal keys keep position order: the first position of a repeated id wins
        self._keys = keys[order]
        self._positions = order.astype(np.int32 if len(keys) < 2**31 else np.int64)
        del order
        self._ids_at = ids_at
        self._kind = kind
        self._hash_ids = hash_ids
        self.where = where

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def nbytes(self) -> int:
        """Bytes held by the map's arrays."""
        return int(self._keys.nbytes + self._positions.nbytes)

    def positions_of(self, ids: Sequence[Any] | np.ndarray | pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Positions of the given ids, int64; an unknown id raises :class:`InputDataError`, naming it."""
        wanted = self._as_ids(ids)
        if len(wanted) == 0:
            return np.empty(0, dtype=np.int64)
        keys = id_keys(wanted, hash_ids=self._hash_ids)
        at = np.searchsorted(self._keys, keys, side="left")
        inside = at < len(self._keys)
        hit = np.zeros(len(keys), dtype=bool)
        hit[inside] = self._keys[at[inside]] == keys[inside]
        if not hit.all():
            self._unknown(wanted[int(np.flatnonzero(~hit)[0])])
        out = self._positions[at].astype(np.int64)
        if self._kind == "str":  # a hash match is only a candidate: compare the stored id strings
            wrong = np.flatnonzero(self._ids_at(out) != wanted)
            for j in wrong.tolist():
                out[j] = self._search_run(int(at[j]), keys[j], wanted[j])
        return out

    def _search_run(self, start: int, key: Any, wanted: Any) -> int:
        """The position of ``wanted`` among the rows whose key equals ``key`` (a hash collision), from index ``start``."""
        stop = int(np.searchsorted(self._keys, key, side="right"))
        candidates = self._positions[start:stop].astype(np.int64)
        match = np.flatnonzero(self._ids_at(candidates) == wanted)
        if not len(match):
            self._unknown(wanted)
        return int(candidates[match[0]])

    def _unknown(self, key: Any) -> None:
        key = key.item() if isinstance(key, np.generic) else key  # 7, not np.int64(7)
        raise InputDataError(f"id {key!r} is not in {self.where}.")

    def _as_ids(self, ids: Any) -> np.ndarray:
        """The ids asked for as an array of the map's kind (int64, or str objects); one of another kind is unknown, named."""
        if isinstance(ids, (pa.Array, pa.ChunkedArray)):
            ids = ids_to_numpy(ids)
        values = ids if isinstance(ids, np.ndarray) else np.asarray(list(ids), dtype=object)
        if self._kind == "int":
            if values.dtype.kind in "iu":
                return values.astype(np.int64, copy=False)
            if values.dtype == object:
                for key in values.tolist():
                    if not isinstance(key, (int, np.integer)) or isinstance(key, bool):
                        self._unknown(key)
                return values.astype(np.int64)
            self._unknown(values[0] if len(values) else None)
        if values.dtype.kind == "U":
            return values.astype(object)
        if values.dtype == object:
            for key in values.tolist():
                if not isinstance(key, str):
                    self._unknown(key)
            return values
        if len(values):
            self._unknown(values.tolist()[0])
        return values.astype(object)


def first_duplicate(keys: np.ndarray, ids_at: Callable[[np.ndarray], np.ndarray]) -> tuple[Any, np.ndarray] | None:
    """The first repeated id behind ``keys`` (see :func:`id_keys`) and all its positions, or None when every id is unique.

    Sorts the keys (8 bytes a row, plus the order); only the few positions whose
    keys repeat are read back through ``ids_at`` (positions -> ids) to tell a
    true repeat from a hash collision. "First" is the repeat whose second
    occurrence comes earliest.
    """
    if len(keys) < 2:
        return None
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    same = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])
    if not len(same):
        return None
    candidates = np.unique(np.concatenate([order[same], order[same + 1]])).astype(np.int64)
    del order, sorted_keys
    values = ids_at(candidates)
    best: tuple[int, Any, np.ndarray] | None = None
    groups: dict[Any, list[int]] = {}
    for position, value in zip(candidates.tolist(), values.tolist()):
        groups.setdefault(value, []).append(position)
    for value, positions in groups.items():
        if len(positions) > 1 and (best is None or positions[1] < best[0]):
            best = (positions[1], value, np.asarray(positions, dtype=np.int64))
    return None if best is None else (best[1], best[2])


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
