"""RDS+ against its brute-force definition, on arrays and stores, whatever the block size."""

from __future__ import annotations

import numpy as np
import pytest

from thresher.exceptions import DimensionMismatchError, InputDataError, ParameterError
from thresher.selectors.rds import RDSPlus, brute_force_rds, round_robin
from thresher.stores import finalize_embedding_store, open_embedding_store, write_embedding_shard


def make_data(seed=0, n=3000, dim=48, n_tasks=3):
    rng = np.random.default_rng(seed)
    pool = rng.normal(size=(n, dim)).astype(np.float32)
    targets = {f"task{t}": rng.normal(size=(5 + 7 * t, dim)).astype(np.float32) for t in range(n_tasks)}
    return pool, targets


def write_store(path, vectors, ids, n_shards=4):
    path.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, len(vectors), n_shards + 1).astype(int)
    shards = [write_embedding_shard(path, i, ids[a:b], vectors[a:b]) for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]
    finalize_embedding_store(path, shards=shards, fingerprint="f", dim=vectors.shape[1], dtype="float32", encoder={"normalize": False}, pool={})
    return open_embedding_store(path)


@pytest.mark.parametrize("aggregation", ["max", "mean"])
@pytest.mark.parametrize("n_tasks", [1, 3])
def test_equals_brute_force_for_any_block_size(aggregation, n_tasks):
    pool, targets = make_data(n_tasks=n_tasks)
    expected_positions, expected_task = brute_force_rds(pool, targets, 400, aggregation=aggregation)
    for block_rows in (1, 7, 333, 100_000):
        sel = RDSPlus(aggregation=aggregation, block_rows=block_rows).select(pool, budget=400, targets=targets)
        np.testing.assert_array_equal(sel.positions, expected_positions)
        np.testing.assert_array_equal(sel.columns["task"], np.array(list(targets), dtype=object)[expected_task])


def test_scores_are_cosines_checked_against_plain_numpy():
    pool, targets = make_data(n_tasks=2)
    sel = RDSPlus().select(pool, budget=50, targets=targets)
    x = pool[sel.positions].astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for t, q in enumerate(targets.values()):
        q = q.astype(np.float64) / np.linalg.norm(q.astype(np.float64), axis=1, keepdims=True)
        np.testing.assert_allclose(sel.columns["task_scores"][:, t], (x @ q.T).max(axis=1), atol=1e-12)
    picked = np.array([list(targets).index(t) for t in sel.columns["task"]])
    np.testing.assert_array_equal(sel.score, sel.columns["task_scores"][np.arange(50), picked])
    # one task: the top of the ranking by score, best first
    single = RDSPlus().select(pool, budget=30, targets={"a": targets["task0"]})
    assert np.all(np.diff(single.score) <= 0)


def test_round_robin_spends_turn_on_already_chosen():
    # task 0 ranks 5, 6, 7; task 1 ranks 5, 8, 9: round 0 picks 5 (task 0); task 1's 5 is spent; round 1 picks 6, 8 …
    positions, task = round_robin([np.array([5, 6, 7]), np.array([5, 8, 9])], 4)
    assert positions.tolist() == [5, 6, 8, 7] and task.tolist() == [0, 0, 1, 0]
    positions, task = round_robin([np.array([5, 6, 7]), np.array([5, 8, 9])], 4, quotas=[1, 3])
    assert positions.tolist() == [5, 8, 9] and task.tolist() == [0, 1, 1]  # task 0 stops at its quota; lists run out


def test_ties_go_to_the_lower_position_not_the_string_order(tmp_path):
    rng = np.random.default_rng(1)
    base = rng.normal(size=(4, 16)).astype(np.float32)
    vectors = np.repeat(base, 6, axis=0)  # 6 exact copies of each row: all ties
    ids = [str(i) for i in range(24)]  # as strings, "10" < "9"
    store = write_store(tmp_path / "s", vectors, ids, n_shards=5)
    targets = {"t": base[:1] + 0.01}
    sel = RDSPlus(block_rows=5).select(store, budget=8, targets=targets)
    first_group = sel.positions[:6]
    assert first_group.tolist() == sorted(first_group.tolist())
    np.testing.assert_array_equal(sel.positions, brute_force_rds(vectors, targets, 8)[0])
    assert sel.ids.tolist() == [ids[p] for p in sel.positions]


