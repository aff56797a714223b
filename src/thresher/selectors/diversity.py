"""Diversity by k-center greedy, the core-set selection of Sener & Savarese (ICLR 2018, arXiv 1708.00489).

Greedy 2-approximation of the k-center problem: repeatedly pick the pool row
farthest (Euclidean) from every center chosen so far,

    x_next = argmax_{x in pool} min_{c in centers} ||x - c||,

starting from the already-labelled rows as centers, or, when there are none,
from one uniformly drawn (seeded) row. The pool is streamed block by block
for each pick; only one float64 array of n_rows minimum squared distances is
kept (O(n_rows) memory, never n_rows²). Distances are computed in float64
with a fixed summation order, so the picks do not depend on the block size.
Ties go to the lower position.

"Uncertainty then diversity" (:func:`uncertainty_then_diversity`): keep the
``n_candidates`` most informative rows by an acquisition score, then k-center
greedy among them down to the budget, a common way to avoid redundant
batches of near-duplicates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from thresher.exceptions import DimensionMismatchError, InputDataError, ParameterError
from thresher.rng import SeedLike, as_generator
from thresher.params import Interval, check_param
from thresher.selectors._base import BLOCK_ROWS, SEED, ArrayPool, BaseSelector, PoolLike, Selection, as_pool
from thresher.selectors.acquisition import top_positions

#: centers compared with a block at once when the initial centers are many
CENTER_CHUNK = 256


def _sq_dist_to(block: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Minimum squared Euclidean distance of each block row (n, dim) to ``centers`` (m, dim), float64."""
    best = np.full(len(block), np.inf)
    x = np.asarray(block, dtype=np.float64)
    for lo in range(0, len(centers), CENTER_CHUNK):
        c = np.asarray(centers[lo : lo + CENTER_CHUNK], dtype=np.float64)
        for row in c:
            diff = x - row
            np.minimum(best, np.einsum("ij,ij->i", diff, diff), out=best)
    return best


def _update(min_dist: np.ndarray, pool: PoolLike, centers: np.ndarray, block_rows: int | None) -> None:
    for block in pool.iter_blocks(block_rows):
        hi = block.start + len(block.vectors)
        np.minimum(min_dist[block.start : hi], _sq_dist_to(block.vectors, centers), out=min_dist[block.start : hi])


