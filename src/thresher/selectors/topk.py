"""Exact streaming top-k with deterministic ties, mergeable as a reduction.

Used by selectors that score each pool row: every partition keeps its best
k (score, position) pairs per column, and partial results merge in any order
or grouping to the same answer. Order is score descending, then position
ascending, so equal scores go to the lower pool position (never, as in the
RDS+ reference, to whichever id sorts first as a string).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _trim(scores: np.ndarray, positions: np.ndarray, k: int, margin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of (scores, positions), unordered; exact at ties (lowest positions win).

    With ``margin`` > 0, everything within ``margin`` of the k-th best score is
    kept too: the scores are approximations, and any row whose true score could
    reach the true k-th best must survive.
    """
    n = len(scores)
    if n <= k:
        return scores, positions
    kth = np.partition(scores, n - k)[n - k]
    if margin > 0:
        keep = np.flatnonzero(scores >= kth - margin)
        return scores[keep], positions[keep]
    above = np.flatnonzero(scores > kth)
    ties = np.flatnonzero(scores == kth)
    need = k - len(above)
    if need < len(ties):
        ties = ties[np.argsort(positions[ties], kind="stable")[:need]]
    keep = np.concatenate([above, ties])
    return scores[keep], positions[keep]


def rank_order(scores: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Indices that sort by score descending, then position ascending."""
    return np.lexsort((positions, -scores))


@dataclass
class TopK:
    """The best ``k`` rows for each of ``n_columns`` score columns (e.g. one per task).

    ``update`` takes a block of scores; ``merge`` combines two partial results;
    ``finish`` returns each column's ranking. Buffers grow to 2k before being
    trimmed, so the amortised cost per row is O(1).
    """

    k: int
    n_columns: int
    margin: float = 0.0

    def __post_init__(self) -> None:
        self.scores = [np.empty(0, np.float64) for _ in range(self.n_columns)]
        self.positions = [np.empty(0, np.int64) for _ in range(self.n_columns)]

    def update(self, scores: np.ndarray, positions: np.ndarray) -> None:
        """Add a block: ``scores`` of shape (n, n_columns); rows with -inf (excluded) are ignored."""
        positions = np.asarray(positions, dtype=np.int64)
        for c in range(self.n_columns):
            col = scores[:, c]
            ok = col > -np.inf
            col_s, col_p = _trim(col[ok], positions[ok], self.k, self.margin)
            self.scores[c] = np.concatenate([self.scores[c], col_s])
            self.positions[c] = np.concatenate([self.positions[c], col_p])
            if len(self.scores[c]) > 2 * self.k:
                self.scores[c], self.positions[c] = _trim(self.scores[c], self.positions[c], self.k, self.margin)

    def merge(self, other: TopK) -> TopK:
        out = TopK(self.k, self.n_columns, self.margin)
        for c in range(self.n_columns):
            s = np.concatenate([self.scores[c], other.scores[c]])
            p = np.concatenate([self.positions[c], other.positions[c]])
            out.scores[c], out.positions[c] = _trim(s, p, self.k, self.margin)
        return out

    def candidates(self, column: int) -> np.ndarray:
        """Positions held for ``column`` (all survivors, margin included), in position order."""
        s, p = _trim(self.scores[column], self.positions[column], self.k, self.margin)
        return np.sort(p)

    def finish(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per column: (scores, positions) of the best k, best first."""
        result = []
        for c in range(self.n_columns):
            s, p = _trim(self.scores[c], self.positions[c], self.k)
            order = rank_order(s, p)
            result.append((s[order], p[order]))
        return result
