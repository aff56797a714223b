"""Selectors: pure, seeded computations over arrays and stores (no Dask, no files)."""

from thresher.selectors._base import SELECTORS, ArrayPool, BaseSelector, Selection, resolve_budget

__all__ = ["SELECTORS", "ArrayPool", "BaseSelector", "Selection", "resolve_budget"]
