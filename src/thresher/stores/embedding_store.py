"""The embedding store: Arrow IPC shards of (id, embedding) plus a manifest.

Layout of a store directory::

    part-00000.arrow   id, embedding (fixed-size list of float32 or float16)
    part-00001.arrow
    ...
    manifest.json      model, pooling, layer, dim, dtype, normalised, rows per
                       shard and their checksums, input fingerprint, versions

Shards are memory-mapped; a shard written as one record batch gives a numpy
view of its vectors without any copy. Streaming stages read it in blocks, so
a store far larger than memory is never loaded whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from thresher.exceptions import ArtifactError, InputDataError, ParameterError
from thresher.stores.arrow_io import read_stream_shard, write_stream_shard
from thresher.stores.ids import IdPositions, ids_to_numpy  # noqa: F401  (ids_to_numpy: re-exported from here too)
from thresher.stores.manifest import ShardInfo, check_artifact_files, read_manifest, verify_shards, write_manifest

StoreDtype = Literal["float32", "float16"]
_NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16}
_ARROW_DTYPES = {"float32": pa.float32(), "float16": pa.float16()}


def shard_name(index: int) -> str:
    return f"part-{index:05d}.arrow"


def embedding_schema(id_type: pa.DataType, dim: int, dtype: StoreDtype) -> pa.Schema:
    return pa.schema([pa.field("id", id_type, nullable=False), pa.field("embedding", pa.list_(_ARROW_DTYPES[dtype], dim))])


def write_embedding_shard(
    directory: str | Path,
    index: int,
    ids: pa.Array | Sequence[Any],
    vectors: np.ndarray,
    *,
    dtype: StoreDtype = "float32",
    extra_columns: dict[str, Any] | None = None,
) -> ShardInfo:
    """Write one shard of ``vectors`` (n, dim) with their pool ``ids``, atomically.

    ``extra_columns`` (name -> array of length n) are stored beside them, such
    as the embed job's ``text_hash`` (xxh64 of each embedded text), which
    exact-duplicate removal uses.

    Non-finite vectors are refused with the id of the first bad row: they would
    poison every similarity computed from the store.
    """
    if dtype not in _NUMPY_DTYPES:
        raise ParameterError(f"The 'dtype' parameter of the embedding store must be 'float32' or 'float16'; got {dtype!r}.")
    vectors = np.asarray(vectors)
    ids = ids if isinstance(ids, pa.Array) else pa.array(list(ids))
    if vectors.ndim != 2 or len(ids) != vectors.shape[0]:
        raise ValueError(f"vectors must be (n, dim) with n = len(ids) = {len(ids)}; got shape {vectors.shape}")
    stored = vectors.astype(_NUMPY_DTYPES[dtype], copy=False)
    finite = np.isfinite(stored).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise InputDataError(f"The embedding of row id={ids[bad].as_py()!r} is not finite (NaN or inf) in {dtype}.")
    dim = stored.shape[1]
    flat = pa.array(np.ascontiguousarray(stored).reshape(-1), type=_ARROW_DTYPES[dtype])
    column = pa.FixedSizeListArray.from_arrays(flat, dim)
    table = pa.Table.from_arrays([ids, column], schema=embedding_schema(ids.type, dim, dtype))
    for name, values in (extra_columns or {}).items():
        table = table.append_column(name, pa.array(values))
    path = Path(directory) / shard_name(index)
    write_stream_shard(path, table)
    return ShardInfo.of(path, len(ids))


def finalize_embedding_store(
    directory: str | Path,
    *,
    shards: Sequence[ShardInfo],
    fingerprint: str,
    dim: int,
    dtype: StoreDtype,
    encoder: dict[str, Any],
    pool: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the store's manifest (the last step: the store is complete after this)."""
    body = {
        "dim": int(dim),
        "dtype": dtype,
        "model": encoder.get("model"),
        "pooling": encoder.get("pooling"),
        "layer": encoder.get("layer"),
        "normalized": bool(encoder.get("normalize")),
        "encoder": encoder,
        "pool": pool,
        **(extra or {}),
    }
    return write_manifest(directory, "embeddings", fingerprint=fingerprint, body=body, shards=list(shards))


@dataclass(frozen=True)
class EmbeddingBlock:
    """A contiguous block of a store: rows ``start`` … ``start + len(ids)`` in store order."""

    start: int
    ids: np.ndarray
    vectors: np.ndarray

    @property
    def positions(self) -> np.ndarray:
        return np.arange(self.start, self.start + len(self.ids), dtype=np.int64)


