"""Selectors: pure, seeded computations over arrays and stores (no Dask, no files).

Importing this package registers every selector in ``SELECTORS`` (name → class).
"""

from thresher.selectors._base import SELECTORS, ArrayPool, BaseSelector, BlockwiseSelector, Selection, resolve_budget
from thresher.selectors.acquisition import Acquisition
from thresher.selectors.batch_mining import BatchMiner
from thresher.selectors.diversity import KCenterGreedy
from thresher.selectors.rds import RDSPlus
from thresher.selectors.semdedup import SemDeDup
from thresher.selectors.smote import SMOTE

__all__ = [
    "SELECTORS",
    "SMOTE",
    "Acquisition",
    "ArrayPool",
    "BaseSelector",
    "BatchMiner",
    "BlockwiseSelector",
    "KCenterGreedy",
    "RDSPlus",
    "Selection",
    "SemDeDup",
    "resolve_budget",
]
