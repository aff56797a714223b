"""Pooling modes against an independent numpy computation, and their independence of padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from thresher.embeddings.pooling import POOLING_MODES, get_pooling, pool, register_pooling
from thresher.exceptions import DimensionMismatchError, InputDataError, ParameterError

MODES = ("mean", "weighted_mean", "last_token", "cls", "max")


def numpy_pool(tokens: np.ndarray, mode: str) -> np.ndarray:
    """Reference pooling of one text's real token vectors, of shape (n_tokens, dim), in float64."""
    tokens = tokens.astype(np.float64)
    if mode == "mean":
        return tokens.mean(axis=0)
    if mode == "weighted_mean":
        weights = np.arange(1, len(tokens) + 1, dtype=np.float64)
        return (weights[:, None] * tokens).sum(axis=0) / (len(tokens) * (len(tokens) + 1) / 2)
    if mode == "last_token":
        return tokens[-1]
    if mode == "cls":
        return tokens[0]
    if mode == "max":
        return tokens.max(axis=0)
    raise AssertionError(mode)


def padded_batch(rows: list[np.ndarray], side: str, extra: int, fill: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad each row (n_tokens, dim) to the longest + ``extra`` positions with ``fill`` on ``side``."""
    n_positions = max(len(r) for r in rows) + extra
    dim = rows[0].shape[1]
    hidden = np.full((len(rows), n_positions, dim), fill, dtype=np.float32)
    mask = np.zeros((len(rows), n_positions), dtype=np.int64)
    for i, r in enumerate(rows):
        span = slice(0, len(r)) if side == "right" else slice(n_positions - len(r), n_positions)
        hidden[i, span] = r
        mask[i, span] = 1
    return torch.from_numpy(hidden), torch.from_numpy(mask)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("side", ["right", "left"])
def test_each_mode_matches_numpy(mode: str, side: str) -> None:
    rng = np.random.default_rng(0)
    rows = [rng.normal(size=(n, 6)).astype(np.float32) for n in (1, 4, 9, 2)]
    hidden, mask = padded_batch(rows, side, extra=3, fill=1e6)  # huge padding would dominate if read
    got = pool(hidden, mask, mode).numpy()
    want = np.stack([numpy_pool(r, mode) for r in rows])
    assert got.dtype == np.float32 and got.shape == (4, 6)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_weighted_mean_weights_count_real_tokens_only() -> None:
    # One-hot token vectors make the pooled vector equal to the weights themselves: 1/6, 2/6, 3/6.
    hidden, mask = padded_batch([np.eye(3, dtype=np.float32)], "left", extra=4, fill=7.0)
    np.testing.assert_allclose(pool(hidden, mask, "weighted_mean").numpy()[0], [1 / 6, 2 / 6, 3 / 6], rtol=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 12), min_size=1, max_size=5),
    extra=st.integers(0, 6),
    side=st.sampled_from(["right", "left"]),
    mode=st.sampled_from(MODES),
    fill=st.sampled_from([0.0, -1e4, float("nan"), float("inf")]),
    seed=st.integers(0, 2**32 - 1),
)
def test_pooled_row_is_independent_of_padding(lengths, extra, side, mode, fill, seed) -> None:
    rng = np.random.default_rng(seed)
    rows = [rng.normal(size=(n, 5)).astype(np.float32) for n in lengths]
    hidden, mask = padded_batch(rows, side, extra=extra, fill=fill)
    batched = pool(hidden, mask, mode)
    for i, row in enumerate(rows):
        alone = pool(torch.from_numpy(row)[None], torch.ones(1, len(row)), mode)
        assert torch.isfinite(batched[i]).all()
        torch.testing.assert_close(batched[i], alone[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_hidden_is_pooled_in_float32(dtype: torch.dtype) -> None:
    rng = np.random.default_rng(1)
    hidden = torch.from_numpy(rng.normal(size=(3, 50, 8)).astype(np.float32)).to(dtype)
    mask = torch.ones(3, 50, dtype=torch.bool)
    mask[1, 30:] = False
    for mode in MODES:
        got = pool(hidden, mask, mode)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, pool(hidden.float(), mask, mode), rtol=0, atol=0)


def test_row_without_real_tokens_is_refused() -> None:
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    with pytest.raises(InputDataError, match="Row 1"):
        pool(torch.zeros(2, 3, 4), mask, "mean")


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(DimensionMismatchError, match=r"\(2, 3, 4\)"):
        pool(torch.zeros(2, 3, 4), torch.ones(2, 5), "mean")


def test_unknown_mode_lists_the_known_ones() -> None:
    with pytest.raises(ParameterError, match="'no_such_mode'") as info:
        get_pooling("no_such_mode")
    for mode in MODES:
        assert repr(mode) in str(info.value)


def test_registry_holds_every_mode_and_refuses_duplicates() -> None:
    assert set(MODES) <= set(POOLING_MODES)
    with pytest.raises(ParameterError, match="'mean'"):
        register_pooling("mean")
