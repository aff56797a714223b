"""B3's teacher depth (issue 13): with an IVF index, the fewest probed lists whose rank windows hold ``teacher_recall``
of the exact windows, checked against FAISS searched directly and numpy brute force."""

from __future__ import annotations

import numpy as np
import pytest

from thresher.selectors.batch_mining import BatchMiner, TEACHER_SAMPLE_ROWS, choose_teacher_depth
from thresher.stores import build_index, finalize_embedding_store, open_embedding_store, write_embedding_shard
from thresher.stores.subset import StoreSubset, SubsetNeighbors

P, M = 10, 40


@pytest.fixture(scope="module")
def store_and_index(topics, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("teacher")
    x = topics(6000, 24, 40, seed=3, noise=0.9)
    store_dir = tmp / "store"
    store_dir.mkdir()
    shards = [write_embedding_shard(store_dir, i, np.arange(lo, lo + 3000), x[lo : lo + 3000]) for i, lo in enumerate((0, 3000))]
    finalize_embedding_store(store_dir, shards=shards, fingerprint="t", dim=24, dtype="float32", encoder={"normalize": True}, pool={})
    store = open_embedding_store(store_dir)
    index = build_index(store, tmp / "index", index_type="IVF64,Flat", recall_sample=0)
    return x, store, index


def sample_rows(n: int, seed: int) -> np.ndarray:
    from thresher.rng import as_generator, derive_seed

    return np.sort(as_generator(derive_seed(seed, "b3-teacher-depth")).choice(n, size=min(TEACHER_SAMPLE_ROWS, n), replace=False))


def windows_by_faiss(index, x: np.ndarray, rows: np.ndarray, nprobe: int) -> np.ndarray:
    """Rank windows [P, P + M) of ``rows`` through FAISS's own IVF search at ``nprobe``, self dropped."""
    import faiss

    ivf = faiss.extract_index_ivf(index.faiss_index)
    before, ivf.nprobe = ivf.nprobe, nprobe
    try:
        _, found = index.faiss_index.search(x[rows], P + M + 1)
    finally:
        ivf.nprobe = before
    return np.array([[f for f in row if f != r][P : P + M] for row, r in zip(found, rows)])


def exact_windows(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    scores = x[rows].astype(np.float64) @ x.astype(np.float64).T
    scores[np.arange(len(rows)), rows] = -np.inf
    order = np.lexsort((np.broadcast_to(np.arange(len(x)), scores.shape), -scores), axis=1)
    return order[:, P : P + M]


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([np.isin(e, f).mean() for e, f in zip(exact, found)]))


def test_the_depth_is_the_fewest_lists_reaching_the_target(store_and_index):
    x, store, index = store_and_index
    import faiss

    own = faiss.extract_index_ivf(index.faiss_index).nprobe
    rows = sample_rows(len(x), 0)
    exact = exact_windows(x, rows)
    by_faiss = {n: recall(windows_by_faiss(index, x, rows, n), exact) for n in (1, 2, 4, 8, 16, 32, 64)}
    assert by_faiss[1] < 0.9 < by_faiss[64]  # the data make the choice matter
    target = 0.9
    depth = choose_teacher_depth(store, index, P, M, target, seed=0)
    assert depth.sample == len(rows) and depth.target == target
    assert depth.window_recall == pytest.approx(by_faiss[depth.nprobe], abs=0.01)
    assert by_faiss[depth.nprobe] >= target - 0.01
    assert depth.nprobe == 1 or by_faiss[depth.nprobe // 2] < target + 0.01  # the fewest lists (up to ties within 1%)
    assert list(depth.ladder) == [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= depth.nprobe]
    for n, r in depth.ladder.items():
        assert r == pytest.approx(by_faiss[n], abs=0.01)
    assert faiss.extract_index_ivf(index.faiss_index).nprobe == own  # the index's own depth is left as it was


def test_b3_searches_at_the_chosen_depth_and_records_it(store_and_index):
    x, store, index = store_and_index
    import faiss

    miner = BatchMiner(batch_size=64, community_size=16, rank_window=(P, P + M), teacher_recall=0.7, seed=1)
    chosen = miner.select(store, budget=1.0, neighbors=index)
    teacher = chosen.summary["teacher"]
    assert teacher["target"] == 0.7 and teacher["window_recall"] >= 0.7
    ivf = faiss.extract_index_ivf(index.faiss_index)
    own = ivf.nprobe
    assert teacher["nprobe"] != own  # else this test could not tell the depths apart
    # the same batches as the index set by hand to that depth, with the automatic choice off
    ivf.nprobe = teacher["nprobe"]
    try:
        by_hand = BatchMiner(batch_size=64, community_size=16, rank_window=(P, P + M), teacher_recall=None, seed=1).select(
            store, budget=1.0, neighbors=index)
    finally:
        ivf.nprobe = own
    np.testing.assert_array_equal(chosen.positions, by_hand.positions)
    assert by_hand.summary["teacher"] is None
    # and not those of the index's own depth
    own_depth = BatchMiner(batch_size=64, community_size=16, rank_window=(P, P + M), teacher_recall=None, seed=1).select(
        store, budget=1.0, neighbors=index)
    assert not np.array_equal(chosen.positions, own_depth.positions)


def test_a_subsets_depth_is_measured_among_the_subset(store_and_index):
    """Ranks among a subset go through FAISS's filtered search (depth / the subset's share): measured on that path."""
    x, store, index = store_and_index
    subset = np.arange(0, len(x), 2)
    pool, searcher = StoreSubset(store, subset), SubsetNeighbors(store, subset, index)
    depth = choose_teacher_depth(pool, searcher, P, M, 0.9, seed=0)
    rows = sample_rows(len(subset), 0)
    exact = exact_windows(x[subset], rows)
    import faiss

    ivf = faiss.extract_index_ivf(index.faiss_index)
    own = ivf.nprobe
    ivf.nprobe = depth.nprobe
    try:
        _, found = searcher.search_positions(x[subset][rows], P + M + 1)
    finally:
        ivf.nprobe = own
    windows = np.array([[f for f in row if f != r][P : P + M] for row, r in zip(found, rows)])
    assert depth.window_recall == pytest.approx(recall(windows, exact), abs=1e-9) and depth.window_recall >= 0.9


def test_no_ivf_no_depth(store_and_index):
    x, store, _ = store_and_index
    miner = BatchMiner(batch_size=64, community_size=16, rank_window=(P, P + M))
    assert miner.teacher_depth(store, None) is None
    assert miner.select(store, budget=1.0).summary["teacher"] is None
    with pytest.raises(Exception, match="teacher_recall"):
        BatchMiner(teacher_recall=1.5).validate_params()
