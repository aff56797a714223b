"""AnchorAL: a sub-pool for active learning on large, imbalanced pools (Lesci & Vlachos, NAACL 2024, arXiv 2404.05623).

Each round, instead of scoring the whole unlabelled pool:

1. per class, choose up to ``n_anchors`` (A) anchors among the labelled rows
   of that class by k-means++ seeding on their embeddings (all of them when
   the class has at most A labelled rows); the seed is drawn from the
   caller's generator, so anchors change from round to round;
2. retrieve each anchor's ``n_neighbors`` (k) nearest *unlabelled* rows,
   through a FAISS index (:meth:`thresher.stores.index.FaissIndex.search_positions`,
   over-fetching and dropping labelled rows) or an exact streamed cosine
   search over the pool;
3. score each retrieved row by its mean cosine similarity to the anchors that
   retrieved it, and keep the ``subpool_size`` (M) best as the sub-pool, on
   which any acquisition function then runs. When the unlabelled pool has at
   most M rows, the sub-pool is all of it.

Defaults follow the paper: A = 10, k = 50, M = 10,000. Cosines of record are
recomputed in float64 from the pool vectors, whichever search found the rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from thresher.exceptions import InputDataError
from thresher.params import HasMethods, Interval, check_param
from thresher.rng import SeedLike, as_generator
from thresher.search import drop_excluded
from thresher.selectors._base import PoolLike, as_pool
from thresher.selectors.topk import TopK

_OWNER = "anchoral_subpool"


@dataclass(frozen=True)
class AnchorSubpool:
    """The sub-pool of one AnchorAL round.

    Attributes
    ----------
    positions : ndarray of int64, shape (n_subpool,)
        Pool positions, best score first (ties to the lower position); in the whole-pool case the rows
        no anchor retrieved follow, in position order.
    score : ndarray of float64, shape (n_subpool,)
        Mean cosine to the retrieving anchors; NaN for rows no anchor retrieved.
    n_anchor_hits : ndarray of int64, shape (n_subpool,)
        How many anchors retrieved each row.
    anchors : ndarray of int64, shape (n_anchors_total,)
        Pool positions of the anchors, class by class.
    anchor_labels : ndarray, shape (n_anchors_total,)
        The class of each anchor.
    whole_pool : bool
        True when the unlabelled pool had at most ``subpool_size`` rows.
    """

    positions: np.ndarray
    score: np.ndarray
    n_anchor_hits: np.ndarray
    anchors: np.ndarray
    anchor_labels: np.ndarray
    whole_pool: bool


def _check_count(value: Any, name: str) -> int:
    check_param(_OWNER, name, value, [Interval(int, 1, None)])
    return int(value)


def _unit(x: np.ndarray, what: str, positions: np.ndarray | None = None) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    bad = ~np.isfinite(norms) | (norms == 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        where = row if positions is None else int(positions[row])
        raise InputDataError(f"Row {where} of {what} is a zero or non-finite vector: its cosine similarity is undefined.")
    return x / norms[:, None]


def choose_anchors(
    pool: PoolLike, labelled: np.ndarray, labels: np.ndarray, classes: Sequence[Any], n_anchors: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``n_anchors`` labelled positions per class by k-means++ seeding (all when fewer).

    Returns anchor positions and their classes, class by class in the order of ``classes``.
    """
    from sklearn.cluster import kmeans_plusplus

    anchors, anchor_labels = [], []
    for c in classes:
        members = labelled[labels == c]
        if len(members) == 0:
            name = c.item() if isinstance(c, np.generic) else c
            raise InputDataError(f"AnchorAL needs labelled rows of every class to pick anchors, but class {name!r} has none.")
        if len(members) > n_anchors:
            state = int(rng.integers(2**31 - 1))
            _, index = kmeans_plusplus(np.asarray(pool.take(members), dtype=np.float64), n_clusters=n_anchors, random_state=state)
            members = members[np.asarray(index, dtype=np.int64)]
        anchors.append(members)
        anchor_labels.append(np.full(len(members), c, dtype=np.asarray(labels).dtype))
    return np.concatenate(anchors), np.concatenate(anchor_labels)


def exact_neighbours(pool: PoolLike, queries: np.ndarray, k: int, exclude: np.ndarray, block_rows: int | None = None) -> np.ndarray:
    """Each query's ``k`` nearest pool rows by cosine, excluded rows skipped, ties to the lower position.

    Streams the pool; returns positions of shape (n_queries, k), ``-1`` where fewer rows exist.
    """
    unit_q = _unit(queries, "the anchors").astype(np.float32)
    top = TopK(k, len(unit_q))
    for block in pool.iter_blocks(block_rows):
        positions = np.arange(block.start, block.start + len(block.vectors), dtype=np.int64)
        x = np.asarray(block.vectors, dtype=np.float32)
        norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
        with np.errstate(divide="ignore", invalid="ignore"):
            sims = (x @ unit_q.T).astype(np.float64) / norms[:, None]
        sims[~np.isfinite(sims)] = -np.inf  # zero rows have no cosine: never neighbours
        sims[np.isin(positions, exclude)] = -np.inf
        top.update(sims, positions)
    out = np.full((len(unit_q), k), -1, dtype=np.int64)
    for j, (_, found) in enumerate(top.finish()):
        out[j, : len(found)] = found
    return out


