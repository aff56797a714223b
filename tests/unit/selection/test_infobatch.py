"""InfoBatch (Qin et al., ICLR 2024): plans checked against the definition computed independently here."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

from thresher.exceptions import ArtifactError, InputDataError, ParameterError
from thresher.selectors.infobatch import InfoBatch
from thresher.training import apply_loss_shards, load_state, save_state, write_loss_shard


def losses_for(epoch: int, indices: np.ndarray) -> np.ndarray:
    """A deterministic, skewed per-sample loss that shrinks with the epoch (a stand-in for training)."""
    rng = np.random.default_rng(1000 + epoch)
    base = rng.exponential(size=int(indices.max()) + 1 if len(indices) else 1)
    return (base[indices] / (1 + epoch)).astype(np.float32)


def run_epochs(ib: InfoBatch, epochs: range) -> list:
    plans = []
    for e in epochs:
        plan = ib.start_epoch(e)
        plans.append(plan)
        ib.update(plan.indices, losses_for(e, plan.indices))
    return plans


def check_plan_definition(ib: InfoBatch, scores: np.ndarray, plan) -> None:
    """The plan of a pruning epoch, against the paper's definition computed from ``scores`` here."""
    r = Fraction(str(ib.prune_ratio))
    threshold = scores.astype(np.float64).sum() / len(scores)
    well = scores < threshold
    n_well = int(well.sum())
    n_keep = math.floor((1 - r) * n_well)
    assert plan.pruning
    assert plan.threshold == pytest.approx(threshold, rel=1e-12)
    assert plan.n_well == n_well
    assert plan.n_kept_well == n_keep
    assert plan.indices.dtype == np.int64 and plan.weights.dtype == np.float32
    assert len(np.unique(plan.indices)) == plan.n_kept == (len(scores) - n_well) + n_keep
    assert (np.diff(plan.indices) < 0).any()  # shuffled, not in index order
    in_plan = np.zeros(len(scores), bool)
    in_plan[plan.indices] = True
    assert in_plan[~well].all()  # every not-well-learned sample is trained
    assert int(in_plan[well].sum()) == n_keep
    expected_w = np.where(well[plan.indices], np.float32(1 / (1 - float(r))), np.float32(1.0))
    np.testing.assert_array_equal(plan.weights, expected_w)
    np.testing.assert_array_equal(ib.weights(plan.indices), plan.weights)  # after start_epoch


@pytest.mark.parametrize("prune_ratio", [0.0, 0.3, 0.5, 0.7, 0.9])
def test_plan_matches_definition(prune_ratio):
    ib = InfoBatch(n_samples=5003, epochs=20, prune_ratio=prune_ratio, seed=3)
    run_epochs(ib, range(3))
    scores = np.array(ib.scores)
    plan = ib.start_epoch(3)
    check_plan_definition(ib, scores, plan)
    assert plan.n_well > 1000  # the check above is not vacuous


def test_keep_count_follows_the_decimal_ratio():
    # floor((1 - 0.9) * 10) is 1; binary floating point gives int(0.09999999999999998 * 10) = 0.
    ib = InfoBatch(n_samples=20, epochs=4, prune_ratio=0.9)
    ib.update(np.arange(10), np.zeros(10))  # ten well-learned (0 < mean 1.5), ten at 3.0
    plan = ib.start_epoch(0)
    assert (plan.n_well, plan.n_kept_well, plan.n_kept) == (10, 1, 11)
    assert sorted(plan.weights.tolist()) == [1.0] * 10 + [pytest.approx(10.0)]


def test_unseen_samples_start_at_initial_score_and_nothing_is_pruned_at_first():
    ib = InfoBatch(n_samples=100, epochs=5, initial_score=2.5)
    np.testing.assert_array_equal(ib.scores, np.full(100, 2.5, np.float32))
    plan = ib.start_epoch(0)
    assert plan.threshold == 2.5 and plan.n_well == 0 and plan.n_kept == 100
    np.testing.assert_array_equal(np.sort(plan.indices), np.arange(100))
    assert (plan.weights == 1).all()


