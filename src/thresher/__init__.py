"""thresher: curate training data at scale.

Embed a data pool, index it in FAISS, select with RDS+, active-learning
acquisition, SMOTE, InfoBatch or batch mining, and write curated Arrow shards.

The public entry points are imported lazily, so ``import thresher`` stays
cheap (no torch, no Dask) until one is used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "embed": "thresher.pipeline.embed",
    "import_embeddings": "thresher.stores.embedding_import",
    "build_index": "thresher.stores.index",
    "open_index": "thresher.stores.index",
    "open_embedding_store": "thresher.stores.embedding_store",
    "open_curated": "thresher.stores.curated",
    "write_curated": "thresher.stores.curated",
    "open_pool": "thresher.stores.pool",
    "EncoderSpec": "thresher.embeddings.encoders",
    "dask_client": "thresher.jobs.cluster",
    "explore": "thresher.explore",  # the subpackage, callable: thresher.explore(run, out) writes the page
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        return module if module.__name__ == f"thresher.{name}" else getattr(module, name)
    raise AttributeError(f"module 'thresher' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
