"""The report's numbers against independent computations: PCA axes, exact streamed histograms, composition order."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from thresher.report import gather
from thresher.report.gather import Composition, pca_2d, streaming_histogram
from thresher.stores.arrow_io import write_stream_shard


def planted(n: int, dim: int, seed: int) -> np.ndarray:
    """Noise plus two strong directions, so the top two axes are well separated from the rest."""
    rng = np.random.default_rng(seed)
    axes = np.linalg.qr(rng.standard_normal((dim, 2)))[0].T
    return rng.standard_normal((n, 2)) * [9.0, 5.0] @ axes + 0.3 * rng.standard_normal((n, dim)) + 2.0


# exact: the scatter matrix of a tall sample, the SVD of a wide one; randomised (both sides above the limit)
@pytest.mark.parametrize(("limit", "n"), [(1024, 300), (1024, 30), (30, 300)])
def test_pca_axes_equal_scikit_learns(limit, n, monkeypatch):
    from sklearn.decomposition import PCA

    monkeypatch.setattr(gather, "EXACT_PCA_LIMIT", limit)
    x = planted(n, 40, seed=limit)
    mean, components, ratio = pca_2d(x, seed=1)
    reference = PCA(n_components=2, svd_solver="full").fit(x)
    signs = np.sign((components * reference.components_).sum(axis=1))
    assert np.all(signs != 0)
    np.testing.assert_allclose(components * signs[:, None], reference.components_, atol=1e-7)
    np.testing.assert_allclose(ratio, reference.explained_variance_ratio_, rtol=1e-7)
    np.testing.assert_allclose(mean, x.mean(axis=0))
    # the sign rule: each axis's largest loading is positive, whatever the input's order
    assert np.all(components[np.arange(2), np.abs(components).argmax(axis=1)] > 0)
    _, again, _ = pca_2d(x[::-1].copy(), seed=2)
    np.testing.assert_allclose(again, components, atol=1e-7)


def test_streamed_histogram_is_exact_over_shards_with_nulls(tmp_path):
    rng = np.random.default_rng(0)
    parts = [rng.normal(size=n) for n in (50, 1, 0, 200)]
    files = []
    for i, values in enumerate(parts):
        column = pa.array([None if j % 7 == 3 else float(v) for j, v in enumerate(values)], type=pa.float64())
        files.append(tmp_path / f"part-{i}.arrow")
        write_stream_shard(files[-1], pa.table({"score": column, "other": pa.array(np.arange(len(values)))}))
    kept = np.concatenate([v[[j % 7 != 3 for j in range(len(v))]] for v in parts])
    h = streaming_histogram(files, "score", 9, "t")
    counts, edges = np.histogram(kept, bins=9, range=(kept.min(), kept.max()))
    assert np.array_equal(h.counts, counts) and np.allclose(h.edges, edges)
    assert h.n == len(kept) == h.counts.sum() and h.mean == pytest.approx(kept.mean())
    write_stream_shard(tmp_path / "const.arrow", pa.table({"score": pa.array([2.0, 2.0, None])}))
    h = streaming_histogram([tmp_path / "const.arrow"], "score", 4, "t")
    assert h.counts.sum() == 2 and h.edges[0] < 2.0 < h.edges[-1]
    assert streaming_histogram([tmp_path / "const.arrow"], "missing", 4, "t") is None


def test_composition_values_follow_the_first_stage_then_later_ones():
    c = Composition("source", ["pool", "a", "b"], {"pool": {"x": 1, "y": 5, "z": 5}, "a": None, "b": {"new": 9, "x": 1}})
    assert c.values() == ["y", "z", "x", "new"]


def test_figures_take_labels_from_data_as_plain_text():
    import base64
    import io
    import warnings

    from PIL import Image

    from thresher.report import plots

    hostile = {"costs $5 and $": 3, r"a $\frac{$ b": 2, "数据 🙂": 4, "<b>": 1}  # bad mathtext; a glyph DejaVu lacks
    c = Composition("source $", ["pool", "step $1"], {"pool": hostile, "step $1": {"数据 🙂": 2}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning escapes the drawing, whatever pytest's settings
        encoded = plots.composition(c)
    with Image.open(io.BytesIO(base64.b64decode(encoded))) as im:
        assert im.size == (7 * 96, int(3.4 * 96))