def test_pruned_samples_keep_stale_scores_which_count_in_the_threshold():
    ib = InfoBatch(n_samples=2000, epochs=10, seed=1)
    run_epochs(ib, range(2))
    before = np.array(ib.scores)
    plan = ib.start_epoch(2)
    new = losses_for(2, plan.indices)
    ib.update(plan.indices, new)
    after = np.array(ib.scores)
    pruned = np.setdiff1d(np.arange(2000), plan.indices)
    assert len(pruned) > 100
    np.testing.assert_array_equal(after[pruned], before[pruned])
    np.testing.assert_array_equal(after[plan.indices], new)
    assert ib.plan(3).threshold == pytest.approx(after.astype(np.float64).mean(), rel=1e-12)


@pytest.mark.parametrize(
    ("epochs", "delta", "annealing"),
    [(8, 0.875, 7), (10, 0.875, 9), (90, 0.875, 79), (10, 0.1, 1), (10, 0.0, 0), (10, 1.0, 10), (3, 0.5, 2)],
)
def test_annealing_epoch_is_ceil_delta_epochs(epochs, delta, annealing):
    ib = InfoBatch(n_samples=500, epochs=epochs, delta=delta, seed=0)
    assert ib.annealing_epoch == annealing
    ib.update(np.arange(500), losses_for(0, np.arange(500)))
    for e in range(epochs):
        plan = ib.start_epoch(e)
        assert plan.pruning == (e < annealing)
        if e < annealing:
            assert plan.n_kept < 500 and (plan.weights > 1).any()
        else:
            # Full data, all weights 1, also right after a pruning epoch with weights 2 (the reference keeps them
            # when delta * epochs is not an integer).
            assert plan.n_kept == 500 and plan.threshold is None
            np.testing.assert_array_equal(np.sort(plan.indices), np.arange(500))
            assert (plan.weights == 1).all() and (ib.weights(np.arange(500)) == 1).all()


def test_plans_are_seeded_and_pure():
    a = InfoBatch(n_samples=3000, epochs=10, seed=7)
    b = InfoBatch(n_samples=3000, epochs=10, seed=7)
    pa_, pb_ = run_epochs(a, range(5)), run_epochs(b, range(5))
    for x, y in zip(pa_, pb_):
        np.testing.assert_array_equal(x.indices, y.indices)
        np.testing.assert_array_equal(x.weights, y.weights)
    # plan() depends on (seed, epoch, scores) only: same result called twice, in any order, without side effects.
    p6 = a.plan(6)
    a.plan(7)
    np.testing.assert_array_equal(a.plan(6).indices, p6.indices)
    other = InfoBatch(n_samples=3000, epochs=10, seed=8)
    other.load_state_dict({**a.state_dict(), "params": other.get_params()})
    assert not np.array_equal(other.plan(6).indices, p6.indices)
    assert a.plan(5).n_kept != a.plan(6).n_kept or not np.array_equal(a.plan(5).indices, p6.indices)


def test_save_load_mid_run_resumes_identically(tmp_path):
    full = InfoBatch(n_samples=4000, epochs=8, prune_ratio=0.6, delta=0.7, seed=11)
    plans_full = run_epochs(full, range(8))

    first = InfoBatch(n_samples=4000, epochs=8, prune_ratio=0.6, delta=0.7, seed=11)
    run_epochs(first, range(3))
    save_state(first, tmp_path / "ckpt")
    resumed = load_state(tmp_path / "ckpt")
    np.testing.assert_array_equal(resumed.weights(np.arange(4000)), first.weights(np.arange(4000)))
    plans_resumed = run_epochs(resumed, range(3, 8))
    for x, y in zip(plans_full[3:], plans_resumed):
        np.testing.assert_array_equal(x.indices, y.indices)
        np.testing.assert_array_equal(x.weights, y.weights)
    np.testing.assert_array_equal(full.scores, resumed.scores)
    assert full.history() == resumed.history()
    assert full.summary() == resumed.summary()

    again = InfoBatch(n_samples=4000, epochs=8, prune_ratio=0.6, delta=0.7, seed=11)
    again.load_state_dict(full.state_dict())
    np.testing.assert_array_equal(again.scores, full.scores)
    wrong = InfoBatch(n_samples=4000, epochs=9, prune_ratio=0.6, delta=0.7, seed=11)
    with pytest.raises(ArtifactError, match="epochs"):
        wrong.load_state_dict(full.state_dict())
    with pytest.raises(ArtifactError, match="no saved InfoBatch state"):
        load_state(tmp_path / "nothing")
    np.save(tmp_path / "ckpt" / "scores.npy", np.zeros(4000, np.float32))  # as if a save died half-way
    with pytest.raises(ArtifactError, match="does not match"):
        load_state(tmp_path / "ckpt")


