"""Fixtures for the stores tests: small embedding stores written through the real writer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from thresher.fingerprint import fingerprint_of, hash_bytes
from thresher.stores.embedding_store import (
    EmbeddingStore,
    StoreDtype,
    finalize_embedding_store,
    open_embedding_store,
    write_embedding_shard,
)

MakeStore = Callable[..., EmbeddingStore]


def write_store(
    directory: Path,
    vectors: np.ndarray,
    *,
    ids: Sequence[Any] | None = None,
    n_shards: int = 3,
    dtype: StoreDtype = "float32",
    normalized: bool = False,
) -> EmbeddingStore:
    """Write ``vectors`` (n, dim) as an embedding store of ``n_shards`` unequal shards and open it.

    ``ids`` default to ``0 .. n-1``; the fingerprint hashes the vectors and ids,
    so two stores with the same content share it.
    """
    vectors = np.asarray(vectors)
    n_rows, dim = vectors.shape
    ids = list(range(n_rows)) if ids is None else list(ids)
    directory.mkdir(parents=True, exist_ok=True)
    # unequal shard sizes, so blocks and shard boundaries do not line up
    if n_shards > 1 and n_rows > 2 * n_shards:
        inner = np.sort(np.random.default_rng(n_rows).choice(np.arange(1, n_rows), size=n_shards - 1, replace=False))
        cuts = np.concatenate([[0], inner, [n_rows]])
    else:
        cuts = np.unique(np.linspace(0, n_rows, n_shards + 1).astype(int))
    shards = [
        write_embedding_shard(directory, i, ids[lo:hi], vectors[lo:hi], dtype=dtype)
        for i, (lo, hi) in enumerate(zip(cuts[:-1], cuts[1:]))
        if hi > lo
    ]
    content = hash_bytes(np.ascontiguousarray(vectors).tobytes() + repr(ids).encode("utf-8"))
    fingerprint = fingerprint_of("embeddings", 1, {"content": content, "dtype": dtype})
    finalize_embedding_store(
        directory,
        shards=shards,
        fingerprint=fingerprint,
        dim=dim,
        dtype=dtype,
        encoder={"model": "synthetic", "pooling": None, "layer": None, "normalize": normalized},
        pool={"source": "synthetic", "n_rows": n_rows},
    )
    return open_embedding_store(directory)


@pytest.fixture
def make_store(tmp_path: Path) -> MakeStore:
    """A function ``make_store(vectors, *, name="store", ids=None, n_shards=3, dtype="float32", normalized=False)``."""

    def make(vectors: np.ndarray, *, name: str = "store", **kwargs: Any) -> EmbeddingStore:
        return write_store(tmp_path / name, vectors, **kwargs)

    return make
