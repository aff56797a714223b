"""The explore page's 2-D map: UMAP (McInnes et al. 2018, ``umap-learn``) of a pool sample, or PCA.

UMAP keeps neighbourhoods, which is what a curator wants to see (clusters of
near-duplicates, the region a task pulled from); PCA keeps only the two
directions of largest variance but is exact, fast and needs nothing more.
``method="auto"`` uses UMAP when ``umap-learn`` is installed (the ``explore``
extra) and the sample has at most :data:`UMAP_MAX_ROWS` rows, PCA otherwise;
the page says which was used and why. Both are fitted on the pool sample
only and then applied, block by block, to every row the page maps (the
selection's sample, SMOTE's synthetic rows), so those land where the pool's
map puts them. Vectors are float32: memory is the sample (rows x dim) plus one block.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import numpy as np

METHODS = ("auto", "umap", "pca")
#: the largest sample ``method="auto"`` gives to UMAP (its cost grows faster than PCA's)
UMAP_MAX_ROWS = 50_000


def umap_available() -> bool:
    return importlib.util.find_spec("umap") is not None


def fit_projection(fit: np.ndarray, *, method: str = "auto", seed: int = 0) -> tuple[Callable[[np.ndarray], np.ndarray], dict[str, Any]]:
    """Fit a 2-D projection on ``fit`` (n_fit, dim).

    Returns a function mapping rows (n, dim) to coordinates (n, 2), and what
    was done: ``{"method": "umap" | "pca", "note": ...}``.
    """
    from thresher.exceptions import ParameterError

    chosen, note = method, ""
    if method == "auto":
        if not umap_available():
            chosen, note = "pca", "PCA: umap-learn is not installed (pip install 'thresher[explore]' for a UMAP map)."
        elif len(fit) > UMAP_MAX_ROWS:
            chosen, note = "pca", f"PCA: the sample ({len(fit):,} rows) is larger than UMAP's limit here ({UMAP_MAX_ROWS:,})."
        else:
            chosen = "umap"
    elif method == "umap" and not umap_available():
        raise ParameterError("The 'method' parameter of explore is 'umap' but umap-learn is not installed: pip install 'thresher[explore]', "
                             "or use method='pca'.")
    fit = np.asarray(fit, dtype=np.float32)
    if chosen == "umap":
        import umap

        reducer = umap.UMAP(n_components=2, n_neighbors=min(15, len(fit) - 1), metric="cosine", random_state=seed, n_jobs=1)
        reducer.fit(fit)
        return (lambda rows: np.asarray(reducer.transform(np.asarray(rows, dtype=np.float32)), dtype=np.float64),
                {"method": "umap", "note": note or f"UMAP (cosine, 15 neighbours, seed {seed}) fitted on {len(fit):,} pool rows."})
    from thresher.report.gather import pca_2d

    mean, components, ratio = pca_2d(fit, seed)
    mean, components = mean.astype(np.float64), components.astype(np.float64)
    explained = ", ".join(f"{r:.1%}" for r in ratio)
    return (lambda rows: (np.asarray(rows, dtype=np.float64) - mean) @ components.T,
            {"method": "pca", "note": (note + " " if note else "PCA ") + f"fitted on {len(fit):,} pool rows (variance explained: {explained})."})


def project(fit: np.ndarray, rows: np.ndarray, *, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    """Fit on ``fit`` (n_fit, dim) and map ``rows`` (n, dim): coordinates of shape (n, 2), and what was done."""
    transform, info = fit_projection(fit, method=method, seed=seed)
    return transform(rows), info