class EmbeddingStore:
    """A finished embedding store, opened read-only and memory-mapped.

    Use :func:`open_embedding_store` to open one. Positions are row offsets in
    store order (shard by shard); ids are the pool's stable ids.
    """

    def __init__(self, path: str | Path, manifest: dict[str, Any]):
        self.path = Path(path)
        self.manifest = manifest
        check_artifact_files(self.path, manifest)  # no shard name may lead outside the store
        self.shards = [ShardInfo(**s) for s in manifest["shards"]]
        self.dim: int = int(manifest["dim"])
        self.dtype: StoreDtype = manifest["dtype"]
        self.normalized: bool = bool(manifest["normalized"])
        self.fingerprint: str = manifest["fingerprint"]
        self.shard_offsets = np.concatenate([[0], np.cumsum([s.rows for s in self.shards])]).astype(np.int64)

    def __repr__(self) -> str:
        return f"EmbeddingStore({str(self.path)!r}, n_rows={self.n_rows}, dim={self.dim}, dtype={self.dtype}, model={self.model!r}, pooling={self.pooling!r})"

    def __len__(self) -> int:
        return self.n_rows

    def __fspath__(self) -> str:
        # a store is its directory: the output guard and anything else that takes a store's path take the open store too
        return str(self.path)

    @property
    def n_rows(self) -> int:
        return int(self.shard_offsets[-1])

    @property
    def n_shards(self) -> int:
        return len(self.shards)

    @property
    def model(self) -> str | None:
        return self.manifest.get("model")

    @property
    def pooling(self) -> str | None:
        return self.manifest.get("pooling")

    @property
    def layer(self) -> int | None:
        return self.manifest.get("layer")

    def reopen_pool(self) -> Any:
        """The pool this store was embedded from, refused if any of its files changed since (see :func:`thresher.stores.pool.check_pool_files`).

        Every stage that reads pool rows beside the store's vectors (curated
        shards join the pool's columns, labels, texts) opens the pool through
        this, so rows that were never embedded are never written or scored.
        """
        from thresher.stores.pool import check_pool_files, reopen_pool

        if not isinstance(self.manifest.get("pool"), dict):
            raise ArtifactError(f"{self.path / 'manifest.json'} has no pool description; re-embed the pool.")
        pool = reopen_pool(self.manifest["pool"])
        check_pool_files(pool, str(self.path))
        return pool

    def shard_table(self, i: int) -> pa.Table:
        table = read_stream_shard(self.path / self.shards[i].file)
        if table.num_rows != self.shards[i].rows:
            raise ArtifactError(f"Shard {self.path / self.shards[i].file} has {table.num_rows} rows; the manifest says {self.shards[i].rows}.")
        return table

    def shard_ids(self, i: int) -> np.ndarray:
        return ids_to_numpy(self.shard_table(i).column("id"))

    def shard_embeddings(self, i: int) -> np.ndarray:
        """Vectors of shard ``i`` in the stored dtype, shape (rows, dim); zero-copy when the shard is one batch."""
        column = self.shard_table(i).column("embedding")
        chunks = [_fixed_list_view(c, self.dim) for c in column.chunks]
        if not chunks:
            return np.empty((0, self.dim), dtype=_NUMPY_DTYPES[self.dtype])
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)

    def ids(self) -> np.ndarray:
        """All pool ids in store order (int64 or object array of str). Ids only, never the vectors."""
        parts = [self.shard_ids(i) for i in range(self.n_shards)]
        if not parts:
            return np.empty(0, dtype=object)
        return np.concatenate(parts)

    @cached_property
    def _id_positions(self) -> IdPositions:
        # built by streaming the id column shard by shard: numpy keys and positions (12 bytes a row), never a dict of all ids
        return IdPositions.of_store(self, f"the embedding store {self.path}")

    def positions_of(self, ids: Sequence[Any] | np.ndarray | pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Store positions of the given pool ids, int64 in the order given; an unknown id raises, naming it."""
        return self._id_positions.positions_of(ids)

    def iter_blocks(self, block_rows: int | None = None, *, dtype: Any = np.float32) -> Iterator[EmbeddingBlock]:
        """Stream the store in blocks of at most ``block_rows`` rows (default: the runtime setting), as ``dtype``.

        Blocks never span shards, so each is a (possibly converted) view of one
        memory-mapped shard; memory stays bounded by the block size.
        """
        if block_rows is None:
            from thresher.config import runtime_config

            block_rows = runtime_config().block_rows
        if block_rows < 1:
            raise ParameterError(f"The 'block_rows' parameter of EmbeddingStore.iter_blocks must be >= 1; got {block_rows}.")
        for i in range(self.n_shards):
            yield from self.iter_shard_blocks(i, block_rows, dtype=dtype)

    def iter_shard_blocks(self, shard: int, block_rows: int, *, dtype: Any = np.float32) -> Iterator[EmbeddingBlock]:
        """Stream one shard in blocks (a job's partition); positions stay global store positions."""
        vectors = self.shard_embeddings(shard)
        ids = self.shard_ids(shard)
        base = int(self.shard_offsets[shard])
        for lo in range(0, len(ids), block_rows):
            hi = min(lo + block_rows, len(ids))
            block = np.asarray(vectors[lo:hi], dtype=dtype)
            self._check_finite(block, np.arange(base + lo, base + hi))
            yield EmbeddingBlock(base + lo, ids[lo:hi], block)

    def _check_finite(self, vectors: np.ndarray, positions: np.ndarray) -> None:
        """Refuse NaN or inf read back from a shard, naming the row: the writer refuses them, so the shard was changed or written by another tool."""
        finite = np.isfinite(vectors).all(axis=1)
        if finite.all():
            return
        position = int(positions[np.flatnonzero(~finite)[0]])
        shard = int(np.searchsorted(self.shard_offsets, position, side="right") - 1)
        row_id = self.shard_ids(shard)[position - int(self.shard_offsets[shard])]
        raise ArtifactError(f"The stored embedding of row id={row_id!r} (position {position}) in {self.path / self.shards[shard].file} "
                            "is not finite (NaN or inf): the store is corrupt; re-embed the pool.")

    def shard_column(self, shard: int, name: str) -> np.ndarray:
        """Another column of a shard as numpy (e.g. ``text_hash``); names the shard if it is absent."""
        table = self.shard_table(shard)
        if name not in table.column_names:
            raise ArtifactError(f"Shard {self.path / self.shards[shard].file} has no column {name!r} (it has {table.column_names}).")
        return table.column(name).to_numpy()

    def take(self, positions: Sequence[int] | np.ndarray, *, dtype: Any = np.float32) -> np.ndarray:
        """Vectors at the given store positions, in the given order (each call maps the shards it reads; see :meth:`reader`)."""
        return self._take(positions, self.shard_embeddings, dtype=dtype)

    @contextmanager
    def reader(self) -> Iterator[Callable[..., np.ndarray]]:
        """A ``take`` that maps each shard once and keeps it mapped until the block ends: for many small reads.

        SemDeDup's 1,000 per-cluster reads of a 200k-row store took 5.2 s through :meth:`take`,
        most of it mapping and unmapping the shards, and 0.6 s through a reader (measured, issue 19).
        The mapped pages count in the process's RSS while the block lasts, hence a block, not a cache.
        """
        views: dict[int, np.ndarray] = {}

        def view(i: int) -> np.ndarray:
            if i not in views:
                views[i] = self.shard_embeddings(i)
            return views[i]

        try:
            yield lambda positions, *, dtype=np.float32: self._take(positions, view, dtype=dtype)
        finally:
            views.clear()

    def _take(self, positions: Sequence[int] | np.ndarray, shard_vectors: Callable[[int], np.ndarray], *, dtype: Any) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size and (positions.min() < 0 or positions.max() >= self.n_rows):
            raise ParameterError(f"positions must lie in [0, {self.n_rows}); got values from {positions.min()} to {positions.max()}.")
        out = np.empty((len(positions), self.dim), dtype=dtype)
        shard_of = np.searchsorted(self.shard_offsets, positions, side="right") - 1
        for i in np.unique(shard_of):
            sel = np.flatnonzero(shard_of == i)
            out[sel] = shard_vectors(int(i))[positions[sel] - self.shard_offsets[i]]
        self._check_finite(out, positions)
        return out

    def to_numpy(self, *, dtype: Any = np.float32) -> np.ndarray:
        """The whole store as one (n_rows, dim) array: for small stores and notebooks only."""
        out = np.empty((self.n_rows, self.dim), dtype=dtype)
        for block in self.iter_blocks():
            out[block.start : block.start + len(block.ids)] = block.vectors
        return out


def open_embedding_store(path: str | Path, *, verify: bool = False) -> EmbeddingStore:
    """Open a finished embedding store; ``verify`` re-checks every shard's checksum first.

    ``path`` may be an open store (e.g. one a run reads beside its pool,
    :class:`thresher.stores.pool_binding.PoolBoundStore`): it is returned as it is.
    """
    if isinstance(path, EmbeddingStore):
        if verify:
            verify_shards(path.path, read_manifest(path.path, "embeddings"))
        return path
    manifest = read_manifest(path, "embeddings")
    if verify:
        verify_shards(path, manifest)
    return EmbeddingStore(path, manifest)


def _fixed_list_view(chunk: pa.FixedSizeListArray, dim: int) -> np.ndarray:
    if chunk.null_count:
        raise ArtifactError("The embedding column holds nulls; the store is corrupt.")
    values = chunk.values.slice(chunk.offset * dim, len(chunk) * dim)
    return values.to_numpy(zero_copy_only=True).reshape(len(chunk), dim)


