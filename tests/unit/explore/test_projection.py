"""The map's projection: PCA is the report's exact PCA; UMAP (when installed) keeps neighbourhoods and follows its seed."""

from __future__ import annotations

import numpy as np
import pytest

from thresher.exceptions import ParameterError
from thresher.explore import projection
from thresher.explore.projection import project
from thresher.report.gather import pca_2d


def _clusters(seed: int = 0, n: int = 240, dim: int = 24) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4, dim)) * 6
    labels = np.arange(n) % 4
    return centres[labels] + rng.standard_normal((n, dim)), labels


def test_pca_projects_every_row_on_the_axes_fitted_on_the_sample():
    x, _ = _clusters()
    xy, info = project(x[:200], x, method="pca")
    mean, components, _ = pca_2d(x[:200])  # float64 here; the map fits on float32 vectors (as the store holds them)
    np.testing.assert_allclose(np.abs(xy), np.abs((x - mean) @ components.T), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.sign(xy[np.abs(xy) > 1e-2]), np.sign(((x - mean) @ components.T)[np.abs(xy) > 1e-2]))
    assert info["method"] == "pca" and "fitted on 200 pool rows" in info["note"]


def test_auto_says_why_it_fell_back_to_pca(monkeypatch):
    x, _ = _clusters()
    monkeypatch.setattr(projection, "umap_available", lambda: False)
    _, info = project(x, x, method="auto")
    assert info["method"] == "pca" and "umap-learn is not installed" in info["note"]
    with pytest.raises(ParameterError, match="umap-learn is not installed"):
        project(x, x, method="umap")
    monkeypatch.setattr(projection, "umap_available", lambda: True)
    monkeypatch.setattr(projection, "UMAP_MAX_ROWS", 100)
    _, info = project(x, x, method="auto")
    assert info["method"] == "pca" and "larger than UMAP's limit" in info["note"]


@pytest.mark.slow  # numba compiles UMAP on first use (~1-2 min on 2 cores); the PCA tests above stay in the default run
def test_umap_keeps_clusters_apart_and_is_seeded():
    pytest.importorskip("umap", reason="umap-learn is not installed (pip install 'thresher[explore]')")
    x, labels = _clusters()
    xy, info = project(x, x, method="umap", seed=3)
    again, _ = project(x, x, method="umap", seed=3)
    assert info["method"] == "umap"
    np.testing.assert_allclose(xy, again)
    # every row's nearest neighbour on the map is of its own cluster (the clusters are well apart in the input)
    d = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(axis=2)
    np.fill_diagonal(d, np.inf)
    assert (labels[d.argmin(axis=1)] == labels).mean() > 0.98
