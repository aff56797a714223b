"""Data-loader adapters for training with per-sample feedback."""

from __future__ import annotations

from typing import Any


class IndexedDataset:
    """Wrap a map-style dataset so item ``i`` is ``(i, dataset[i])``: the loader then yields the indices to feed back.

    With InfoBatch, those indices go to :meth:`thresher.selectors.infobatch.InfoBatch.update` (with the
    per-sample losses) and :meth:`~thresher.selectors.infobatch.InfoBatch.weights`.
    """

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        return index, self.dataset[index]
