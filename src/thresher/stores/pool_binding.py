"""An embedding store read beside a pool it did not record: a run over a store made elsewhere.

thresher takes pool rows by store position: a selector picks positions, and
the curated shards join the pool's columns to them by row offset (see
:func:`thresher.stores.curated.write_curated`; labels and sources are read the
same way). A store can therefore stand for a pool only when it lists the
pool's ids in the pool's order. :func:`check_same_ids` checks exactly that,
streaming both id columns (bounded memory); on a mismatch it names an id that
is in one and not the other (by sorted 64-bit hashes of the ids, 8 bytes a
row), or the first row where the two orders part. Nothing is ever joined
silently.

:class:`PoolBoundStore` is the store seen through the pool: the stages
(``select_rds``, ``select_semdedup``, ...) read the pool's rows from it
(``reopen_pool``) instead of the pool the store's manifest records, which an
imported store does not have.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import xxhash

from thresher.exceptions import InputDataError
from thresher.stores.embedding_store import EmbeddingStore
from thresher.stores.ids import ids_to_numpy


class PoolBoundStore(EmbeddingStore):
    """An embedding store whose rows are ``pool``'s rows, position by position (checked by :func:`bind_pool`).

    Its manifest is the store's with the pool's description in place of the
    one it recorded, and ``text`` in place of its own when given. Its
    ``fingerprint`` stays the store's own: it identifies the vectors, which is
    what an index built over it, or a task reopening the store by its path,
    checks. (A run fingerprints the pair, see :mod:`thresher.pipeline.steps.store`.)
    """

    def __init__(self, store: EmbeddingStore, pool: Any, text: dict[str, Any] | None = None):
        manifest = {**store.manifest, "pool": pool.describe()}
        if text is not None:
            manifest["text"] = text
        super().__init__(store.path, manifest)
        self.pool = pool

    def __repr__(self) -> str:
        return f"PoolBoundStore({str(self.path)!r}, n_rows={self.n_rows}, dim={self.dim}, pool={self.pool!r})"

    def reopen_pool(self) -> Any:
        """The pool this store is read beside, refused if any of its files changed since it was opened."""
        from thresher.stores.pool import check_pool_files

        check_pool_files(self.pool, f"the run over the store {self.path}")
        return self.pool


def bind_pool(store: EmbeddingStore, pool: Any, *, text: dict[str, Any] | None = None, check_ids: bool = True) -> PoolBoundStore:
    """``store`` read beside ``pool``, after checking (unless ``check_ids`` is False) that it lists the pool's ids in order."""
    if check_ids:
        check_same_ids(store, pool)
    return PoolBoundStore(store, pool, text)


def check_same_ids(store: EmbeddingStore, pool: Any) -> None:
    """Refuse unless ``store`` lists exactly ``pool``'s ids, in the pool's order.

    Streams both id columns side by side (a partition and a shard at a time)
    and compares the ids themselves. Only on a mismatch are they hashed (8
    bytes a row, both sides) to name an example.

    Raises
    ------
    InputDataError
        Naming the store, both row counts, and an id in one and not the other
        (with how many such ids), or the first row where the orders differ.
    """
    first = None if store.n_rows != pool.n_rows else _first_difference(_pool_ids(pool), _store_ids(store))
    if store.n_rows == pool.n_rows and first is None:
        return
    pool_hashes, store_hashes = _sorted_hashes(_pool_ids(pool)), _sorted_hashes(_store_ids(store))
    only_pool = np.setdiff1d(pool_hashes, store_hashes, assume_unique=False)
    only_store = np.setdiff1d(store_hashes, pool_hashes, assume_unique=False)
    counts = f"the pool has {pool.n_rows:,} rows, the store {store.n_rows:,}"
    if len(only_pool) or len(only_store):
        parts = []
        if len(only_pool):
            parts.append(f"id {_first_with_hash(_pool_ids(pool), only_pool)!r} is in the pool but not in the store "
                         f"({len(only_pool):,} such id{'s' if len(only_pool) > 1 else ''})")
        if len(only_store):
            parts.append(f"id {_first_with_hash(_store_ids(store), only_store)!r} is in the store but not in the pool "
                         f"({len(only_store):,} such id{'s' if len(only_store) > 1 else ''})")
        kinds = _id_kinds(pool, store)
        raise InputDataError(
            f"The pool's ids are not the ids of the embedding store {store.path}: {counts}; {'; '.join(parts)}{kinds}. "
            "A store stands for a pool only when it holds the pool's ids: embed this pool, or import the store with the pool's ids."
        )
    if first is None:  # the same set of ids, but one side repeats some
        raise InputDataError(f"The pool and the embedding store {store.path} hold the same ids but not as many rows: {counts}; "
                             "an id is repeated. Each id must appear once.")
    position, pool_id, store_id = first
    raise InputDataError(
        f"The embedding store {store.path} holds the pool's {pool.n_rows:,} ids in another order: row {position:,} is id {pool_id!r} "
        f"in the pool and {store_id!r} in the store. thresher takes pool rows by store position, so the store must list the ids "
        "in the pool's order; write (or import) it in that order."
    )


