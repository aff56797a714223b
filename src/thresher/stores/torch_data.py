"""Moved to :mod:`thresher.training.torch_data` (issue 15: training-side code lives in ``thresher.training``).

This module re-exports it so ``from thresher.stores.torch_data import CuratedShardDataset`` keeps working;
like the new module, importing it does not import torch.
"""

from __future__ import annotations

from typing import Any

from thresher.training import torch_data as _moved


def __getattr__(name: str) -> Any:
    return getattr(_moved, name)