def test_store_and_array_give_the_same_selection(tmp_path):
    pool, targets = make_data(seed=4, n=1200)
    store = write_store(tmp_path / "s", pool, [f"r{i}" for i in range(len(pool))], n_shards=7)
    a = RDSPlus().select(pool, budget=0.1, targets=targets)
    b = RDSPlus(block_rows=100).select(store, budget=120, targets=targets)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.score, b.score)
    assert b.ids.tolist() == [f"r{p}" for p in a.positions]


def test_exclusions_and_decontamination():
    pool, targets = make_data(seed=2, n=500, n_tasks=1)
    q = targets["task0"]
    pool[10] = q[0] * 3  # a copy of a target example (cosine 1)
    base = RDSPlus().select(pool, budget=20, targets=targets)
    assert base.positions[0] == 10
    clean = RDSPlus(decontaminate=0.95).select(pool, budget=20, targets=targets)
    assert 10 not in clean.positions and clean.summary["n_decontaminated"] == 1
    excluded = RDSPlus().select(pool, budget=20, targets=targets, exclude=base.positions[:5])
    assert not set(excluded.positions) & set(base.positions[:5])
    assert excluded.positions.tolist() == base.positions[5:].tolist() + excluded.positions[15:].tolist()


def test_quotas_limit_each_task():
    pool, targets = make_data(n_tasks=2)
    sel = RDSPlus().select(pool, budget=30, targets=targets, quotas={"task0": 5, "task1": 25})
    assert sel.summary["per_task_selected"] == {"task0": 5, "task1": 25}


def test_bad_inputs_are_named():
    pool, targets = make_data(n=100)
    with pytest.raises(ParameterError, match="at least one target"):
        RDSPlus().select(pool, budget=5, targets={})
    with pytest.raises(InputDataError, match="'empty' has no query"):
        RDSPlus().select(pool, budget=5, targets={"empty": np.zeros((0, 48), np.float32)})
    with pytest.raises(DimensionMismatchError, match="width 48.*width 10"):
        RDSPlus().select(pool, budget=5, targets={"t": np.ones((2, 10), np.float32)})
    bad = pool.copy()
    bad[17] = 0
    with pytest.raises(InputDataError, match="Row 17 of the pool is a zero vector"):
        RDSPlus().select(bad, budget=5, targets=targets)
    with pytest.raises(ParameterError, match="only 100 are available.*budget=1.0"):
        RDSPlus().select(pool, budget=101, targets=targets)
    with pytest.raises(ParameterError, match="'budget' parameter of RDSPlus"):
        RDSPlus().select(pool, budget=0, targets=targets)
    with pytest.raises(ParameterError, match="'aggregation'"):
        RDSPlus(aggregation="median").select(pool, budget=5, targets=targets)
    with pytest.raises(ParameterError, match="not targets"):
        RDSPlus().select(pool, budget=5, targets=targets, quotas={"nope": 5})


def test_round_robin_passes_over_rows_of_a_full_group_without_spending_the_turn():
    groups = np.array([0, 0, 1, 1, 0, 1, 0, 1, 1, 1])  # group of each position
    caps = np.array([1, 10])
    # task 0 ranks 0, 1, 2; task 1 ranks 4, 3, 5: 0 (group 0) fills group 0, so task 1 passes over 4 and takes 3
    positions, task = round_robin([np.array([0, 1, 2]), np.array([4, 3, 5])], 4, groups=groups, group_caps=caps)
    assert positions.tolist() == [0, 3, 2, 5] and task.tolist() == [0, 1, 0, 1]


