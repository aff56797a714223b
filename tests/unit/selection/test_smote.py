"""SMOTE (Chawla et al., JAIR 2002) against imbalanced-learn and a numpy brute force."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from imblearn.over_sampling import SMOTE as ImbSMOTE
from imblearn.utils import check_sampling_strategy
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, recall_score
from sklearn.model_selection import train_test_split
from sklearn.neighbors import NearestNeighbors

from thresher.exceptions import InputDataError, ParameterError
from thresher.selectors import SELECTORS
from thresher.selectors.smote import SMOTE, class_neighbors, sampling_targets
from thresher.rng import derive_seed
from thresher.selectors.smote import _index_searcher


def blobs(counts, dim=6, seed=0, labels=None):
    """Gaussian blobs, one per class, with ``counts[i]`` rows of class ``labels[i]`` (default i)."""
    rng = np.random.default_rng(seed)
    labels = list(range(len(counts))) if labels is None else labels
    X = np.concatenate([rng.normal(loc=3.0 * i, size=(n, dim)) for i, n in enumerate(counts)])
    y = np.concatenate([np.full(n, lab) for lab, n in zip(labels, counts)])
    order = rng.permutation(len(y))
    return X[order], y[order]


BINARY = blobs([90, 14])
MULTI = blobs([60, 25, 12])
MAJORITY_TIE = blobs([40, 40, 12])  # classes 0 and 1 tie for the majority: 0 (the smaller label) is it
MINORITY_TIE = blobs([50, 12, 12])  # classes 1 and 2 tie for the minority: 1 is it

STRATEGIES = [
    (BINARY, "auto"), (BINARY, "minority"), (BINARY, "not minority"), (BINARY, "not majority"), (BINARY, "all"),
    (BINARY, 0.5), (BINARY, 1.0), (BINARY, {1: 40}), (BINARY, {0: 95, 1: 30}),
    (MULTI, "auto"), (MULTI, "minority"), (MULTI, "not minority"), (MULTI, "all"), (MULTI, {1: 30, 2: 50}),
    (MULTI, lambda y: {c: int(n * 1.5) for c, n in Counter(y.tolist()).items() if n < 30}),
    (MAJORITY_TIE, "auto"), (MAJORITY_TIE, "not minority"), (MAJORITY_TIE, "all"),
    (MINORITY_TIE, "minority"), (MINORITY_TIE, "not minority"), (MINORITY_TIE, "auto"),
]


@pytest.mark.parametrize("data,strategy", STRATEGIES)
def test_class_counts_equal_imbalanced_learn(data, strategy):
    X, y = data
    ours = sampling_targets(strategy, y)
    theirs = check_sampling_strategy(strategy, y, "over-sampling")
    assert {int(c): int(n) for c, n in theirs.items()} == {int(c): int(n) for c, n in ours.items()}
    X_res, y_res = SMOTE(sampling_strategy=strategy, seed=3).fit_resample(X, y)
    X_imb, y_imb = ImbSMOTE(sampling_strategy=strategy, random_state=3).fit_resample(X, y)
    assert Counter(y_res.tolist()) == Counter(y_imb.tolist())
    assert X_res.shape == X_imb.shape and X_res.dtype == X.dtype
    # the original rows come first, unchanged, as in imbalanced-learn
    np.testing.assert_array_equal(X_res[: len(X)], X)
    np.testing.assert_array_equal(y_res[: len(y)], y)


@pytest.mark.parametrize(
    "data,strategy,match",
    [
        (BINARY, "majority", "cannot over-sample"),
        (BINARY, "most", "sampling_strategy"),
        (MULTI, 0.5, "a float needs exactly 2"),
        (BINARY, 0.1, "current minority/majority ratio"),
        (BINARY, 0.0, r"in \(0, 1\]"),
        (BINARY, 1.5, r"in \(0, 1\]"),
        (BINARY, {1: 5}, "at least the current"),
        (BINARY, {7: 50}, "classes present"),
        (BINARY, {1: -1}, "ints >= 0"),
        (BINARY, lambda y: [1, 2], "callable returning a dict"),
    ],
)
def test_strategies_imbalanced_learn_refuses_are_refused(data, strategy, match):
    X, y = data
    with pytest.raises(ParameterError, match=match):
        SMOTE(sampling_strategy=strategy).fit_resample(X, y)
    with pytest.raises((ValueError, AttributeError)):  # imbalanced-learn refuses them too (less clearly)
        check_sampling_strategy(strategy, y, "over-sampling")


def _brute_kth(X, members, base, k):
    """Squared distance from ``base`` to its k-th nearest same-class row, itself excluded (float64)."""
    others = members[members != base]
    d = ((X[others] - X[base]) ** 2).sum(axis=1)
    return np.sort(d)[k - 1]


@pytest.mark.parametrize("neighbors", ["auto", "exact", NearestNeighbors()])
def test_synthetic_rows_lie_between_parents_and_neighbour_is_among_k_nearest(neighbors):
    X, y = MULTI
    X = np.vstack([X, X[y == 2][:3]])  # exact duplicates inside the smallest class
    y = np.concatenate([y, [2, 2, 2]])
    k = 4
    sel = SMOTE(k_neighbors=k, neighbors=neighbors, seed=11).select(X, budget=1.0, labels=y)
    s = sel.synthetic
    assert len(s) == 35 + 45 and sel.summary["n_synthetic"] == 80
    assert np.all((s.gap >= 0) & (s.gap < 1)) and s.gap.dtype == np.float32
    expected = X[s.base_positions] + s.gap[:, None].astype(np.float64) * (X[s.neighbor_positions] - X[s.base_positions])
    np.testing.assert_allclose(s.vectors, expected, rtol=1e-5, atol=1e-5)  # vectors from a float32 pool
    np.testing.assert_array_equal(y[s.base_positions], s.label)
    np.testing.assert_array_equal(y[s.neighbor_positions], s.label)
    assert np.all(s.base_positions != s.neighbor_positions)
    np.testing.assert_array_equal(sel.synthetic_parents, np.stack([s.base_positions, s.neighbor_positions], axis=1))
    for base, nb, label in zip(s.base_positions, s.neighbor_positions, s.label):
        members = np.flatnonzero(y == label)
        d = ((X[nb] - X[base]) ** 2).sum()
        assert d <= _brute_kth(X, members, base, k) * (1 + 1e-5) + 1e-6


def test_neighbour_columns_are_used_uniformly():
    # with 6 rows and k = 5 every other row is a neighbour: each (base, neighbour) pair is about equally frequent
    X = np.random.default_rng(0).normal(size=(6, 3))
    from scipy.stats import chisquare

    y = np.array([0] * 6 + [1] * 6000)
    X = np.vstack([X, np.random.default_rng(1).normal(size=(6000, 3)) + 5])
    s = SMOTE(seed=0).select(X, budget=1.0, labels=y).synthetic
    pairs = Counter(zip(s.base_positions.tolist(), s.neighbor_positions.tolist()))
    assert len(pairs) == 30 and all(a != b for a, b in pairs)
    assert chisquare(list(pairs.values())).pvalue > 0.01
    assert chisquare(np.histogram(s.gap, bins=10, range=(0, 1))[0]).pvalue > 0.01


def test_class_neighbors_equal_brute_force_and_drop_self_with_duplicates():
    rng = np.random.default_rng(4)
    V = rng.normal(size=(200, 8)).astype(np.float32)
    V[50] = V[10]  # a duplicate pair: each is the other's nearest, at distance 0
    queries = np.array([0, 10, 50, 199])
    nn, n_valid = class_neighbors(V, queries, 5, block_rows=3)
    assert np.all(n_valid == 5)
    d = ((V[queries, None, :].astype(np.float64) - V[None, :, :]) ** 2).sum(-1)
    d[np.arange(len(queries)), queries] = np.inf
    np.testing.assert_array_equal(nn, np.argsort(d, axis=1, kind="stable")[:, :5])
    assert nn[1, 0] == 50 and nn[2, 0] == 10


@pytest.mark.parametrize("factory", ["HNSW32", "IVF16,Flat"])
def test_approximate_index_paths_find_the_true_neighbours(factory):
    rng = np.random.default_rng(5)
    V = rng.normal(size=(3000, 16)).astype(np.float32)
    search = _index_searcher(V, factory, seed=0)
    found = search(V[:50], 6)
    d = ((V[:50, None, :] - V[None, :, :]) ** 2).sum(-1)
    truth = np.argsort(d, axis=1)[:, :6]
    recall = np.mean([len(set(a) & set(b)) / 6 for a, b in zip(found.tolist(), truth.tolist())])
    assert recall > 0.95


def test_undersampling_keeps_a_uniform_fraction_of_the_majority_and_all_minority_rows():
    X, y = BINARY
    sel = SMOTE(undersample_majority=0.5, seed=2).select(X, budget=1.0, labels=y)
    kept_labels = y[sel.positions]
    assert (kept_labels == 0).sum() == 45 and (kept_labels == 1).sum() == 14
    np.testing.assert_array_equal(sel.columns["embedding"], X[sel.positions].astype(np.float32))
    assert np.all(np.diff(sel.positions) > 0)
    assert sel.summary["class_counts_before"] == {"0": 90, "1": 14}
    assert sel.summary["class_counts_after"] == {"0": 45, "1": 90}
    assert sel.summary["n_undersampled"] == 45 and sel.summary["n_synthetic"] == 76
    np.testing.assert_allclose(sel.columns["embedding"], X[sel.positions].astype(np.float32))
    assert not sel.columns["synthetic"].any()
    # fit_resample agrees with select
    X_res, y_res = SMOTE(undersample_majority=0.5, seed=2).fit_resample(X, y)
    np.testing.assert_array_equal(X_res[:59], X[sel.positions])
    np.testing.assert_allclose(X_res[59:], sel.synthetic.vectors, rtol=1e-5, atol=1e-5)
    # other seeds keep other rows
    other = SMOTE(undersample_majority=0.5, seed=3).select(X, budget=1.0, labels=y)
    assert not np.array_equal(other.positions, sel.positions)
    # a dict names the classes; a class cannot be both over- and under-sampled
    sel2 = SMOTE(sampling_strategy="minority", undersample_majority={0: 0.25}).select(X, budget=1.0, labels=y)
    assert (y[sel2.positions] == 0).sum() == 22
    with pytest.raises(ParameterError, match="both over-sample and under-sample"):
        SMOTE(sampling_strategy="all", undersample_majority={1: 0.5}).fit_resample(X, y)


def test_deterministic_and_independent_of_block_size_and_of_other_classes():
    X, y = MULTI
    a = SMOTE(seed=7).fit_resample(X, y)
    b = SMOTE(seed=7, block_rows=5).fit_resample(X, y)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    c = SMOTE(seed=8).fit_resample(X, y)
    assert not np.array_equal(a[0], c[0])
    # class 2's synthetic rows do not depend on whether class 1 is over-sampled too
    only2 = SMOTE(seed=7, sampling_strategy={2: 40}).select(X, budget=1.0, labels=y).synthetic
    both = SMOTE(seed=7, sampling_strategy={1: 30, 2: 40}).select(X, budget=1.0, labels=y).synthetic
    np.testing.assert_array_equal(only2.vectors, both.vectors[both.label == 2])
    # string labels work and give the same rows as their integer codes' order
    names = np.array(["a", "b", "c"])[y]
    Xs, ys = SMOTE(seed=7).fit_resample(X, names)
    assert Counter(ys.tolist()) == {"a": 60, "b": 60, "c": 60}


def test_select_is_registered_and_float32_pool_gives_float32():
    assert SELECTORS["smote"] is SMOTE
    X, y = BINARY
    X_res, _ = SMOTE().fit_resample(X.astype(np.float32), y)
    assert X_res.dtype == np.float32


@pytest.mark.parametrize(
    "kwargs,labels,error,match",
    [
        ({}, np.zeros(104), InputDataError, "at least 2 classes"),
        ({}, np.where(np.arange(104) == 7, np.nan, np.arange(104) % 2), InputDataError, "row 7 is NaN"),
        ({}, np.array([None] + [0, 1] * 51 + [1], dtype=object), InputDataError, "row 0 is missing"),
        ({}, np.zeros(50), InputDataError, "50 values but the pool has 104 rows"),
        ({}, np.zeros((104, 2)), InputDataError, "one-dimensional"),
        ({"k_neighbors": 20}, None, ParameterError, "Class 1 has 14 rows"),
        ({"k_neighbors": 0}, None, ParameterError, "'k_neighbors'"),
        ({"undersample_majority": -0.5}, None, ParameterError, "'undersample_majority'"),
        ({"undersample_majority": 1.5}, None, ParameterError, "'undersample_majority'"),
        ({"undersample_majority": 0.0}, None, ParameterError, "'undersample_majority'"),
        ({"undersample_majority": True}, None, ParameterError, "'undersample_majority'"),
        ({"undersample_majority": 0.001}, None, ParameterError, "keeps no row of class 0"),
        ({"neighbors": "fast"}, None, ParameterError, "'neighbors'"),
        ({"neighbors": object()}, None, ParameterError, "'neighbors'"),
        ({"seed": -1}, None, ParameterError, "'seed'"),
    ],
)
def test_bad_input_is_refused_clearly(kwargs, labels, error, match):
    X, y = BINARY
    with pytest.raises(error, match=match):
        SMOTE(**kwargs).select(X, budget=1.0, labels=y if labels is None else labels)


def test_select_needs_labels_and_the_whole_pool():
    X, y = BINARY
    with pytest.raises(ParameterError, match="needs labels"):
        SMOTE().select(X, budget=1.0)
    with pytest.raises(ParameterError, match="'budget'"):
        SMOTE().select(X, budget=0.5, labels=y)


def _minority_scores(X_train, y_train, X_test, y_test):
    clf = LogisticRegression(max_iter=2000).fit(X_train, y_train)
    pred = clf.predict(X_test)
    return recall_score(y_test, pred), f1_score(y_test, pred)


def test_classifier_trained_on_thresher_output_matches_imbalanced_learn():
    ours, theirs, plain = [], [], []
    for seed in range(5):
        X, y = make_classification(n_samples=3000, n_features=20, n_informative=6, weights=[0.95, 0.05], flip_y=0.01, random_state=seed)
        X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.4, stratify=y, random_state=seed)
        ours.append(_minority_scores(*SMOTE(seed=seed).fit_resample(X_tr, y_tr), X_te, y_te))
        theirs.append(_minority_scores(*ImbSMOTE(random_state=seed).fit_resample(X_tr, y_tr), X_te, y_te))
        plain.append(_minority_scores(X_tr, y_tr, X_te, y_te))
    ours, theirs, plain = map(np.asarray, (ours, theirs, plain))
    # same minority recall and F1 as imbalanced-learn's SMOTE, within the seed-to-seed noise
    noise = np.maximum(theirs.std(axis=0), 0.02)
    assert np.all(np.abs(ours.mean(axis=0) - theirs.mean(axis=0)) <= noise), (ours.mean(axis=0), theirs.mean(axis=0))
    # and, like it, far better minority recall than training on the imbalanced data
    assert ours[:, 0].mean() > plain[:, 0].mean() + 0.1


def _clustered(n, dim, n_centres, seed):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_centres, dim)) * 4
    return (centres[rng.integers(0, n_centres, size=n)] + rng.normal(size=(n, dim))).astype(np.float32)


def test_large_class_uses_a_tuned_ivf_index_whose_recall_is_measured():
    # class 1 has more rows than EXACT_MAX_ROWS: "auto" searches it with an IVF index tuned to the recall target
    from thresher.selectors.smote import EXACT_MAX_ROWS, class_searcher

    n1, k = EXACT_MAX_ROWS + 1000, 5
    X = np.vstack([_clustered(n1 + 1500, 16, 300, seed=1) + 50, _clustered(n1, 16, 300, seed=2)])
    y = np.r_[np.zeros(n1 + 1500, int), np.ones(n1, int)]
    sel = SMOTE(k_neighbors=k, seed=3).select(X, budget=1.0, labels=y)
    report = sel.summary["neighbor_search"]["1"]
    assert report["exact"] is False and report["index"].startswith("IVF") and report["recall_at_k"] >= 0.95
    assert report["n_rows"] == n1 and report["recall_queries"] == 256
    s = sel.synthetic
    assert len(s) == 1500 and np.all(y[s.base_positions] == 1) and np.all(y[s.neighbor_positions] == 1)
    np.testing.assert_allclose(s.vectors, X[s.base_positions] + s.gap[:, None] * (X[s.neighbor_positions] - X[s.base_positions]), rtol=1e-5, atol=1e-5)
    # each second parent is among its base's k nearest per the approximate index (rebuilt with the same seed)
    members = np.flatnonzero(y == 1)
    search, again = class_searcher(X[members], k, seed=derive_seed(3, "index", "1"))
    assert again == {key: report[key] for key in again}
    local = {int(p): i for i, p in enumerate(members)}
    bases = np.array([local[int(p)] for p in s.base_positions])
    nn, _ = class_neighbors(X[members], bases, k, search=search)
    assert all(local[int(p)] in row for p, row in zip(s.neighbor_positions, nn.tolist()))
    # and the recall it reported holds against numpy brute force on other rows
    sample = np.random.default_rng(0).choice(len(members), 300, replace=False)
    V = X[members].astype(np.float64)
    d = ((V[sample, None, :] - V[None, :, :]) ** 2).sum(-1)
    d[np.arange(300), sample] = np.inf
    truth = np.argsort(d, axis=1)[:, :k]
    found, _ = class_neighbors(X[members], sample, k, search=search)
    recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(found.tolist(), truth.tolist())])
    assert recall >= 0.9 and abs(recall - report["recall_at_k"]) < 0.06


def test_class_without_structure_falls_back_to_exact_search():
    # isotropic noise in 64 dims: no nprobe up to nlist/16 reaches the target, so the class is searched exactly
    from thresher.selectors.smote import class_searcher

    V = np.random.default_rng(6).normal(size=(3000, 64)).astype(np.float32)
    search, report = class_searcher(V, 5, exact_max_rows=100, recall_target=0.95)
    assert report["exact"] is True and report["approximate_recall_at_k"] < 0.95 and report["nprobe_tried"] == [1, 2, 4]
    queries = np.arange(0, 3000, 97)
    nn, _ = class_neighbors(V, queries, 5, search=search)
    d = ((V[queries, None, :].astype(np.float64) - V[None, :, :]) ** 2).sum(-1)
    d[np.arange(len(queries)), queries] = np.inf
    np.testing.assert_array_equal(nn, np.argsort(d, axis=1)[:, :5])
    # a structured class of the same size reaches the target with a small nprobe
    _, structured = class_searcher(_clustered(3000, 16, 20, seed=0), 5, exact_max_rows=100)
    assert structured["exact"] is False and structured["nprobe"] <= 4 and structured["recall_at_k"] >= 0.95


def test_synthetic_rows_get_unique_ids_that_no_pool_row_has():
    from thresher.selectors.smote import synthetic_ids

    X, y = MULTI
    sel = SMOTE(seed=1).select(X, budget=1.0, labels=y)
    # integer pool ids (a bare array: 0 .. n-1): the integers after the largest
    np.testing.assert_array_equal(sel.synthetic_ids, np.arange(len(X), len(X) + len(sel.synthetic)))
    cols = sel.synthetic_columns()
    blocks = list(SMOTE(seed=1, block_rows=7).select(X, budget=1.0, labels=y).iter_synthetic_columns())
    assert len(sel.synthetic) == 35 + 48 and [len(b["gap"]) for b in blocks] == [7] * 11 + [6]
    for name in cols:
        np.testing.assert_array_equal(np.concatenate([b[name] for b in blocks]), cols[name])
    # text ids: "synthetic:<class>:<n>", counted per class
    labels = np.array(["a", "a", "b", "b", "b"])
    ids = synthetic_ids(np.array(["x", "y"], dtype=object), labels)
    assert ids.tolist() == ["synthetic:a:0", "synthetic:a:1", "synthetic:b:0", "synthetic:b:1", "synthetic:b:2"]
    with pytest.raises(InputDataError, match="'synthetic:b:1'"):
        synthetic_ids(np.array(["x", "synthetic:b:1"], dtype=object), labels)
    with pytest.raises(InputDataError, match="largest id"):
        synthetic_ids(np.array([0, np.iinfo(np.int64).max - 2]), labels)


def test_synthetic_vectors_are_made_block_by_block_from_the_parents():
    X, y = MULTI
    s = SMOTE(seed=2, block_rows=4).select(X.astype(np.float32), budget=1.0, labels=y).synthetic
    blocks = list(s.iter_vectors())
    assert [len(b) for b in blocks] == [4] * 20 + [3] and all(b.dtype == np.float32 for b in blocks)
    np.testing.assert_array_equal(np.concatenate(blocks), s.vectors)
    Xf = X.astype(np.float32)
    np.testing.assert_array_equal(s.vectors, Xf[s.base_positions] + s.gap[:, None] * (Xf[s.neighbor_positions] - Xf[s.base_positions]))


@pytest.mark.parametrize("nprobe", [1, 3])
def test_grouped_ivf_search_equals_faiss_ivf_flat_with_the_same_lists(nprobe):
    import faiss

    from thresher.selectors.smote import _GroupedIVF

    V = _clustered(4000, 24, 40, seed=8)
    grouped = _GroupedIVF(V, 32, seed=1)
    grouped.nprobe = nprobe
    quantizer = faiss.IndexFlatL2(24)
    quantizer.add(grouped.centroids)
    reference = faiss.IndexIVFFlat(quantizer, 24, 32)
    reference.add(V)
    reference.nprobe = nprobe
    queries = V[::37]
    _, expected = reference.search(queries, 7)
    found = grouped(queries, 7)
    assert found.shape == expected.shape
    assert [set(a) for a in found.tolist()] == [set(b) for b in expected.tolist()]


def test_a_large_class_ivf_lists_ignore_the_thread_count(at_thread_counts):
    """Issue 19: the IVF lists a large class is searched with are the same bits for 1, 2 and 4 threads."""
    import faiss

    from thresher.selectors.smote import class_searcher, ivf_nlist

    # 500 points x 10 copies with noise 1e-3: assignments near ties, where FAISS's k-means differs with the thread count
    rng = np.random.default_rng(0)
    x = (np.repeat(rng.standard_normal((500, 64)).astype(np.float32), 10, axis=0) + 1e-3 * rng.standard_normal((5000, 64))).astype(np.float32)
    nlist = ivf_nlist(len(x))

    def faiss_lists():  # what the class's IVF training ran before (every row of this class is in its training sample)
        kmeans = faiss.Kmeans(64, nlist, niter=10, seed=3, max_points_per_centroid=len(x))
        kmeans.train(x)
        return kmeans.centroids.copy()

    runs = at_thread_counts(faiss_lists)
    assert not all(np.array_equal(runs[0], r) for r in runs[1:])

    def build():
        search, report = class_searcher(x, 5, seed=3, exact_max_rows=1000)
        assert report["exact"] is False and report["index"] == f"IVF{nlist},Flat"
        # the lists and nprobe; not the measured recall: the search's float32 products come from numpy's BLAS, whose
        # last bits change with its thread count, and near-tie neighbours can swap (0.9742 against 0.9758 here)
        return search.centroids.tobytes(), [p.tolist() for p in search.list_positions], report["nprobe"]

    runs = at_thread_counts(build)
    assert all(r == runs[0] for r in runs[1:])
