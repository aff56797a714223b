"""Embeddings: encoders (sentence-transformers folders, any transformers model's hidden states) and pooling modes.

Pure computation on texts and tensors: nothing here knows of Dask or files
other than the model folder it loads.
"""

from thresher.embeddings.encoders import (
    DEFAULT_MODEL_NAME,
    EncodeResult,
    Encoder,
    EncoderSpec,
    cached_encoder,
    clear_encoder_cache,
    default_model_path,
    load_encoder,
    plan_batches,
)
from thresher.embeddings.pooling import POOLING_MODES, get_pooling, pool, register_pooling

__all__ = [
    "DEFAULT_MODEL_NAME",
    "POOLING_MODES",
    "EncodeResult",
    "Encoder",
    "EncoderSpec",
    "cached_encoder",
    "clear_encoder_cache",
    "default_model_path",
    "get_pooling",
    "load_encoder",
    "plan_batches",
    "pool",
    "register_pooling",
]