def test_group_quotas_equal_the_definition_and_score_deeper_when_caps_bite():
    pool, targets = make_data(n_tasks=2, n=2000)
    plain, _ = brute_force_rds(pool, targets, 300)
    groups = np.full(len(pool), "web", dtype=object)
    groups[plain[:250]] = "forum"  # the rows RDS+ likes best are capped: each task must look past its top 100
    groups[::97] = "books"
    quotas = {"forum": 10, "books": 3}
    expected_positions, expected_task = brute_force_rds(pool, targets, 100, groups=groups, group_quotas=quotas)
    sel = RDSPlus(block_rows=333).select(pool, budget=100, targets=targets, groups=groups, group_quotas=quotas)
    np.testing.assert_array_equal(sel.positions, expected_positions)
    np.testing.assert_array_equal(sel.columns["task"], np.array(list(targets), dtype=object)[expected_task])
    picked = groups[sel.positions]
    assert (picked == "forum").sum() == 10 and (picked == "books").sum() <= 3
    assert sel.summary["per_group_selected"]["forum"] == 10 and sel.params["group_quotas"] == quotas
    assert sel.summary["ranking_depth"] > 100  # the first top-100 rankings ran out and were scored again deeper


@pytest.mark.parametrize("groups,quotas,message", [
    (None, {"a": 1}, "groups and group_quotas together"),
    (np.array(["a"] * 10, dtype=object), {"b": 1}, "name groups no row has"),
    (np.array(["a"] * 10, dtype=object), {"a": -1}, "counts >= 0"),
    (np.array(["a"] * 9, dtype=object), {"a": 1}, "one value per pool row"),
    (np.array(["a"] * 10, dtype=object), {"a": 3}, "only 3 rows within the group quotas"),
])
def test_bad_group_quotas_are_refused(groups, quotas, message):
    pool, targets = make_data(n_tasks=1, n=10)
    with pytest.raises(ParameterError, match=message):
        RDSPlus().select(pool, budget=5, targets=targets, groups=groups, group_quotas=quotas)


def test_score_partition_is_deprecated_and_still_works():
    from thresher.selectors._base import ArrayPool
    from thresher.selectors.rds import RDSState

    x, targets = make_data(n=400)
    selector = RDSPlus()
    pool = ArrayPool(x)
    scorer = selector.scorer(targets)
    with pytest.warns(DeprecationWarning, match=r"RDSPlus\.partial"):
        top, counts = selector.score_partition(pool.iter_blocks(97), scorer, 20, pool.take)
    new = selector.partial(RDSState(scorer, 20), pool.iter_blocks(97), pool)
    for (s_old, p_old), (s_new, p_new) in zip(top.finish(), new.top.finish()):
        np.testing.assert_array_equal(p_old, p_new)
        np.testing.assert_array_equal(s_old, s_new)
    assert counts == new.counts and counts["n_scored"] == 400


@pytest.mark.parametrize("aggregation", ["max", "mean"])
def test_nearest_target_is_the_brute_force_argmax(aggregation, tmp_path):
    """Each selected row's closest example per task equals numpy's argmax over the float64 cosines (ties: the lower position)."""
    pool, targets = make_data(n=800, n_tasks=2)
    targets["task1"] = np.concatenate([targets["task1"], targets["task1"][:3]])  # exact ties: the first copy must win
    store = write_store(tmp_path / "store", pool, np.arange(len(pool)))
    for source in (pool, store):
        for block_rows in (5, 100_000):
            sel = RDSPlus(aggregation=aggregation, block_rows=block_rows).select(source, budget=120, targets=targets)
            x = pool[sel.positions].astype(np.float64)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            nearest = sel.columns["nearest_target"]
            assert nearest.shape == (120, 2) and nearest.dtype == np.int64
            for t, q in enumerate(targets.values()):
                q = q.astype(np.float64) / np.linalg.norm(q.astype(np.float64), axis=1, keepdims=True)
                cos = x @ q.T
                np.testing.assert_array_equal(nearest[:, t], cos.argmax(axis=1))
                assert nearest[:, t].max() < len(targets["task0"]) + 7 * t  # never one of the duplicated tail copies
                if aggregation == "max":
                    np.testing.assert_allclose(sel.columns["task_scores"][:, t], cos.max(axis=1), atol=1e-12)


def test_nearest_targets_streams_in_blocks_with_the_same_answer():
    pool, targets = make_data(n=500, n_tasks=3)
    from thresher.selectors.rds import RDSScorer

    scorer = RDSScorer(targets)
    whole = scorer.nearest_targets(pool)
    for block_rows in (1, 13, 499):
        parts = scorer.nearest_targets(pool, block_rows=block_rows)
        np.testing.assert_array_equal(parts[0], whole[0])
        np.testing.assert_array_equal(parts[1], whole[1])