def test_history_and_summary_count_sample_steps():
    ib = InfoBatch(n_samples=1000, epochs=6, delta=0.5, seed=2)
    plans = run_epochs(ib, range(6))
    hist = ib.history()
    kept = np.array([p.n_kept for p in plans])
    assert [h["n_kept"] for h in hist] == kept.tolist()
    assert [h["kept_fraction"] for h in hist] == (kept / 1000).tolist()
    np.testing.assert_allclose([h["saving_so_far"] for h in hist], 1 - np.cumsum(kept) / (1000 * np.arange(1, 7)))
    s = ib.summary()
    assert s["sample_steps_full"] == 6000 and s["sample_steps_trained"] == kept.sum()
    assert s["saving"] == pytest.approx(1 - kept.sum() / 6000) and s["saving"] > 0.1


@pytest.mark.parametrize(("n", "world_size", "batch_size", "drop_last"), [(1000, 4, 32, False), (1001, 4, 25, False), (1003, 3, 7, True), (997, 1, 64, False), (17, 4, 4, False)])
def test_ranks_are_disjoint_cover_the_plan_and_take_equal_steps(n, world_size, batch_size, drop_last):
    ib = InfoBatch(n_samples=n, epochs=4, seed=0)
    ib.update(np.arange(n), losses_for(0, np.arange(n)))
    plan = ib.plan(1)
    samplers = [ib.batch_sampler(1, batch_size, rank=k, world_size=world_size, drop_last=drop_last) for k in range(world_size)]
    batches = [list(s) for s in samplers]
    assert len({len(b) for b in batches}) == 1 and all(len(s) == len(b) for s, b in zip(samplers, batches))
    seen = np.concatenate([np.concatenate([np.array(x, np.int64) for x in b]) for b in batches if b])
    assert len(np.unique(seen)) == len(seen)  # disjoint
    assert set(seen.tolist()) <= set(plan.indices.tolist())
    if drop_last:
        assert all(len(x) == batch_size for b in batches for x in b)
    else:
        assert sorted(seen.tolist()) == sorted(plan.indices.tolist())  # covering
        assert all(1 <= len(x) <= batch_size + 1 for b in batches for x in b)
    if world_size == 1:
        assert seen.tolist() == plan.indices.tolist()  # the plan's order


def test_indices_are_exact_above_2_24():
    n = 2**24 + 8
    ib = InfoBatch(n_samples=n, epochs=2)
    idx = np.array([2**24 + 1, 2**24 + 7, 2**24], dtype=np.int64)
    ib.update(idx, np.array([0.5, 0.25, 0.125]))
    s = ib.scores
    assert (s[2**24], s[2**24 + 1], s[2**24 + 7], s[2**24 + 2]) == (0.125, 0.5, 0.25, 3.0)
    plan = ib.plan(0)
    assert plan.indices.dtype == np.int64 and (plan.n_well, plan.n_kept_well, plan.n_kept) == (3, 1, n - 2)
    kept_well = plan.indices[plan.weights == 2.0]
    assert len(kept_well) == 1 and int(kept_well[0]) in idx.tolist()  # exact index, not a rounded float
    with pytest.raises(InputDataError, match="integers"):
        ib.update(idx.astype(np.float32), np.ones(3))


