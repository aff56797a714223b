"""Fixtures for the encoder tests: a tiny causal LM made offline, and mixed-length texts."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory, minilm_path: str) -> Path:
    """A 2-layer GPT-2 (learned absolute positions, so left padding must not shift them), with MiniLM's tokenizer."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path, model_input_names=["input_ids", "attention_mask"])
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=512)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def mixed_texts() -> list[str]:
    """40 texts from 1 to ~700 word pieces: some far beyond MiniLM's 256-token limit, some duplicated."""
    words = (
        "the data pool holds millions of conversations about cooking travel code music and sport "
        "while a curated subset keeps only what helps the target task most efficiently"
    ).split()
    texts = []
    for i in range(40):
        n_words = [1, 3, 8, 20, 60, 150, 300, 500][i % 8] + i
        texts.append(" ".join(words[(i + j) % len(words)] for j in range(n_words)))
    texts[5] = "Hi!"
    texts[17] = "Hi!"
    texts[23] = "a"
    return texts


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Run these tests on one torch thread: with 2 cores shared by other processes, OpenMP barriers
    waiting on a descheduled thread make each op ~20x slower; results do not depend on it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
