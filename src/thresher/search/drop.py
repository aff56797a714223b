"""Cleaning neighbour lists: drop each query's own row, or rows that must not be retrieved.

When the queries are rows of the searched set (B3's teacher ranks, SMOTE's
same-class neighbours, the index's recall sample), every list starts with the
query itself, or with one of its duplicates (equal scores go to the lower
position). Searching ``k + 1`` and dropping the query's own row gives its ``k``
nearest *other* rows.
"""

from __future__ import annotations

import numpy as np


def drop_self(found: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Remove each query's own position from its neighbour list, shape (n, K) -> (n, K - 1).

    A row whose own position is absent (duplicates of it filled the list) loses
    its last entry instead. Missing entries (-1) are moved after the valid ones
    (stable), so the first ``n_valid`` columns of a row are its valid neighbours.

    Parameters
    ----------
    found : ndarray of int, shape (n_queries, K)
        Neighbour positions, nearest first, ``-1`` where missing.
    positions : ndarray of int, shape (n_queries,)
        The position of each query among the searched rows.
    """
    found = np.asarray(found)
    is_self = found == np.asarray(positions)[:, None]
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), found.shape[1] - 1)
    keep = np.ones(found.shape, dtype=bool)
    keep[np.arange(len(found)), drop] = False
    kept = found[keep].reshape(len(found), found.shape[1] - 1)
    return np.take_along_axis(kept, np.argsort(kept < 0, axis=1, kind="stable"), axis=1)


def drop_excluded(found: np.ndarray, excluded: np.ndarray, k: int) -> np.ndarray:
    """Each row's first ``k`` neighbours that are not in ``excluded``, shape (n_queries, k), ``-1`` where fewer remain.

    Used to retrieve among some rows only (AnchorAL's unlabelled rows) through
    an index over all of them: search ``k + len(excluded)``, then drop.

    Parameters
    ----------
    found : ndarray of int, shape (n_queries, K)
        Neighbour positions, nearest first, ``-1`` where missing.
    excluded : ndarray of int
        Positions never to return.
    k : int
    """
    found = np.asarray(found, dtype=np.int64)
    keep = (found >= 0) & ~np.isin(found, excluded)
    # a stable sort of "dropped" puts each row's kept entries first, in their order
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    out = np.where(np.take_along_axis(keep, order, axis=1), np.take_along_axis(found, order, axis=1), -1)
    if out.shape[1] < k:
        out = np.concatenate([out, np.full((len(out), k - out.shape[1]), -1, dtype=np.int64)], axis=1)
    return out
