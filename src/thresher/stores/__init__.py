"""On-disk formats: embedding store, FAISS index with its id map, curated shards, manifests.

Stores know files, not algorithms.
"""

from thresher.stores.embedding_store import (
    EmbeddingBlock,
    EmbeddingStore,
    finalize_embedding_store,
    open_embedding_store,
    write_embedding_shard,
)
from thresher.stores.manifest import ShardInfo, read_manifest, verify_shards

__all__ = [
    "EmbeddingBlock",
    "EmbeddingStore",
    "ShardInfo",
    "finalize_embedding_store",
    "open_embedding_store",
    "read_manifest",
    "verify_shards",
    "write_embedding_shard",
]