def index_neighbours(neighbors: Any, queries: np.ndarray, k: int, exclude: np.ndarray, n_rows: int) -> np.ndarray:
    """Each query's ``k`` nearest unlabelled rows through ``neighbors.search_positions(queries, n)``.

    Fetches ``k + len(exclude)`` (at most ``n_rows``) so that ``k`` rows remain after dropping excluded
    ones (:func:`thresher.search.drop_excluded`); returns positions of shape (n_queries, k), ``-1`` where fewer were found.
    """
    unit_q = _unit(queries, "the anchors").astype(np.float32)
    n_fetch = min(n_rows, k + len(exclude))
    _, found = neighbors.search_positions(unit_q, n_fetch)
    return drop_excluded(found, exclude, k)


def anchoral_subpool(
    pool: Any,
    labelled: Sequence[int] | np.ndarray,
    labels: Sequence[Any] | np.ndarray,
    *,
    classes: Sequence[Any] | None = None,
    n_anchors: int = 10,
    n_neighbors: int = 50,
    subpool_size: int = 10_000,
    neighbors: Any = None,
    seed: SeedLike = 0,
    block_rows: int | None = None,
) -> AnchorSubpool:
    """The AnchorAL sub-pool of one round.

    Parameters
    ----------
    pool : ndarray of shape (n_rows, dim) or an embedding store
        Embeddings of the whole pool (labelled and unlabelled rows).
    labelled : array of int, shape (n_labelled,)
        Positions of the labelled rows.
    labels : array, shape (n_labelled,)
        Their classes.
    classes : sequence, optional
        Every class that needs anchors (default: those in ``labels``); a class without labelled rows is refused.
    n_anchors : int, default 10
        Anchors per class (A).
    n_neighbors : int, default 50
        Unlabelled neighbours retrieved per anchor (k).
    subpool_size : int, default 10_000
        Rows kept (M).
    neighbors : object with ``search_positions(vectors, k)``, optional
        A :class:`~thresher.stores.index.FaissIndex` over this pool (cosine: inner product over normalised
        vectors). None: exact streamed cosine search.
    seed : int or numpy.random.Generator, default 0
        Pass the round's generator so anchors change each round.
    block_rows : int, optional
        Pool rows read at once by the exact search.

    Returns
    -------
    AnchorSubpool

    Raises
    ------
    InputDataError
        Labelled positions out of range or duplicated, labels of another length, a class with no labelled row.
    """
    view = as_pool(pool, _OWNER)
    n_anchors = _check_count(n_anchors, "n_anchors")
    n_neighbors = _check_count(n_neighbors, "n_neighbors")
    subpool_size = _check_count(subpool_size, "subpool_size")
    rng = as_generator(seed, _OWNER)
    labelled = np.asarray(labelled, dtype=np.int64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(labelled):
        raise InputDataError(f"{_OWNER} got {len(labelled)} labelled positions but {len(labels)} labels.")
    if len(labelled) and (labelled.min() < 0 or labelled.max() >= view.n_rows):
        raise InputDataError(f"The labelled positions given to {_OWNER} must lie in [0, {view.n_rows}).")
    if len(np.unique(labelled)) != len(labelled):
        raise InputDataError(f"The labelled positions given to {_OWNER} hold duplicates.")
    check_param(_OWNER, "neighbors", neighbors, [None, HasMethods("search_positions", note="a FaissIndex")])
    if neighbors is not None and getattr(neighbors, "n_rows", view.n_rows) != view.n_rows:
        raise InputDataError(f"The neighbours index given to {_OWNER} holds {neighbors.n_rows} rows but the pool has {view.n_rows}.")
    class_list = list(np.unique(labels)) if classes is None else list(classes)
    anchors, anchor_labels = choose_anchors(view, labelled, labels, class_list, n_anchors, rng)
    excluded = np.sort(labelled)
    n_unlabelled = view.n_rows - len(excluded)
    if n_unlabelled == 0:
        raise InputDataError(f"{_OWNER}: every pool row is labelled; there is nothing left to acquire.")
    anchor_vectors = view.take(anchors)
    if neighbors is None:
        found = exact_neighbours(view, anchor_vectors, n_neighbors, excluded, block_rows)
    else:
        found = index_neighbours(neighbors, anchor_vectors, n_neighbors, excluded, view.n_rows)
    positions, score, hits = _score_retrieved(view, anchor_vectors, found)
    order = np.lexsort((positions, -score))
    positions, score, hits = positions[order], score[order], hits[order]
    whole = n_unlabelled <= subpool_size
    if whole:
        rest = np.setdiff1d(np.arange(view.n_rows, dtype=np.int64), np.concatenate([excluded, positions]))
        positions = np.concatenate([positions, rest])
        score = np.concatenate([score, np.full(len(rest), np.nan)])
        hits = np.concatenate([hits, np.zeros(len(rest), dtype=np.int64)])
    else:
        positions, score, hits = positions[:subpool_size], score[:subpool_size], hits[:subpool_size]
    return AnchorSubpool(positions=positions, score=score, n_anchor_hits=hits, anchors=anchors, anchor_labels=anchor_labels, whole_pool=whole)


def _score_retrieved(pool: PoolLike, anchor_vectors: np.ndarray, found: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique retrieved positions, their mean float64 cosine to the anchors that retrieved them, and hit counts."""
    anchor_idx, slot = np.nonzero(found >= 0)
    pairs = found[anchor_idx, slot]
    positions, inverse = np.unique(pairs, return_inverse=True)
    if len(positions) == 0:
        return positions, np.empty(0), np.empty(0, dtype=np.int64)
    unit_x = _unit(pool.take(positions), "the pool", positions)
    unit_a = _unit(anchor_vectors, "the anchors")
    cos = np.einsum("ij,ij->i", unit_x[inverse], unit_a[anchor_idx])
    hits = np.bincount(inverse, minlength=len(positions)).astype(np.int64)
    score = np.bincount(inverse, weights=cos, minlength=len(positions)) / hits
    return positions, score, hits
