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
from thresher.stores.curated import CuratedShards, open_curated, write_curated
from thresher.stores.index import FaissIndex, build_index, exact_search, open_index
from thresher.stores.manifest import ShardInfo, read_manifest, verify_shards
from thresher.stores.pool import Pool, PoolPartition, open_pool, reopen_pool

__all__ = [
    "CuratedShards",
    "EmbeddingBlock",
    "EmbeddingStore",
    "FaissIndex",
    "Pool",
    "PoolPartition",
    "ShardInfo",
    "build_index",
    "exact_search",
    "finalize_embedding_store",
    "open_curated",
    "open_embedding_store",
    "open_index",
    "open_pool",
    "read_manifest",
    "reopen_pool",
    "verify_shards",
    "write_curated",
    "write_embedding_shard",
]