def k_center_greedy(
    pool: Any,
    budget: int,
    *,
    centers: np.ndarray | None = None,
    eligible: np.ndarray | None = None,
    seed: SeedLike = 0,
    block_rows: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy k-center picks over ``pool``.

    Parameters
    ----------
    pool : ndarray of shape (n_rows, dim) or an embedding store
    budget : int
        Centers to pick (1 <= budget <= number of eligible rows).
    centers : ndarray of shape (n_centers, dim), optional
        Existing centers (the labelled rows' embeddings). Without them the first pick is a uniformly
        drawn eligible row.
    eligible : ndarray of bool, shape (n_rows,), optional
        Rows that may be picked (default all).
    seed : int or numpy.random.Generator, default 0
    block_rows : int, optional
        Pool rows read at once.

    Returns
    -------
    positions : ndarray of int64, shape (budget,)
        Picks in order.
    distances : ndarray of float64, shape (budget,)
        Each pick's Euclidean distance to its nearest earlier center (inf for a drawn first pick).
    """
    owner = "k_center_greedy"
    view = as_pool(pool, owner)
    n_rows = view.n_rows
    allowed = np.ones(n_rows, dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool)
    if allowed.shape != (n_rows,):
        raise InputDataError(f"The 'eligible' mask given to {owner} must have shape ({n_rows},); got {allowed.shape}.")
    n_allowed = int(allowed.sum())
    check_param(owner, "budget", budget, [Interval(int, 1, n_allowed, note="the eligible rows")])
    min_dist = np.full(n_rows, np.inf)
    picks = np.empty(budget, dtype=np.int64)
    dists = np.empty(budget)
    start = 0
    if centers is not None and len(centers):
        centers = np.atleast_2d(np.asarray(centers))
        if centers.shape[1] != view.dim:
            raise DimensionMismatchError(f"{owner}: the centers have width {centers.shape[1]} but the pool has width {view.dim}.")
        _update(min_dist, view, centers, block_rows)
    else:
        rng = as_generator(seed, owner)
        first = int(np.flatnonzero(allowed)[rng.integers(n_allowed)])
        picks[0], dists[0] = first, np.inf
        _update(min_dist, view, view.take(np.array([first])), block_rows)
        start = 1
    masked = np.where(allowed, min_dist, -np.inf)
    masked[picks[:start]] = -np.inf
    for i in range(start, budget):
        p = int(np.argmax(masked))  # argmax takes the first maximum: ties to the lower position
        picks[i], dists[i] = p, np.sqrt(masked[p])
        _update(min_dist, view, view.take(np.array([p])), block_rows)
        masked = np.where(allowed, min_dist, -np.inf)
        masked[picks[: i + 1]] = -np.inf
    return picks, dists


def uncertainty_then_diversity(
    pool: Any,
    scores: Any,
    budget: int,
    *,
    n_candidates: int,
    centers: np.ndarray | None = None,
    seed: SeedLike = 0,
) -> np.ndarray:
    """Top ``n_candidates`` rows by ``scores`` (higher first, NaN last), then k-center greedy to ``budget``.

    Parameters
    ----------
    pool : ndarray of shape (n_rows, dim) or an embedding store
    scores : array of shape (n_rows,)
        Acquisition scores, higher = more informative.
    budget : int
        1 <= budget <= n_candidates.
    n_candidates : int
        budget <= n_candidates <= n_rows.
    centers : ndarray of shape (n_centers, dim), optional
        The labelled rows' embeddings.

    Returns
    -------
    ndarray of int64, shape (budget,)
        Pool positions in pick order.
    """
    owner = "uncertainty_then_diversity"
    view = as_pool(pool, owner)
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != (view.n_rows,):
        raise InputDataError(f"The scores given to {owner} must have shape ({view.n_rows},) (one per pool row); got {s.shape}.")
    check_param(owner, "n_candidates", n_candidates, [Interval(int, 1, view.n_rows, note="the pool's rows")])
    check_param(owner, "budget", budget, [Interval(int, 1, n_candidates, note=f"at most n_candidates={n_candidates}")])
    finite = np.flatnonzero(np.isfinite(s))
    top = finite[top_positions(s[finite], n_candidates)]
    if len(top) < n_candidates:
        top = np.concatenate([top, np.flatnonzero(~np.isfinite(s))[: n_candidates - len(top)]])
    top = np.sort(top)
    sub = ArrayPool(view.take(top), owner=owner)
    local, _ = k_center_greedy(sub, int(budget), centers=centers, seed=seed)
    return top[local]


class KCenterGreedy(BaseSelector):
    """Core-set selection by greedy k-center (Sener & Savarese 2018).

    Parameters
    ----------
    block_rows : int or None
        Pool rows read at once.
    seed : int, default 0
        Draws the first center when nothing is labelled.

    ``select(pool, budget=..., labelled=None, exclude=None)``: ``labelled`` positions start as centers
    (and are never picked); ``exclude`` positions are never picked. The score is each pick's distance to
    its nearest earlier center (inf for a drawn first pick).
    """

    name = "kcenter"
    _parameter_constraints = {"block_rows": BLOCK_ROWS, "seed": SEED}

    def __init__(self, *, block_rows: int | None = None, seed: int = 0):
        self.block_rows = block_rows
        self.seed = seed

    def _select(
        self,
        pool: PoolLike,
        *,
        budget: int,
        rng: np.random.Generator,
        labelled: Sequence[int] | np.ndarray | None = None,
        exclude: Sequence[int] | np.ndarray | None = None,
    ) -> Selection:
        eligible = np.ones(pool.n_rows, dtype=bool)
        centers = None
        for name, given in (("labelled", labelled), ("exclude", exclude)):
            if given is None:
                continue
            positions = np.unique(np.asarray(given, dtype=np.int64))
            if len(positions) and (positions[0] < 0 or positions[-1] >= pool.n_rows):
                raise InputDataError(f"The {name!r} positions given to KCenterGreedy must lie in [0, {pool.n_rows}).")
            eligible[positions] = False
            if name == "labelled" and len(positions):
                centers = pool.take(positions)
        if budget > int(eligible.sum()):
            raise ParameterError(
                f"The 'budget' parameter of KCenterGreedy asks for {budget} rows but only {int(eligible.sum())} are neither labelled nor excluded; lower it."
            )
        positions, distances = k_center_greedy(pool, budget, centers=centers, eligible=eligible, seed=rng, block_rows=self.block_rows)
        return Selection(
            positions=positions,
            ids=pool.ids()[positions],
            selector=self.name,
            params=self.get_params(),
            score=distances,
            seed=self.seed,
            summary={"n_labelled": 0 if centers is None else len(centers), "n_eligible": int(eligible.sum())},
        )