def test_bad_parameters_are_named():
    cases = [
        ({"prune_ratio": 0.95}, "prune_ratio"), ({"prune_ratio": -0.1}, "prune_ratio"), ({"prune_ratio": float("nan")}, "prune_ratio"),
        ({"prune_ratio": True}, "prune_ratio"), ({"delta": 1.5}, "delta"), ({"delta": -0.01}, "delta"), ({"n_samples": 0}, "n_samples"),
        ({"epochs": 0}, "epochs"), ({"seed": -1}, "seed"), ({"initial_score": float("inf")}, "initial_score"),
    ]
    for override, name in cases:
        kwargs = {"n_samples": 10, "epochs": 3, **override}
        with pytest.raises(ParameterError, match=f"'{name}' parameter of InfoBatch"):
            InfoBatch(**kwargs)
    ib = InfoBatch(n_samples=10, epochs=3)
    for epoch in (-1, 3, 1.0):
        with pytest.raises(ParameterError, match="'epoch' parameter"):
            ib.plan(epoch)
    with pytest.raises(ParameterError, match="'batch_size'"):
        ib.batch_sampler(0, 0)
    with pytest.raises(ParameterError, match="'rank'"):
        ib.batch_sampler(0, 4, rank=2, world_size=2)
    with pytest.raises(InputDataError, match="'world_size'"):
        ib.batch_sampler(0, 4, rank=0, world_size=11)


def test_bad_losses_and_indices_are_named():
    ib = InfoBatch(n_samples=10, epochs=3)
    with pytest.raises(InputDataError, match=r"nan.*position 2 \(sample index 7\)"):
        ib.update([3, 4, 7], [0.1, 0.2, float("nan")])
    with pytest.raises(InputDataError, match=r"inf.*sample index 3"):
        ib.update([3, 4], [float("inf"), 0.2])
    with pytest.raises(InputDataError, match="3 values for 2 'indices'"):
        ib.update([3, 4], [0.1, 0.2, 0.3])
    with pytest.raises(InputDataError, match="scalar"):
        ib.update([3, 4], np.float32(0.5))
    with pytest.raises(InputDataError, match="1-D"):
        ib.update([3, 4], np.ones((2, 1)))
    with pytest.raises(InputDataError, match=r"'indices'.*10 at position 1, outside \[0, 10\)"):
        ib.update([3, 10], [0.1, 0.2])
    with pytest.raises(InputDataError, match=r"-1 at position 0"):
        ib.weights([-1])
    np.testing.assert_array_equal(ib.scores, np.full(10, 3.0, np.float32))  # nothing half-applied


def test_torch_tensors_in_and_out():
    torch = pytest.importorskip("torch")
    ib = InfoBatch(n_samples=50, epochs=3, prune_ratio=0.5)
    idx = torch.arange(50, dtype=torch.int64)
    ib.update(idx, torch.linspace(0, 1, 50, dtype=torch.bfloat16))
    ib.batch_sampler(0, 8)
    w = ib.weights(idx)
    assert isinstance(w, torch.Tensor) and w.dtype == torch.float32
    np.testing.assert_array_equal(w.numpy(), ib.weights(np.arange(50)))
    assert sorted(set(w.tolist())) == [1.0, 2.0]
    on = ib.weights(np.arange(50), device="cpu")
    assert isinstance(on, torch.Tensor) and torch.equal(on, w)
    with pytest.raises(InputDataError, match="scalar"):
        ib.update(idx, torch.tensor(0.3))


