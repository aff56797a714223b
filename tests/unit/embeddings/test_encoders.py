"""Encoders against sentence-transformers and a direct numpy pooling of a model's hidden states."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from thresher.embeddings.encoders import (
    DEFAULT_MODEL_NAME,
    EncoderSpec,
    PrepackedLinear,
    _onednn_linear_works,
    cached_encoder,
    clear_encoder_cache,
    load_encoder,
    plan_batches,
)
from thresher.exceptions import InputDataError, ParameterError

MINILM_MAX_LENGTH = 256


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def st_model(minilm_path: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(minilm_path, device="cpu")


@pytest.fixture(scope="module")
def minilm_encoder():
    return cached_encoder(EncoderSpec(device="cpu"))


# -- sentence-transformers backend ---------------------------------------------------------------


def test_default_encoder_matches_sentence_transformers(st_model, minilm_encoder, mixed_texts) -> None:
    want = st_model.encode(mixed_texts, normalize_embeddings=True)
    got = minilm_encoder.encode(mixed_texts)
    assert minilm_encoder.backend == "sentence-transformers" and minilm_encoder.dim == 384
    assert minilm_encoder.pooling == "sentence-transformers:mean"
    assert got.vectors.dtype == np.float32 and got.vectors.shape == (len(mixed_texts), 384)
    assert cosines(got.vectors, want).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(got.vectors, axis=1), 1.0, rtol=1e-5)
    lengths = np.array([len(st_model.tokenizer(t)["input_ids"]) for t in mixed_texts])
    assert 0 < got.n_truncated == int((lengths > MINILM_MAX_LENGTH).sum()) < len(mixed_texts)
    assert got.n_tokens == int(np.minimum(lengths, MINILM_MAX_LENGTH).sum())


def test_vectors_do_not_depend_on_the_batch_budget_nor_chunking(minilm_encoder, mixed_texts, monkeypatch) -> None:
    small = load_encoder(EncoderSpec(device="cpu", batch_tokens=40))  # most texts alone, long ones over budget
    monkeypatch.setattr(small, "chunk_texts", 7)
    got, want = small.encode(mixed_texts), minilm_encoder.encode(mixed_texts)
    assert cosines(got.vectors, want.vectors).min() >= 1 - 1e-6
    assert (got.n_truncated, got.n_tokens) == (want.n_truncated, want.n_tokens)


def test_max_length_truncates_like_sentence_transformers(st_model, mixed_texts) -> None:
    encoder = load_encoder(EncoderSpec(device="cpu", max_length=32))
    got = encoder.encode(mixed_texts)
    st_model.max_seq_length = 32
    try:
        want = st_model.encode(mixed_texts)
    finally:
        st_model.max_seq_length = MINILM_MAX_LENGTH
    assert cosines(got.vectors, want).min() >= 0.9999
    lengths = np.array([len(st_model.tokenizer(t)["input_ids"]) for t in mixed_texts])
    assert got.n_truncated == int((lengths > 32).sum()) > 20
    assert got.n_tokens == int(np.minimum(lengths, 32).sum())


def test_explicit_pooling_on_a_sentence_transformers_folder(st_model, mixed_texts) -> None:
    mean = load_encoder(EncoderSpec(device="cpu", pooling="mean"))
    assert (mean.backend, mean.pooling, mean.max_length) == ("transformers", "mean", MINILM_MAX_LENGTH)
    assert cosines(mean.encode(mixed_texts).vectors, st_model.encode(mixed_texts)).min() >= 0.9999

    cls = load_encoder(EncoderSpec(device="cpu", pooling="cls", normalize=False))
    tokens = st_model.encode(mixed_texts[:8], output_value="token_embeddings")
    want = np.stack([t[0].numpy() for t in tokens])
    np.testing.assert_allclose(cls.encode(mixed_texts[:8]).vectors, want, rtol=1e-4, atol=2e-5)


def test_left_padding_gives_the_same_vectors(minilm_encoder, mixed_texts, monkeypatch) -> None:
    left = load_encoder(EncoderSpec(device="cpu", padding_side="left"))
    monkeypatch.setattr(left, "padding_tolerance", 1.0)  # batches mixing lengths: real left padding
    assert left.padding_side == "left"
    got, want = left.encode(mixed_texts).vectors, minilm_encoder.encode(mixed_texts).vectors
    assert cosines(got, want).min() >= 0.9999


def test_order_is_kept_and_duplicates_agree(minilm_encoder, mixed_texts) -> None:
    forward = minilm_encoder.encode(mixed_texts).vectors
    backward = minilm_encoder.encode(mixed_texts[::-1]).vectors[::-1]
    assert cosines(forward, backward).min() >= 1 - 1e-6
    assert cosines(forward[5:6], forward[17:18])[0] >= 1 - 1e-6  # the two "Hi!"


def test_empty_input_and_concurrent_calls(minilm_encoder, mixed_texts) -> None:
    empty = minilm_encoder.encode([])
    assert empty.vectors.shape == (0, 384) and (empty.n_truncated, empty.n_tokens) == (0, 0)
    want = minilm_encoder.encode(mixed_texts).vectors
    results: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: results.append(minilm_encoder.encode(mixed_texts).vectors)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and all(cosines(r, want).min() >= 1 - 1e-6 for r in results)


# -- transformers backend on a causal LM ---------------------------------------------------------


def load_reference(folder: Path):
    """A model folder loaded plainly (default kernels), with its tokenizer."""
    from transformers import AutoModel, AutoTokenizer

    return AutoModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def llama_reference(tiny_llama_dir: Path):
    return load_reference(tiny_llama_dir)


def reference_outputs(reference, text: str):
    model, tokenizer = reference
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.inference_mode():
        return model(input_ids=ids, output_hidden_states=True)


SHORT = "what is the capital of france"
LONGER = [
    "the data pool holds millions of conversations about cooking travel code music and sport, " * 3,
    "a curated subset keeps only what helps the target task " * 6,
]


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_weighted_mean_on_a_causal_lm_is_independent_of_batching(kind, side, request, monkeypatch) -> None:
    folder = request.getfixturevalue(f"tiny_{kind}_dir")
    encoder = load_encoder(EncoderSpec(model=str(folder), pooling="weighted_mean", normalize=False, padding_side=side))
    assert (encoder.backend, encoder.padding_side, encoder.dim) == ("transformers", side, 32)
    monkeypatch.setattr(encoder, "padding_tolerance", 1.0)  # one batch: the short text is heavily padded
    assert len(plan_batches(np.array([8, 60, 80]), encoder.batch_tokens, padding_tolerance=1.0)) == 1
    alone = encoder.encode([SHORT]).vectors[0]
    batched = encoder.encode([SHORT, *LONGER]).vectors
    assert cosines(alone[None], batched[:1])[0] >= 1 - 1e-5
    np.testing.assert_allclose(batched[0], alone, rtol=1e-4, atol=1e-5)

    hidden = reference_outputs(load_reference(folder), SHORT).last_hidden_state[0].double().numpy()
    weights = np.arange(1, len(hidden) + 1) / (len(hidden) * (len(hidden) + 1) / 2)
    np.testing.assert_allclose(alone, weights @ hidden, rtol=1e-4, atol=1e-5)


def test_layer_choice(tiny_llama_dir, llama_reference) -> None:
    out = reference_outputs(llama_reference, SHORT)
    assert len(out.hidden_states) == 3
    torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state)  # final norm already applied
    for layer, want in [(0, out.hidden_states[0]), (1, out.hidden_states[1]), (-2, out.hidden_states[1]),
                        (-1, out.last_hidden_state), (2, out.last_hidden_state)]:
        encoder = load_encoder(EncoderSpec(model=str(tiny_llama_dir), pooling="mean", layer=layer, normalize=False))
        got = encoder.encode([SHORT]).vectors[0]
        np.testing.assert_allclose(got, want[0].mean(dim=0).numpy(), rtol=1e-4, atol=1e-5, err_msg=f"layer {layer}")
    with pytest.raises(ParameterError, match="'layer'.*got 3"):
        load_encoder(EncoderSpec(model=str(tiny_llama_dir), layer=3))


def test_default_pooling_of_the_transformers_backend_is_mean(tiny_llama_dir, llama_reference) -> None:
    encoder = load_encoder(EncoderSpec(model=str(tiny_llama_dir)))
    assert encoder.pooling == "mean" and encoder.max_length == 512
    want = reference_outputs(llama_reference, SHORT).last_hidden_state[0].mean(dim=0).numpy()
    np.testing.assert_allclose(encoder.encode([SHORT]).vectors[0], want / np.linalg.norm(want), rtol=1e-4, atol=1e-5)


# -- validation ----------------------------------------------------------------------------------


def test_unknown_pooling_is_refused() -> None:
    with pytest.raises(ParameterError, match="'no_such_pooling'"):
        EncoderSpec(pooling="no_such_pooling")


def test_missing_local_model_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ParameterError, match="no-such-model"):
        load_encoder(EncoderSpec(model=str(missing)))


def test_uncached_hub_name_fails_fast_offline() -> None:
    start = time.perf_counter()
    with pytest.raises(ParameterError, match="thresher-tests/no-such-model"):
        load_encoder(EncoderSpec(model="thresher-tests/no-such-model"))
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize(
    ("field", "value"),
    [("backend", "onnx"), ("batch_size", 0), ("batch_tokens", -5), ("max_length", 0), ("layer", 1.5),
     ("dtype", "int8"), ("padding_side", "middle"), ("device", "not-a-device"), ("normalize", "yes")],
)
def test_bad_settings_are_refused(field: str, value) -> None:
    with pytest.raises(ParameterError, match=f"'{field}'"):
        EncoderSpec(**{field: value})


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_device_is_refused() -> None:
    with pytest.raises(ParameterError, match=r"device 'cuda' is not available on this machine \(torch sees no CUDA device\)"):
        load_encoder(EncoderSpec(device="cuda"))


def test_max_length_must_leave_room_for_text(tiny_llama_dir) -> None:
    with pytest.raises(ParameterError, match="'max_length'.*got 2"):
        load_encoder(EncoderSpec(model=str(tiny_llama_dir), max_length=2))  # [CLS] and [SEP] fill it
    with pytest.raises(ParameterError, match="'max_length'.*got 513"):
        load_encoder(EncoderSpec(model=str(tiny_llama_dir), max_length=513))


def test_layer_without_pooling_on_a_sentence_transformers_folder_is_refused() -> None:
    with pytest.raises(ParameterError, match="'pooling'"):
        load_encoder(EncoderSpec(device="cpu", layer=3))


def test_bad_texts_are_refused(minilm_encoder) -> None:
    with pytest.raises(InputDataError, match="position 1"):
        minilm_encoder.encode(["fine", None])
    with pytest.raises(InputDataError, match="not one string"):
        minilm_encoder.encode("a single string")


# -- spec, cache, batching -----------------------------------------------------------------------


def test_spec_to_dict_is_json_and_round_trips(minilm_path: str) -> None:
    spec = EncoderSpec(pooling="weighted_mean", layer=-2, max_length=128)
    data = json.loads(json.dumps(spec.to_dict()))
    assert data["model"] == DEFAULT_MODEL_NAME and data["model_path"] == minilm_path
    assert EncoderSpec.from_dict(data) == spec
    with pytest.raises(ParameterError, match="colour"):
        EncoderSpec.from_dict({"colour": "red"})


def test_cached_encoder_loads_once_per_spec(minilm_encoder) -> None:
    assert cached_encoder(EncoderSpec(device="cpu")) is minilm_encoder
    clear_encoder_cache()
    again = cached_encoder(EncoderSpec(device="cpu"))
    assert again is not minilm_encoder and cached_encoder(EncoderSpec(device="cpu")) is again


def test_plan_batches_covers_every_text_within_budget_and_tolerance() -> None:
    rng = np.random.default_rng(0)
    lengths = np.concatenate([rng.integers(1, 40, 500), rng.integers(100, 300, 50), [5000]])
    batches = plan_batches(lengths, 1024, padding_tolerance=0.1)
    assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(len(lengths)))
    for batch in batches:
        longest = lengths[batch].max()
        assert len(batch) == 1 or len(batch) * longest <= 1024
        assert lengths[batch].min() >= np.ceil(0.9 * longest)
    padded = sum(len(b) * lengths[b].max() for b in batches)
    assert padded <= 1.1 * lengths.sum()


def test_prepacked_linear_matches_nn_linear() -> None:
    if not _onednn_linear_works():
        pytest.skip("this torch build has no working oneDNN prepacked linear")
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 20)
    x = torch.randn(3, 7, 48)
    with torch.inference_mode():
        torch.testing.assert_close(PrepackedLinear(linear)(x), linear(x), rtol=1e-5, atol=1e-5)
