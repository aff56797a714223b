"""The acquisition stage end to end: a small pool embedded by the real model, predictions as parquet, shards read by datasets."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from scipy.special import entr

import thresher
from thresher.cli import main
from thresher.data import read_demo_pool
from thresher.exceptions import InputDataError, ParameterError
from thresher.pipeline.acquire import select_acquire
from thresher.selectors.acquisition import sample_batch
from thresher.selectors.anchoral import anchoral_subpool
from thresher.rng import as_generator
from thresher.jobs.executor import Executor

N_ROWS, N_SAMPLES = 48, 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """48 chat openers (ids as strings) in 2 partitions; MC-like samples [4][3] per row; 9 labelled rows (3 per class)."""
    tmp = tmp_path_factory.mktemp("acquire")
    rows = []
    for row in read_demo_pool(N_ROWS):
        rows.append({"id": row["id"], "text": row["messages"][0]["content"].strip()})
    pool = tmp / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = thresher.embed(str(pool), tmp / "emb", text_column="text", id_column="id", partition_rows=30, executor=Executor.in_process(progress=False))
    ids = store.ids()
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(N_ROWS, N_SAMPLES, 3)) * rng.uniform(0.1, 3.0, size=(N_ROWS, 1, 1))
    samples = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
    labelled = np.array([0, 5, 11, 17, 23, 29, 31, 37, 41])
    labels = np.array([0, 1, 2] * 3)
    pq.write_table(pa.table({"id": ids[labelled].tolist(), "label": labels}), tmp / "labeled.parquet")
    pq.write_table(pa.table({"id": ids.tolist(), "samples": samples.tolist()}), tmp / "samples.parquet")
    pq.write_table(pa.table({"id": ids.tolist(), "probs": samples.mean(axis=1).tolist()}), tmp / "probs.parquet")
    return tmp, store, samples, labelled, labels


def bald(samples):
    return entr(samples.mean(axis=1)).sum(axis=1) - entr(samples).sum(axis=2).mean(axis=1)


def test_bald_power_over_the_whole_unlabelled_pool(setup):
    tmp, store, samples, labelled, _ = setup
    cur = select_acquire(store.path, tmp / "out_bald", predictions=tmp / "samples.parquet", labelled=tmp / "labeled.parquet",
                         method="bald", sampling="power", budget=6, round=3, seed=1)
    ds = datasets.load_dataset("arrow", data_files=cur.files, split="train", cache_dir=str(tmp / "hf"))
    assert len(ds) == 6 and {"id", "text", "rank", "score", "raw_score", "in_subpool", "anchor_hits", "round"} <= set(ds.column_names)
    ids = store.ids()
    positions = store.positions_of(np.asarray(ds["id"], dtype=object))
    assert not np.isin(positions, labelled).any()
    expected = bald(samples)
    np.testing.assert_allclose(ds["raw_score"], expected[positions], rtol=1e-9)
    assert ds["round"] == [3] * 6 and ds["in_subpool"] == [False] * 6 and ds["anchor_hits"] == [0] * 6
    # the same draw as the pure core: power sampling over the unlabelled rows with the stage's seed
    unlabelled = np.setdiff1d(np.arange(N_ROWS), labelled)
    want = unlabelled[sample_batch(np.maximum(expected[unlabelled], 0), 6, sampling="power", beta=1.0, seed=1)]
    assert ds["id"] == ids[want].tolist()
    s = cur.manifest["summary"]
    assert s["n_candidates"] == N_ROWS - 9 and s["n_labelled"] == 9 and s["n_samples"] == N_SAMPLES and s["round"] == 3
    assert cur.manifest["params"]["score"] == "bald" and cur.manifest["selector"] == "acquisition"


def test_anchoral_entropy_topk_on_the_subpool(setup):
    tmp, store, samples, labelled, labels = setup
    cur = select_acquire(store.path, tmp / "out_anchor", predictions=tmp / "probs.parquet", labelled=tmp / "labeled.parquet",
                         method="entropy", sampling="topk", anchoral=True, n_anchors=2, n_neighbors=4, subpool_size=12, budget=5, seed=4)
    sub = anchoral_subpool(store, labelled, labels, classes=[0, 1, 2], n_anchors=2, n_neighbors=4, subpool_size=12, seed=as_generator(4))
    assert len(sub.positions) == 12 and cur.manifest["summary"]["n_candidates"] == 12 and cur.manifest["summary"]["n_anchors"] == 6
    ent = entr(samples.mean(axis=1)).sum(axis=1)
    order = sub.positions[np.lexsort((np.arange(12), -ent[sub.positions]))][:5]
    table = cur.to_table()
    assert table.column("id").to_pylist() == store.ids()[order].tolist()
    hits = dict(zip(sub.positions.tolist(), sub.n_anchor_hits.tolist()))
    assert table.column("anchor_hits").to_pylist() == [hits[p] for p in order]
    assert all(table.column("in_subpool").to_pylist())


def test_cli_acquire(setup):
    tmp, store, _, _, _ = setup
    result = CliRunner().invoke(main, ["select", "acquire", "--pool-embeddings", str(store.path), "--predictions", str(tmp / "samples.parquet"),
                                       "--labelled", str(tmp / "labeled.parquet"), "--method", "bald", "--sampling", "power", "--beta", "1",
                                       "--anchoral", "--n-anchors", "2", "--n-neighbors", "5", "--subpool-size", "10", "--budget", "4",
                                       "--round", "2", "--out", str(tmp / "cli")])
    assert result.exit_code == 0, result.output
    assert "round 2: acquired 4 of 10 candidates" in result.output
    assert thresher.stores.open_curated(tmp / "cli").n_rows == 4


def test_bad_inputs_are_named(setup):
    tmp, store, samples, labelled, labels = setup
    ids = store.ids().tolist()
    run = lambda preds, **kw: select_acquire(store.path, tmp / "bad", predictions=preds, labelled=kw.pop("labelled", tmp / "labeled.parquet"),
                                             method=kw.pop("method", "entropy"), budget=kw.pop("budget", 3), overwrite=True, **kw)
    probs = samples.mean(axis=1)

    def write(name, table):
        pq.write_table(table, tmp / name)
        return tmp / name

    unknown = write("unknown.parquet", pa.table({"id": ids + ["nope-42"], "probs": probs.tolist() + [[0.2, 0.3, 0.5]]}))
    with pytest.raises(InputDataError, match="nope-42"):
        run(unknown)
    ragged = probs.tolist()
    ragged[7] = [0.5, 0.5]
    with pytest.raises(InputDataError, match=f"id {ids[7]!r} has 2 values"):
        run(write("ragged.parquet", pa.table({"id": ids, "probs": ragged})))
    off = probs.copy()
    off[13] *= 2
    with pytest.raises(InputDataError, match=rf"not probabilities for id {ids[13]!r}: sum 2"):
        run(write("off.parquet", pa.table({"id": ids, "probs": off.tolist()})))
    missing = write("missing.parquet", pa.table({"id": ids[:-1], "probs": probs[:-1].tolist()}))
    with pytest.raises(InputDataError, match=f"e.g. id {ids[-1]!r}"):
        run(missing)
    with pytest.raises(InputDataError, match="BALD needs several predictions"):
        run(tmp / "probs.parquet", method="bald")
    one_class = write("one_class.parquet", pa.table({"id": [ids[i] for i in labelled[:3]], "label": ["a", "a", "b"]}))
    with pytest.raises(InputDataError, match="2 classes .* 3 columns"):
        run(tmp / "probs.parquet", labelled=one_class, anchoral=True)
    with pytest.raises(InputDataError, match="has none"):
        run(tmp / "probs.parquet", labelled=write("l2.parquet", pa.table({"id": [ids[0], ids[1]], "label": [0, 2]})), anchoral=True)
    with pytest.raises(ParameterError, match="only 39 are candidates"):
        run(tmp / "probs.parquet", budget=40)
    with pytest.raises(ParameterError, match="needs the labelled rows"):
        run(tmp / "probs.parquet", labelled=None, anchoral=True)


def test_old_argument_and_flag_spellings_warn_and_give_the_same_rows(setup):
    tmp, store, _, _, _ = setup
    common = dict(predictions=tmp / "samples.parquet", sampling="power", budget=5, seed=2)
    new = select_acquire(store.path, tmp / "new", labelled=tmp / "labeled.parquet", method="entropy", **common)
    with pytest.warns(DeprecationWarning, match=r"select_acquire\(labeled=\) is deprecated; use labelled="):
        with pytest.warns(DeprecationWarning, match=r"select_acquire\(score=\) is deprecated; use method="):
            old = select_acquire(store.path, tmp / "old", labeled=tmp / "labeled.parquet", score="entropy", **common)
    assert old.to_table().column("id").to_pylist() == new.to_table().column("id").to_pylist()
    assert new.manifest["params"]["score"] == "entropy"  # method reached the stage (the default is bald)
    with pytest.raises(ParameterError, match=r"takes method= or its old spelling score=, not both"):
        select_acquire(store.path, tmp / "both", method="bald", score="bald", **common)

    argv = ["select", "acquire", "--pool-embeddings", str(store.path), "--predictions", str(tmp / "samples.parquet"), "--sampling", "power",
            "--budget", "5", "--seed", "2"]
    result = CliRunner().invoke(main, [*argv, "--labeled", str(tmp / "labeled.parquet"), "--score", "entropy", "--out", str(tmp / "old-cli")])
    assert result.exit_code == 0, result.output
    assert "note: --labeled is deprecated; use --labelled" in result.stderr and "note: --score is deprecated; use --method" in result.stderr
    assert thresher.stores.open_curated(tmp / "old-cli").to_table().column("id").to_pylist() == new.to_table().column("id").to_pylist()