def _pool_ids(pool: Any) -> Iterator[np.ndarray]:
    for i in range(pool.n_partitions):
        yield ids_to_numpy(pool.read_partition(i, columns=[]).column("id"))


def _store_ids(store: EmbeddingStore) -> Iterator[np.ndarray]:
    for i in range(store.n_shards):
        yield store.shard_ids(i)


def _first_difference(a: Iterable[np.ndarray], b: Iterable[np.ndarray]) -> tuple[int, Any, Any] | None:
    """(row, a's id, b's id) of the first row where two streams of id chunks differ (None: they are equal; same length assumed)."""
    a_chunks, b_chunks = iter(a), iter(b)
    a_buf = b_buf = np.empty(0, dtype=object)
    position = 0
    while True:
        while len(a_buf) == 0:
            a_buf = next(a_chunks, None)
            if a_buf is None:
                break
        while len(b_buf) == 0:
            b_buf = next(b_chunks, None)
            if b_buf is None:
                break
        if a_buf is None or b_buf is None:
            return None
        n = min(len(a_buf), len(b_buf))
        differ = _differ(a_buf[:n], b_buf[:n])
        if differ.any():
            j = int(np.argmax(differ))
            return position + j, _plain(a_buf[j]), _plain(b_buf[j])
        position += n
        a_buf, b_buf = a_buf[n:], b_buf[n:]


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _differ(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if (a.dtype == object) != (b.dtype == object):  # integer ids on one side, strings on the other: never equal
        return np.ones(len(a), dtype=bool)
    return np.asarray(a != b, dtype=bool)


def _hash(ids: np.ndarray) -> np.ndarray:
    """64-bit keys of ids: an integer id is its own key, a string id its xxh3-64 hash.

    Whether the ids match is decided by comparing the ids themselves (:func:`_first_difference`);
    the keys only find an example to name, so a collision can at worst name another example.
    """
    if ids.dtype != object:
        return ids.astype(np.int64, copy=False).view(np.uint64)
    return np.fromiter((xxhash.xxh3_64_intdigest(str(v).encode("utf-8"), seed=1) for v in ids), dtype=np.uint64, count=len(ids))


def _sorted_hashes(chunks: Iterable[np.ndarray]) -> np.ndarray:
    parts = [_hash(c) for c in chunks]
    return np.sort(np.concatenate(parts)) if parts else np.empty(0, dtype=np.uint64)


def _first_with_hash(chunks: Iterable[np.ndarray], wanted: np.ndarray) -> Any:
    """The first id, in stream order, whose key is in ``wanted``."""
    for ids in chunks:
        hit = np.flatnonzero(np.isin(_hash(ids), wanted))
        if len(hit):
            return _plain(ids[hit[0]])
    return None


def _id_kinds(pool: Any, store: EmbeddingStore) -> str:
    """A hint when one side has integer ids and the other strings (17 and '17' are different ids)."""
    import pyarrow as pa

    pool_int = pa.types.is_integer(pool.id_type)
    store_type = store.shard_table(0).schema.field("id").type if store.n_shards else None
    if store_type is None or pool_int == pa.types.is_integer(store_type):
        return ""
    return (f" (the pool's ids are {'integers' if pool_int else 'strings'} and the store's "
            f"{'integers' if not pool_int else 'strings'}: 17 and '17' are different ids)")
