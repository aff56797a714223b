"""Tests of the FAISS index artefact against numpy brute force (the independent oracle)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from thresher.exceptions import ArtifactError, DimensionMismatchError, InputDataError, ParameterError
from thresher.stores.arrow_io import write_stream_shard
from thresher.stores.index import (
    FaissIndex,
    build_index,
    choose_index_factory,
    exact_search,
    open_index,
)

DIM = 32


def normalized(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def gaussian(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def clustered(n: int, dim: int = DIM, n_clusters: int = 50, seed: int = 0) -> np.ndarray:
    """A mixture of Gaussians, like real embeddings (isotropic noise is the worst case for IVF)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim)) * 3.0
    labels = rng.integers(0, n_clusters, size=n)
    return (centres[labels] + rng.standard_normal((n, dim))).astype(np.float32)


def brute_force(data: np.ndarray, queries: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k in float64 with numpy, ties to the lower position (stable sort)."""
    data64, queries64 = data.astype(np.float64), queries.astype(np.float64)
    if metric == "ip":
        keys = -(queries64 @ data64.T)
    else:
        keys = (queries64**2).sum(1)[:, None] - 2 * queries64 @ data64.T + (data64**2).sum(1)[None, :]
    order = np.argsort(keys, axis=1, kind="stable")[:, :k]
    keys_k = np.take_along_axis(keys, order, axis=1)
    return (-keys_k if metric == "ip" else keys_k), order


def assert_same_neighbours(scores, positions, ref_scores, ref_positions, *, tol=1e-4):
    """Positions must agree exactly wherever the reference ranks are separated by more than ``tol``.

    ``ref_*`` hold k + 1 columns so the boundary of the top-k is known; float32
    rounding may only reorder neighbours whose exact scores are within ``tol``.
    """
    k = positions.shape[1]
    np.testing.assert_allclose(scores, ref_scores[:, :k], rtol=1e-4, atol=tol)
    gaps = np.abs(np.diff(ref_scores, axis=1))
    separated = np.ones_like(positions, dtype=bool)
    separated[:, 1:] &= gaps[:, : k - 1] > tol
    separated &= gaps[:, :k] > tol
    assert separated.mean() > 0.98, "the test data has too many near-ties to be a sharp check"
    np.testing.assert_array_equal(positions[separated], ref_positions[:, :k][separated])


# ----------------------------------------------------------------------------------------- exact search


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("block_rows", [37, 500, 4096, None])
def test_exact_search_matches_brute_force(make_store, metric, block_rows):
    data = gaussian(2500)
    store = make_store(data, n_shards=4)
    queries = gaussian(60, seed=1)
    scores, positions = exact_search(store, queries, 10, metric=metric, block_rows=block_rows)
    ref_scores, ref_positions = brute_force(data, queries, 11, metric)
    assert scores.shape == (60, 10) and scores.dtype == np.float32 and positions.dtype == np.int64
    assert_same_neighbours(scores, positions, ref_scores, ref_positions)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_exact_search_breaks_ties_by_lower_position_whatever_the_block_size(make_store, metric):
    # small integer vectors: every score is exact in float32, so ties are real ties
    rng = np.random.default_rng(3)
    base = rng.integers(-2, 3, size=(40, 8)).astype(np.float32)
    data = base[rng.integers(0, 40, size=600)]  # many duplicates
    store = make_store(data, n_shards=3)
    queries = base[:15]
    ref_scores, ref_positions = brute_force(data, queries, 25, metric)
    for block_rows in (1, 7, 64, 1000):
        scores, positions = exact_search(store, queries, 25, metric=metric, block_rows=block_rows)
        np.testing.assert_array_equal(positions, ref_positions)
        np.testing.assert_array_equal(scores, ref_scores.astype(np.float32))


def test_exact_search_on_an_array_equals_search_on_the_store(make_store):
    data = gaussian(900)
    store = make_store(data)
    queries = gaussian(20, seed=5)
    from_store = exact_search(store, queries, 7, metric="l2", block_rows=100)
    from_array = exact_search(data, queries, 7, metric="l2", block_rows=100)
    np.testing.assert_array_equal(from_store[1], from_array[1])
    # store blocks stop at shard ends, so BLAS sees other shapes: scores agree to float32 rounding
    np.testing.assert_allclose(from_store[0], from_array[0], rtol=1e-6)


def test_exact_search_pads_missing_neighbours(make_store):
    data = gaussian(5)
    store = make_store(data, n_shards=2)
    scores, positions = exact_search(store, data[:2], 8, metric="ip", block_rows=2)
    assert (positions[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all()
    assert sorted(positions[0, :5].tolist()) == [0, 1, 2, 3, 4]
    scores, positions = exact_search(store, data[:2], 8, metric="l2")
    assert (positions[:, 5:] == -1).all() and np.isposinf(scores[:, 5:]).all()


# ----------------------------------------------------------------------------------------- flat index


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_flat_index_matches_brute_force(make_store, tmp_path, metric):
    data = normalized(gaussian(3000)) if metric == "ip" else gaussian(3000)
    store = make_store(data, n_shards=4, normalized=metric == "ip")
    index = build_index(store, tmp_path / "index", index_type="flat", block_rows=700)
    assert index.metric == metric and index.is_exact and index.factory == "Flat"
    assert index.n_rows == 3000 and index.dim == DIM
    queries = gaussian(200, seed=9)
    scores, positions = index.search_positions(queries, 10)
    ref_scores, ref_positions = brute_force(data, queries, 11, metric)
    assert_same_neighbours(scores, positions, ref_scores, ref_positions)
    assert index.manifest["recall_at_10"] == pytest.approx(1.0)


def test_flat_index_pads_missing_neighbours(make_store, tmp_path):
    store = make_store(gaussian(6), n_shards=2)
    index = build_index(store, tmp_path / "index", metric="l2")
    scores, positions = index.search_positions(gaussian(3, seed=1), 9)
    assert (positions[:, 6:] == -1).all() and np.isposinf(scores[:, 6:]).all()
    _, ids = index.search(gaussian(3, seed=1), 9)
    assert (ids[:, 6:] == -1).all()


# ----------------------------------------------------------------------------------------- approximate indexes


def independent_recall(index: FaissIndex, data: np.ndarray, metric: str, n_queries: int = 300, seed: int = 123) -> float:
    """Recall@10 on store rows, each query's own row excluded, against float64 brute force."""
    rows = np.random.default_rng(seed).choice(len(data), size=n_queries, replace=False)
    _, approx = index.search_positions(data[rows], 11)
    _, exact = brute_force(data, data[rows], 11, metric)
    hits = 0.0
    for own, found, truth in zip(rows, approx, exact):
        found = [p for p in found if p != own][:10]
        truth = [p for p in truth if p != own][:10]
        hits += len(set(found) & set(truth)) / 10
    return hits / n_queries


@pytest.mark.parametrize(
    ("factory", "metric", "n_rows"),
    [("IVF64,Flat", "l2", 12_000), ("IVF64,Flat", "ip", 12_000), ("HNSW32", "ip", 6_000), ("HNSW16", "l2", 6_000)],
)
def test_approximate_index_reaches_recall_and_manifest_tells_the_truth(make_store, tmp_path, factory, metric, n_rows):
    data = clustered(n_rows)
    if metric == "ip":
        data = normalized(data)
    store = make_store(data, n_shards=5, normalized=metric == "ip")
    index = build_index(store, tmp_path / "index", index_type=factory, recall_sample=500, block_rows=2048)
    manifest = index.manifest
    assert not index.is_exact and manifest["factory"] == factory and manifest["metric"] == metric
    assert manifest["recall_n_queries"] == 500 and manifest["recall_k"] == 10
    measured = independent_recall(index, data, metric)
    assert measured >= 0.9
    assert manifest["recall_at_10"] == pytest.approx(measured, abs=0.03)
    if factory.startswith("IVF"):
        assert manifest["search_params"] == {"nprobe": 16}
        assert manifest["train_size"] == 10_000
    else:
        assert manifest["search_params"] == {"efSearch": 128} and manifest["train_size"] == 0


def test_ivf_pq_manifest_recall_matches_recomputation(make_store, tmp_path):
    data = clustered(12_000)
    store = make_store(data, n_shards=3)
    index = build_index(store, tmp_path / "index", index_type="IVF32,PQ4x8", nprobe=8, recall_sample=400)
    assert index.manifest["search_params"] == {"nprobe": 8}
    recall = independent_recall(index, data, "l2", n_queries=400)
    assert 0.0 < index.manifest["recall_at_10"] < 1.0
    assert index.manifest["recall_at_10"] == pytest.approx(recall, abs=0.06)


def test_low_nprobe_lowers_recorded_recall(make_store, tmp_path):
    data = gaussian(8_000)
    store = make_store(data)
    low = build_index(store, tmp_path / "low", index_type="IVF64,Flat", nprobe=1, train_size=4000)
    high = build_index(store, tmp_path / "high", index_type="IVF64,Flat", nprobe=64, train_size=4000)
    assert high.manifest["recall_at_10"] == pytest.approx(1.0)
    assert low.manifest["recall_at_10"] < 0.9


def test_ivf_build_is_deterministic(make_store, tmp_path):
    data = clustered(6_000)
    store = make_store(data)
    a = build_index(store, tmp_path / "a", index_type="IVF32,Flat", nprobe=2, seed=7)
    b = build_index(store, tmp_path / "b", index_type="IVF32,Flat", nprobe=2, seed=7)
    queries = clustered(50, seed=2)
    np.testing.assert_array_equal(a.search_positions(queries, 10)[1], b.search_positions(queries, 10)[1])
    assert a.manifest["recall_at_10"] == b.manifest["recall_at_10"]
    assert a.manifest["fingerprint"] == b.manifest["fingerprint"]


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_ivf_index_is_the_same_file_for_any_thread_count(make_store, tmp_path, at_thread_counts, metric):
    import faiss

    # 500 points x 10 copies with noise 1e-3: assignments near ties, where FAISS's k-means differs with the thread count
    rng = np.random.default_rng(0)
    data = (np.repeat(rng.standard_normal((500, 64)).astype(np.float32), 10, axis=0) + 1e-3 * rng.standard_normal((5000, 64))).astype(np.float32)
    data = normalized(data) if metric == "ip" else data
    store = make_store(data, normalized=metric == "ip")
    if metric == "l2":  # the trainer build_index used before, on these rows: another quantiser with 4 threads than with 1
        def faiss_quantiser():
            index = faiss.index_factory(64, "IVF64,Flat", faiss.METRIC_L2)
            index.train(data[:4000])
            return faiss.extract_index_ivf(index).quantizer.reconstruct_n(0, 64)
        runs = at_thread_counts(faiss_quantiser)
        assert not all(np.array_equal(runs[0], r) for r in runs[1:])
    counter = iter(range(3))
    built = at_thread_counts(lambda: build_index(store, tmp_path / f"index-{next(counter)}", index_type="IVF64,Flat", metric=metric,
                                                 train_size=4000, nprobe=4, seed=7))
    assert len({b.manifest["files"]["index.faiss"] for b in built}) == 1  # the same bytes on disk
    queries = data[::50]
    np.testing.assert_array_equal(built[0].search_positions(queries, 10)[1], built[2].search_positions(queries, 10)[1])


# ----------------------------------------------------------------------------------------- ids, kneighbors, persistence


@pytest.mark.parametrize("kind", ["str", "int"])
def test_ids_map_to_the_right_rows(make_store, tmp_path, kind):
    n = 1500
    rng = np.random.default_rng(4)
    if kind == "str":
        ids = [f"doc-{j}" for j in rng.permutation(n)]
    else:
        ids = rng.choice(10**12, size=n, replace=False).tolist()
    data = gaussian(n)
    store = make_store(data, ids=ids, n_shards=4)
    index = build_index(store, tmp_path / "index", metric="l2")
    np.testing.assert_array_equal(index.ids(), np.asarray(ids, dtype=object if kind == "str" else np.int64))
    _, found = index.search(data[[3, 700, 1499]], 1)
    assert found[:, 0].tolist() == [ids[3], ids[700], ids[1499]]
    assert found.dtype == (object if kind == "str" else np.int64)
    queries = gaussian(30, seed=8)
    _, positions = index.search_positions(queries, 5)
    _, found = index.search(queries, 5)
    assert found.tolist() == [[ids[p] for p in row] for row in positions.tolist()]
    _, found = index.search(queries, n + 2)
    assert (found[:, -2:] == (None if kind == "str" else -1)).all()


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_kneighbors_is_consistent_with_search(make_store, tmp_path, metric):
    data = normalized(gaussian(1200)) if metric == "ip" else gaussian(1200)
    store = make_store(data)
    index = build_index(store, tmp_path / "index", metric=metric)
    queries = data[:40]
    scores, positions = index.search_positions(queries, 6)
    distances, neighbours = index.kneighbors(queries, n_neighbors=6)
    np.testing.assert_array_equal(neighbours, positions)
    expected = 1.0 - scores if metric == "ip" else np.sqrt(np.maximum(scores, 0))
    np.testing.assert_allclose(distances, expected, rtol=1e-6, atol=1e-6)
    assert (np.diff(distances, axis=1) >= -1e-6).all()
    assert neighbours[:, 0].tolist() == list(range(40))  # each row is its own nearest neighbour
    np.testing.assert_allclose(distances[:, 0], 0.0, atol=1e-3)
    np.testing.assert_array_equal(index.kneighbors(queries, 6, return_distance=False), positions)
    if metric == "l2":
        ref = np.sqrt(((queries[:, None, :].astype(np.float64) - data[positions].astype(np.float64)) ** 2).sum(-1))
        np.testing.assert_allclose(distances, ref, rtol=1e-4, atol=1e-3)


def test_open_index_round_trip(make_store, tmp_path):
    data = clustered(5000)
    store = make_store(data)
    built = build_index(store, tmp_path / "index", index_type="IVF16,Flat", nprobe=4, train_size=2000)
    opened = open_index(tmp_path / "index", verify=True, store=store)
    queries = clustered(100, seed=3)
    for a, b in zip(built.search(queries, 10), opened.search(queries, 10)):
        np.testing.assert_array_equal(a, b)
    assert opened.search_params == {"nprobe": 4} and opened.factory == "IVF16,Flat"
    assert opened.manifest == built.manifest
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert manifest["artifact"] == "index" and manifest["n_rows"] == 5000 and manifest["dim"] == DIM
    assert manifest["embedding_store"]["fingerprint"] == store.fingerprint
    assert manifest["train_size"] == 2000 and manifest["build_seconds"] >= 0
    assert not (tmp_path / "index" / ".thresher-partial.json").exists()


def test_empty_query_batch(make_store, tmp_path):
    store = make_store(gaussian(50))
    index = build_index(store, tmp_path / "index")
    scores, ids = index.search(np.empty((0, DIM), np.float32), 3)
    assert scores.shape == (0, 3) and ids.shape == (0, 3)


def test_float16_store(make_store, tmp_path):
    data = gaussian(800)
    store = make_store(data, dtype="float16")
    index = build_index(store, tmp_path / "index", metric="ip")
    half = data.astype(np.float16).astype(np.float32)  # what the store holds
    queries = gaussian(40, seed=6)
    ref_scores, ref_positions = brute_force(half, queries, 6, "ip")
    assert_same_neighbours(*index.search_positions(queries, 5), ref_scores, ref_positions)


# ----------------------------------------------------------------------------------------- choosing a factory


def test_choose_index_factory():
    gib = 1 << 30
    assert choose_index_factory(50_000, 384, metric="ip", memory_budget_bytes=4 * gib) == "Flat"
    assert choose_index_factory(200_000, 384, metric="ip", memory_budget_bytes=4 * gib) == "HNSW32"
    assert choose_index_factory(1_000_000, 384, metric="ip", memory_budget_bytes=4 * gib).startswith("IVF")  # HNSW builds too slowly
    ivf = choose_index_factory(5_000_000, 384, metric="l2", memory_budget_bytes=16 * gib)
    nlist = 2 ** round(math.log2(4 * math.sqrt(5_000_000)))
    assert ivf == f"IVF{nlist},Flat"
    pq = choose_index_factory(5_000_000, 384, metric="l2", memory_budget_bytes=gib)
    assert pq.startswith(f"IVF{nlist},PQ") and pq.endswith("x8")
    m = int(pq.split("PQ")[1].split("x")[0])
    assert 384 % m == 0 and 5_000_000 * (m + 8) <= gib
    # a bigger budget never gives smaller codes
    bigger = choose_index_factory(5_000_000, 384, metric="l2", memory_budget_bytes=2 * gib)
    assert int(bigger.split("PQ")[1].split("x")[0]) >= m
    # small pools over a small budget fall through to IVF
    assert choose_index_factory(50_000, 384, metric="ip", memory_budget_bytes=70_000_000).startswith("IVF")


def test_choose_index_factory_refuses_a_budget_too_small():
    with pytest.raises(ParameterError, match="memory_budget_bytes"):
        choose_index_factory(5_000_000, 384, metric="ip", memory_budget_bytes=10_000_000)
    with pytest.raises(ParameterError, match="memory_budget_bytes"):
        choose_index_factory(1000, 384, metric="ip", memory_budget_bytes=1000)
    for bad in ({"n_rows": 0}, {"dim": -1}, {"metric": "cosine"}, {"memory_budget_bytes": 0}):
        args = {"n_rows": 10, "dim": 4, "metric": "ip", "memory_budget_bytes": 10**6, **bad}
        with pytest.raises(ParameterError, match=next(iter(bad))):
            choose_index_factory(args.pop("n_rows"), args.pop("dim"), **args)


def test_auto_uses_the_memory_budget(make_store, tmp_path):
    store = make_store(clustered(12_000))
    flat = build_index(store, tmp_path / "flat")
    assert flat.factory == "Flat"
    tight = build_index(store, tmp_path / "tight", memory_budget_bytes=1_200_000)
    assert tight.factory.startswith("IVF") and "PQ" in tight.factory
    assert tight.manifest["recall_at_10"] is not None


# ----------------------------------------------------------------------------------------- errors


@pytest.fixture
def small_index(make_store, tmp_path):
    store = make_store(gaussian(300))
    return store, build_index(store, tmp_path / "index", metric="l2")


def test_query_dimension_mismatch_names_both_dims_and_the_path(small_index):
    _, index = small_index
    with pytest.raises(DimensionMismatchError) as info:
        index.search(gaussian(3, dim=16), 2)
    message = str(info.value)
    assert "16" in message and str(DIM) in message and str(index.path) in message
    with pytest.raises(DimensionMismatchError):
        index.kneighbors(gaussian(3, dim=48))


@pytest.mark.parametrize("k", [0, -1, 1.5, True, "3"])
def test_bad_k_is_refused(small_index, k):
    store, index = small_index
    with pytest.raises(ParameterError, match="'k'"):
        index.search(gaussian(2), k)
    with pytest.raises(ParameterError, match="'k'"):
        exact_search(store, gaussian(2), k, metric="l2")


def test_non_finite_or_malformed_queries_are_refused(small_index):
    store, index = small_index
    queries = gaussian(4)
    queries[2, 5] = np.nan
    with pytest.raises(InputDataError, match="row 2"):
        index.search(queries, 3)
    queries[2, 5] = np.inf
    with pytest.raises(InputDataError, match="row 2"):
        exact_search(store, queries, 3, metric="l2")
    with pytest.raises(InputDataError, match="2-D"):
        index.search(gaussian(1)[0], 3)


def test_empty_store_is_refused(make_store, tmp_path):
    store = make_store(np.empty((0, DIM), np.float32), n_shards=1)
    assert store.n_rows == 0
    with pytest.raises(ParameterError, match="0 rows"):
        build_index(store, tmp_path / "index")


def test_bad_build_parameters(make_store, tmp_path):
    store = make_store(clustered(2000))
    cases = [
        ({"index_type": "NotAnIndex"}, "index_type"),
        ({"metric": "cosine"}, "metric"),
        ({"index_type": "IVF16,Flat", "train_size": 5000}, "train_size"),
        ({"index_type": "IVF16,Flat", "nprobe": 32}, "nprobe"),
        ({"index_type": "IVF16,Flat", "nprobe": 0}, "nprobe"),
        ({"recall_sample": -1}, "recall_sample"),
        ({"seed": -3}, "seed"),
        ({"index_type": "IDMap,Flat"}, "index_type"),  # needs add_with_ids
        ({"index_type": "IVF4096,Flat"}, "train_size"),  # fewer training rows than lists
    ]
    for i, (kwargs, name) in enumerate(cases):
        with pytest.raises(ParameterError, match=name):
            build_index(store, tmp_path / f"index-{i}", **kwargs)


def test_id_map_of_the_wrong_length_is_refused(small_index):
    import pyarrow as pa

    _, index = small_index
    write_stream_shard(index.path / "ids.arrow", pa.table({"id": pa.array(np.arange(299, dtype=np.int64))}))
    with pytest.raises(ArtifactError, match="299"):
        open_index(index.path)


def test_verify_detects_a_corrupt_index_file(small_index):
    _, index = small_index
    path = index.path / "index.faiss"
    raw = bytearray(path.read_bytes())
    raw[-8] ^= 0xFF
    path.write_bytes(bytes(raw))
    open_index(index.path)  # a flipped vector byte still reads ...
    with pytest.raises(ArtifactError, match="checksum"):
        open_index(index.path, verify=True)  # ... but not past its checksum


def test_open_index_checks_the_store(small_index, make_store):
    store, index = small_index
    open_index(index.path, store=store)
    with pytest.raises(DimensionMismatchError, match=str(DIM)):
        open_index(index.path, store=make_store(gaussian(300, dim=16), name="narrow"))
    with pytest.raises(ArtifactError, match="fingerprint"):
        open_index(index.path, store=make_store(gaussian(300, seed=5), name="other"))
    with pytest.raises(ArtifactError):
        open_index(store.path)  # an embeddings artefact, not an index


# ----------------------------------------------------------------------------------------- output directory


def test_rerun_on_a_complete_directory_reuses_it(make_store, tmp_path):
    store = make_store(clustered(3000))
    first = build_index(store, tmp_path / "index", index_type="HNSW16")
    stamp = (tmp_path / "index" / "index.faiss").stat().st_mtime_ns
    again = build_index(store, tmp_path / "index", index_type="HNSW16")
    assert (tmp_path / "index" / "index.faiss").stat().st_mtime_ns == stamp
    assert again.manifest == first.manifest
    with pytest.raises(ArtifactError, match="other inputs or parameters"):
        build_index(store, tmp_path / "index", index_type="HNSW16", ef_search=32)
    replaced = build_index(store, tmp_path / "index", index_type="HNSW16", ef_search=32, overwrite=True)
    assert replaced.search_params == {"efSearch": 32}


def test_directory_holding_another_artefact_is_refused(make_store, tmp_path):
    store = make_store(gaussian(100))
    with pytest.raises(ParameterError, match="is the input 'store'"):  # the output guard: an input is never an output
        build_index(store, store.path)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ArtifactError):
        build_index(store, foreign, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_exact_index_recall_is_one_on_a_pool_full_of_duplicates(make_store, tmp_path):
    # duplicates make equal scores that FAISS and exact search may order differently: recall must not count those as misses
    rng = np.random.default_rng(5)
    base = rng.normal(size=(60, 16)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    vectors = base[rng.integers(0, 60, size=600)]
    store = make_store(vectors, normalized=True)
    index = build_index(store, tmp_path / "flat", index_type="flat", recall_sample=200)
    assert index.manifest["recall_at_10"] == pytest.approx(1.0)