def test_numpy_path_does_not_import_torch():
    code = (
        "import sys, numpy as np\n"
        "from thresher.selectors.infobatch import InfoBatch\n"
        "from thresher.pipeline.plan import write_plan\n"
        "ib = InfoBatch(n_samples=100, epochs=3); ib.update(np.arange(100), np.linspace(0, 1, 100))\n"
        "list(ib.batch_sampler(0, 10)); ib.weights(np.arange(5))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_plan_shards_round_trip_and_loss_shards_feed_back(tmp_path):
    from thresher.pipeline.plan import read_plan, update_state, write_plan
    from thresher.stores.curated import open_curated

    ib = InfoBatch(n_samples=3000, epochs=6, seed=5)
    run_epochs(ib, range(2))
    expected = ib.plan(2)
    curated = write_plan(ib, 2, tmp_path / "plan-2", rows_per_shard=700)
    indices, weights = read_plan(tmp_path / "plan-2")
    np.testing.assert_array_equal(indices, expected.indices)
    np.testing.assert_array_equal(weights, expected.weights)
    m = open_curated(tmp_path / "plan-2", verify=True).manifest
    assert m["selector"] == "infobatch" and m["epoch"] == 2 and m["n_rows"] == expected.n_kept
    assert m["summary"]["n_well"] == expected.n_well and len(curated.shards) == math.ceil(expected.n_kept / 700)
    table = curated.to_table()
    assert table.column_names == ["index", "weight", "epoch", "position"]
    assert table.column("position").to_pylist() == list(range(expected.n_kept)) and set(table.column("epoch").to_pylist()) == {2}
    assert table.schema.field("index").type == "int64"
    hf = curated.to_hf_dataset()  # memory-mapped by HF datasets as it is
    assert hf["index"][:10] == expected.indices[:10].tolist()

    # Trainers write loss shards (two ranks); feeding them back equals update().
    save_state(ib, tmp_path / "state")
    half = len(indices) // 2
    losses = losses_for(2, indices)
    write_loss_shard(tmp_path / "losses" / "rank-00000.arrow", indices[:half], losses[:half])
    write_loss_shard(tmp_path / "losses" / "rank-00001.arrow", indices[half:], losses[half:])
    ib.update(indices, losses)
    summary = update_state(tmp_path / "state", tmp_path / "losses")
    restored = load_state(tmp_path / "state")
    np.testing.assert_array_equal(restored.scores, ib.scores)
    assert summary["n_epochs_started"] == 3

    # From a state directory: same plan as from the object.
    write_plan(tmp_path / "state", 3, tmp_path / "plan-3")
    np.testing.assert_array_equal(read_plan(tmp_path / "plan-3")[0], ib.plan(3).indices)
    assert load_state(tmp_path / "state").history()[-1]["epoch"] == 3

    import pyarrow as pa

    from thresher.stores.arrow_io import write_stream_shard

    (tmp_path / "bad").mkdir()
    write_stream_shard(tmp_path / "bad" / "x.arrow", pa.table({"index": pa.array([1], pa.int64()), "los": [0.1]}))
    with pytest.raises(InputDataError, match=r"x\.arrow has no 'loss' column"):
        apply_loss_shards(ib, tmp_path / "bad")
    write_stream_shard(tmp_path / "bad" / "x.arrow", pa.table({"index": pa.array([1, 5000], pa.int64()), "loss": [0.1, 0.2]}))
    with pytest.raises(InputDataError, match=r"x\.arrow.*5000 at position 1"):
        apply_loss_shards(ib, tmp_path / "bad")


def test_cli_plan_infobatch(tmp_path):
    from click.testing import CliRunner

    from thresher.cli import main
    from thresher.pipeline.plan import read_plan

    runner = CliRunner()
    state = tmp_path / "state"
    res = runner.invoke(main, ["plan", "infobatch-init", "--out", str(state), "--n-samples", "500", "--epochs", "4", "--seed", "2"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["plan", "infobatch", "--scores", str(state), "--epoch", "0", "--out", str(tmp_path / "p0")])
    assert res.exit_code == 0, res.output
    idx, _ = read_plan(tmp_path / "p0")
    write_loss_shard(tmp_path / "l0" / "rank-0.arrow", idx, losses_for(0, idx))
    res = runner.invoke(main, ["plan", "infobatch", "--scores", str(state), "--epoch", "1", "--out", str(tmp_path / "p1"), "--losses", str(tmp_path / "l0")])
    assert res.exit_code == 0, res.output

    ref = InfoBatch(n_samples=500, epochs=4, seed=2)
    ref.update(idx, losses_for(0, idx))
    expected = ref.plan(1)
    np.testing.assert_array_equal(read_plan(tmp_path / "p1")[0], expected.indices)
    assert f"kept {expected.n_kept} of 500" in res.output and "saving so far" in res.output
    assert json.loads((state / "infobatch.json").read_text())["history"]["1"]["n_kept"] == expected.n_kept

    res = runner.invoke(main, ["plan", "infobatch", "--scores", str(state), "--epoch", "4", "--out", str(tmp_path / "p4")])
    assert res.exit_code == 2 and "'epoch' parameter of InfoBatch" in res.output
