"""Selectors: pure, seeded computations over arrays and stores (no Dask, no files).

Importing this package registers every selector in ``SELECTORS`` (name → class).
"""

from thresher.selectors._base import SELECTORS, ArrayPool, BaseSelector, Selection, resolve_budget
from thresher.selectors.batch_mining import BatchMiner
from thresher.selectors.rds import RDSPlus
from thresher.selectors.smote import SMOTE

__all__ = ["SELECTORS", "SMOTE", "ArrayPool", "BaseSelector", "BatchMiner", "RDSPlus", "Selection", "resolve_budget"]
