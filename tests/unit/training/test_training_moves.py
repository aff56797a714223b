"""thresher.training holds the training-side code (issue 15); the old import paths and methods keep working.

The moved names must be the very same objects under their old paths, the thin
InfoBatch methods must write and read exactly what the training functions do,
and the pure selector module must not pull in file I/O.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from thresher.selectors.infobatch import InfoBatch
from thresher.training import IndexedDataset, apply_loss_shards, load_state, save_state, write_loss_shard


@pytest.mark.parametrize(
    ("old_module", "new_module", "name"),
    [
        ("thresher.stores.torch_data", "thresher.training.torch_data", "CuratedShardDataset"),
        ("thresher.stores.torch_data", "thresher.training.torch_data", "CuratedShardMapDataset"),
        ("thresher.stores.torch_data", "thresher.training.torch_data", "collate"),
        ("thresher.selectors.al_loop", "thresher.training.al_loop", "ActiveLearningLoop"),
        ("thresher.selectors.al_loop", "thresher.training.al_loop", "LogisticBaseline"),
        ("thresher.selectors.al_loop", "thresher.training.al_loop", "RoundRecord"),
        ("thresher.selectors.infobatch", "thresher.training.infobatch", "write_loss_shard"),
        ("thresher.selectors.infobatch", "thresher.training.infobatch", "STATE_FILE"),
        ("thresher.selectors.infobatch", "thresher.training.samplers", "IndexedDataset"),
    ],
)
def test_old_import_paths_give_the_moved_objects(old_module, new_module, name):
    import importlib

    old = importlib.import_module(old_module)
    new = importlib.import_module(new_module)
    assert getattr(old, name) is getattr(new, name)
    namespace: dict = {}
    exec(f"from {old_module} import {name} as moved", namespace)
    assert namespace["moved"] is getattr(new, name)
    with pytest.raises(AttributeError):
        old.no_such_name  # noqa: B018


def trained(seed: int = 4) -> InfoBatch:
    """An InfoBatch two epochs into training with known losses."""
    ib = InfoBatch(n_samples=300, epochs=5, prune_ratio=0.5, delta=0.8, seed=seed)
    rng = np.random.default_rng(seed)
    for epoch in range(2):
        plan = ib.start_epoch(epoch)
        ib.update(plan.indices, rng.random(plan.n_kept))
    return ib


def test_the_infobatch_methods_delegate_to_the_training_functions(tmp_path):
    ib = trained()
    ib.save(tmp_path / "by_method")
    save_state(ib, tmp_path / "by_function")
    for name in ("infobatch.json", "scores.npy", "active_kept_well.npy"):
        assert (tmp_path / "by_method" / name).read_bytes() == (tmp_path / "by_function" / name).read_bytes()

    class Tracked(InfoBatch):
        pass

    resumed = Tracked.load(tmp_path / "by_function")
    assert type(resumed) is Tracked
    np.testing.assert_array_equal(resumed.scores, ib.scores)
    assert resumed.history() == ib.history() == load_state(tmp_path / "by_method").history()
    np.testing.assert_array_equal(resumed.plan(2).indices, ib.plan(2).indices)

    indices = np.arange(0, 300, 7, dtype=np.int64)
    losses = np.linspace(0.0, 2.0, len(indices), dtype=np.float32)
    write_loss_shard(tmp_path / "losses" / "rank-0.arrow", indices, losses)
    by_method, by_function = trained(), trained()
    assert by_method.update_from_shards(tmp_path / "losses") == len(indices)
    assert apply_loss_shards(by_function, tmp_path / "losses") == len(indices)
    expected = trained().scores.copy()
    expected[indices] = losses  # the oracle: update() by hand
    np.testing.assert_array_equal(by_method.scores, expected)
    np.testing.assert_array_equal(by_function.scores, expected)


def test_indexed_dataset_pairs_each_item_with_its_index():
    data = ["a", "b", "c"]
    wrapped = IndexedDataset(data)
    assert len(wrapped) == 3
    assert [wrapped[i] for i in range(3)] == [(0, "a"), (1, "b"), (2, "c")]


def test_the_selector_module_stays_pure():
    """Planning with InfoBatch imports neither the training package nor the atomic-write store helpers."""
    code = (
        "import sys, numpy as np\n"
        "from thresher.selectors.infobatch import InfoBatch\n"
        "ib = InfoBatch(n_samples=50, epochs=3); ib.update(np.arange(50), np.linspace(0, 1, 50)); ib.start_epoch(0)\n"
        "bad = [m for m in ('thresher.training', 'thresher.stores.atomic', 'torch') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.stdout.strip() == "ok", done.stderr
