"""Pooling modes: token vectors of a batch -> one vector per text.

Each mode is a pure function ``(hidden, mask) -> pooled`` with ``hidden`` of
shape (batch, n_positions, dim), ``mask`` of shape (batch, n_positions) (1 or
True for a real token, 0 for padding) and ``pooled`` of shape (batch, dim),
registered by name in one place with :func:`register_pooling`. Adding a mode
is one decorated function; encoders, manifests and the CLI find it by name.

Every mode

- computes in float32, whatever dtype the model ran in (bf16/fp16 sums over
  hundreds of tokens lose digits that cosine rankings notice);
- reads only real tokens, so a text's vector does not depend on how much
  padding its batch needed nor on which side the padding is (right padding is
  usual for encoders, left padding for decoder LMs);
- never multiplies padding by zero to hide it: padded positions may hold NaN
  (a fully masked attention row gives NaN in some attention kernels) and
  ``NaN * 0`` is NaN, so padding is removed with ``torch.where``.

Modes
-----
``mean``
    Mean of the real tokens' vectors, as sentence-transformers pools
    all-MiniLM-L6-v2.
``weighted_mean``
    Position-weighted mean (SGPT, Muennighoff 2022, arXiv 2202.08904; used by
    RDS+, Ivison et al. 2025, arXiv 2503.01807): the t-th real token
    (1-based, counted over real tokens only) weighs ``t / sum_{s=1..T} s`` for
    a text of T real tokens, so later tokens, which have attended to more of
    the text in a causal LM, weigh more. The RDS+ reference code ignores the
    attention mask (it ran one text per batch); with padding that would give
    pad positions the largest weights, so here positions count real tokens
    only and left padding does not shift them.
``last_token``
    The last real token (the EOS position of a decoder LM), whichever side the
    padding is on.
``cls``
    The first real token (BERT's [CLS]).
``max``
    Element-wise max over the real tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

import torch

from thresher.exceptions import DimensionMismatchError, InputDataError, ParameterError

PoolingFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_REGISTRY: dict[str, PoolingFn] = {}

#: Live read-only view of the registered modes, name -> function (``tuple(POOLING_MODES)`` lists the names).
POOLING_MODES: Mapping[str, PoolingFn] = MappingProxyType(_REGISTRY)


def register_pooling(name: str) -> Callable[[PoolingFn], PoolingFn]:
    """Register a pooling function under ``name`` (a decorator).

    The function takes ``hidden`` of shape (batch, n_positions, dim) and
    ``mask`` of shape (batch, n_positions) and returns float32 vectors of shape
    (batch, dim). Wrap it so the inputs are checked and cast the same way for
    every mode.

    Raises
    ------
    ParameterError
        If ``name`` is already registered or not a non-empty string.
    """
    if not isinstance(name, str) or not name:
        raise ParameterError(f"A pooling mode's name must be a non-empty string; got {name!r}.")
    if name in _REGISTRY:
        raise ParameterError(f"A pooling mode named {name!r} is already registered.")

    def decorator(fn: PoolingFn) -> PoolingFn:
        def pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            hidden, real = _prepare(hidden, mask, name)
            return fn(hidden, real)

        pooled.__name__ = fn.__name__
        pooled.__qualname__ = fn.__qualname__
        pooled.__doc__ = fn.__doc__
        pooled.__wrapped__ = fn  # type: ignore[attr-defined]
        _REGISTRY[name] = pooled
        return pooled

    return decorator


def get_pooling(name: str) -> PoolingFn:
    """The pooling function registered as ``name``.

    Raises
    ------
    ParameterError
        Naming ``name`` and listing the known modes, if there is no such mode.
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        known = ", ".join(repr(n) for n in _REGISTRY)
        raise ParameterError(f"The 'pooling' parameter must be one of {known}; got {name!r}.") from None


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool ``hidden`` (batch, n_positions, dim) over real tokens with the mode named ``mode``; float32 (batch, dim)."""
    return get_pooling(mode)(hidden, mask)


def _prepare(hidden: torch.Tensor, mask: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Check shapes, cast ``hidden`` to float32 and ``mask`` to bool; refuse rows without real tokens."""
    if hidden.ndim != 3 or mask.ndim != 2 or tuple(hidden.shape[:2]) != tuple(mask.shape):
        raise DimensionMismatchError(
            f"Pooling {name!r} needs hidden of shape (batch, n_positions, dim) and mask of shape (batch, n_positions); "
            f"got hidden {tuple(hidden.shape)} and mask {tuple(mask.shape)}."
        )
    real = mask.to(device=hidden.device, dtype=torch.bool)
    n_real = real.sum(dim=1)
    if hidden.shape[0] and bool((n_real == 0).any()):
        row = int(torch.nonzero(n_real == 0)[0, 0])
        raise InputDataError(f"Row {row} of the batch given to pooling {name!r} has no real token (its mask is all zeros).")
    return hidden.to(torch.float32), real


def _zero_padding(hidden: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    return torch.where(real.unsqueeze(-1), hidden, torch.zeros((), dtype=hidden.dtype, device=hidden.device))


def _gather_positions(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rows ``hidden[b, positions[b], :]``, of shape (batch, dim)."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, positions]


@register_pooling("mean")
def mean_pooling(hidden: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean of the real tokens' vectors."""
    n_real = real.sum(dim=1, keepdim=True).to(hidden.dtype)
    return _zero_padding(hidden, real).sum(dim=1) / n_real


@register_pooling("weighted_mean")
def weighted_mean_pooling(hidden: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Position-weighted mean: the t-th real token weighs t / (T (T + 1) / 2) (SGPT, RDS+)."""
    positions = torch.cumsum(real.to(torch.int64), dim=1)  # 1-based index among real tokens; padding repeats a value
    weights = torch.where(real, positions, torch.zeros_like(positions)).to(hidden.dtype)
    weights = weights / weights.sum(dim=1, keepdim=True)
    return (_zero_padding(hidden, real) * weights.unsqueeze(-1)).sum(dim=1)


@register_pooling("last_token")
def last_token_pooling(hidden: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """The last real token's vector, for right or left padding."""
    n_positions = real.shape[1]
    from_end = torch.argmax(torch.flip(real, dims=[1]).to(torch.int8), dim=1)  # first real token counted from the end
    return _gather_positions(hidden, n_positions - 1 - from_end)


@register_pooling("cls")
def cls_pooling(hidden: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """The first real token's vector (BERT's [CLS]), for right or left padding."""
    return _gather_positions(hidden, torch.argmax(real.to(torch.int8), dim=1))


@register_pooling("max")
def max_pooling(hidden: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Element-wise max over the real tokens."""
    lowest = torch.tensor(float("-inf"), dtype=hidden.dtype, device=hidden.device)
    return torch.where(real.unsqueeze(-1), hidden, lowest).amax(dim=1)
