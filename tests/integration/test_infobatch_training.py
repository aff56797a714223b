"""A real training run with InfoBatch (Qin et al., ICLR 2024): same accuracy as full data, fewer sample-steps.

A small MLP on scikit-learn's digits (1,797 8x8 images, 10 classes), CPU, a
few seconds. Both runs share the model initialisation and optimiser; the
InfoBatch run draws its batches from ``ib.batch_sampler`` through a real
``torch.utils.data.DataLoader``, feeds per-sample losses back with
``ib.update`` and rescales them with ``ib.weights``.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from thresher.selectors.infobatch import InfoBatch  # noqa: E402
from thresher.training import IndexedDataset  # noqa: E402

EPOCHS, BATCH = 24, 32


def data():
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    return train_test_split(x, y, test_size=0.35, random_state=0, stratify=y)


def train(x_tr, y_tr, x_te, y_te, *, infobatch: InfoBatch | None, seed: int) -> tuple[float, int]:
    """Train an MLP; returns (test accuracy, sample-steps processed)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ds = IndexedDataset(TensorDataset(torch.from_numpy(x_tr), torch.from_numpy(y_tr)))
    gen = torch.Generator().manual_seed(seed)
    n_steps = 0
    for epoch in range(EPOCHS):
        if infobatch is None:
            loader = DataLoader(ds, batch_size=BATCH, shuffle=True, generator=gen)
        else:
            loader = DataLoader(ds, batch_sampler=infobatch.batch_sampler(epoch, batch_size=BATCH))
        for idx, (xb, yb) in loader:
            loss = torch.nn.functional.cross_entropy(model(xb), yb, reduction="none")
            if infobatch is not None:
                infobatch.update(idx, loss.detach())
                loss = loss * infobatch.weights(idx)
            opt.zero_grad()
            loss.mean().backward()
            opt.step()
            n_steps += len(idx)
    with torch.no_grad():
        accuracy = (model(torch.from_numpy(x_te)).argmax(1).numpy() == y_te).mean()
    return float(accuracy), n_steps


def test_infobatch_matches_full_data_accuracy_with_fewer_sample_steps():
    torch.set_num_threads(1)
    x_tr, x_te, y_tr, y_te = data()
    full_acc, infob_acc, savings = [], [], []
    for seed in (0, 1, 2):
        acc, steps = train(x_tr, y_tr, x_te, y_te, infobatch=None, seed=seed)
        assert steps == EPOCHS * len(x_tr)
        full_acc.append(acc)
        ib = InfoBatch(n_samples=len(x_tr), epochs=EPOCHS, prune_ratio=0.5, delta=0.875, seed=seed)
        acc, steps = train(x_tr, y_tr, x_te, y_te, infobatch=ib, seed=seed)
        infob_acc.append(acc)
        summary = ib.summary()
        assert summary["sample_steps_trained"] == steps  # the report counts what the loader really gave
        savings.append(1 - steps / (EPOCHS * len(x_tr)))
        assert summary["saving"] == pytest.approx(savings[-1])
        hist = ib.history()
        assert [h["pruning"] for h in hist] == [e < 21 for e in range(EPOCHS)]  # ceil(0.875 * 24) = 21
    print(f"full {full_acc} infobatch {infob_acc} savings {savings}")
    assert min(full_acc) > 0.93  # the task is learned
    assert np.mean(infob_acc) >= np.mean(full_acc) - 0.015
    assert min(savings) >= 0.25
