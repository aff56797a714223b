"""Moved to :mod:`thresher.training.al_loop` (issue 15: the active-learning loop drives training, so it lives in
``thresher.training``; ``thresher.selectors`` keeps only the pure selection algorithms it calls).

This module re-exports it so ``from thresher.selectors.al_loop import ActiveLearningLoop`` keeps working.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    from thresher.training import al_loop

    return getattr(al_loop, name)
