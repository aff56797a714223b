"""Nearest-neighbour search in one place: numpy and FAISS only, no files, no Dask.

- :func:`exact_search` — exact top-k, streamed block by block (the oracle);
- :class:`GroupedIVFSearch` — IVF-Flat search of many queries at once, one matrix product per list;
- :func:`drop_self`, :func:`drop_excluded` — clean neighbour lists of the query's own row, or of excluded rows;
- :class:`RecallSample`, :func:`recall_excluding_self` — recall@k of an approximate search against exact search;
- :mod:`thresher.search.kmeans` — k-means centroids (IVF lists, B3's lists) that are the same bits for any thread count.

Used by the index artefact (:mod:`thresher.stores.index`), SMOTE, B3 batch mining and AnchorAL.
"""

from thresher.search.drop import drop_excluded, drop_self
from thresher.search.exact import exact_search
from thresher.search.grouped_ivf import GroupedIVFSearch
from thresher.search.recall import RecallSample, recall_excluding_self

__all__ = ["GroupedIVFSearch", "RecallSample", "drop_excluded", "drop_self", "exact_search", "recall_excluding_self"]
