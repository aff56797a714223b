"""SMOTE stage end to end: a labelled pool embedded by the real model, resampled, read back with datasets."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner

import thresher
from thresher.cli import main
from thresher.data import read_demo_pool
from thresher.exceptions import ArtifactError, InputDataError, ParameterError
from thresher.pipeline.smote import select_smote
from thresher.selectors.smote import SMOTE
from thresher.stores import open_curated, open_pool, write_curated
from thresher.jobs.executor import Executor

N_ROWS = 80


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """80 chat openers labelled 'question' (20 rows: the opener ends with '?') or 'other' (60), in 3 partitions."""
    tmp = tmp_path_factory.mktemp("smote")
    rows = []
    for i, row in enumerate(read_demo_pool(N_ROWS)):
        text = row["messages"][0]["content"].strip()
        rows.append({
            "id": row["id"], "text": text, "label": "question" if text.endswith("?") else "other",
            "gappy": None if i == 41 else i % 2, "constant": 1,
        })
    pool = tmp / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = thresher.embed(str(pool), tmp / "emb", text_column="text", id_column="id", partition_rows=30, executor=Executor.in_process(progress=False))
    return tmp, pool, store, rows


def test_stage_writes_kept_and_synthetic_rows_readable_by_datasets(labelled):
    tmp, pool, store, rows = labelled
    cur = select_smote(store.path, tmp / "smote", labels="label", undersample_majority=0.5, executor=Executor.in_process(progress=False))
    labels = np.array([r["label"] for r in rows])
    assert (labels == "question").sum() == 20
    s = cur.manifest["summary"]
    assert s["class_counts_before"] == {"other": 60, "question": 20}
    assert s["class_counts_after"] == {"other": 30, "question": 60}
    assert s["n_synthetic"] == 40 and s["n_undersampled"] == 30 and cur.n_rows == 30 + 20 + 40
    assert cur.manifest["selector"] == "smote" and cur.manifest["n_extra_rows"] == 40
    report = s["neighbor_search"]["question"]  # how the class's neighbours were searched: exactly, 20 rows
    assert list(s["neighbor_search"]) == ["question"] and report["index"] == "Flat" and report["exact"] is True and report["n_rows"] == 20

    ds = datasets.load_dataset("arrow", data_files=cur.files, split="train", cache_dir=str(tmp / "hf"))
    assert len(ds) == 90 and ds.column_names[:2] == ["id", "text"]
    table = ds.data.table
    synthetic = np.asarray(table.column("synthetic").to_pylist())
    assert synthetic.tolist() == [False] * 50 + [True] * 40
    assert table.column("rank").to_pylist() == list(range(90))

    # kept rows: pool rows in pool order with their own columns and the store's vectors
    kept_ids = table.column("id").to_pylist()[:50]
    by_id = {r["id"]: r for r in rows}
    positions = store.positions_of(kept_ids)
    assert np.all(np.diff(positions) > 0)
    assert [by_id[i]["text"] for i in kept_ids] == table.column("text").to_pylist()[:50]
    assert [by_id[i]["label"] for i in kept_ids] == table.column("label").to_pylist()[:50]
    assert sum(by_id[i]["label"] == "other" for i in kept_ids) == 30
    emb = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    np.testing.assert_array_equal(emb[:50], store.take(positions))

    # synthetic rows: their own ids (unique, none a pool id), no text, class 'question', between two 'question' rows
    assert table.column("id").to_pylist()[50:] == [f"synthetic:question:{i}" for i in range(40)]
    assert len(set(table.column("id").to_pylist())) == 90 and not set(table.column("id").to_pylist()[50:]) & set(by_id)
    assert table.column("text").to_pylist()[50:] == [None] * 40
    assert table.column("label").to_pylist()[50:] == ["question"] * 40
    parents = table.column("parents").to_pylist()[50:]
    gap = np.asarray(table.column("gap").to_pylist()[50:], dtype=np.float32)
    base, nb = store.take(store.positions_of([p[0] for p in parents])), store.take(store.positions_of([p[1] for p in parents]))
    assert all(by_id[a]["label"] == by_id[b]["label"] == "question" and a != b for a, b in parents)
    assert report["n_searched"] == len({a for a, _ in parents})  # only the bases drawn were searched
    np.testing.assert_allclose(emb[50:], base + gap[:, None] * (nb - base), rtol=1e-6, atol=1e-6)

    # the same numbers as the in-memory selector on the store's vectors
    sel = SMOTE(undersample_majority=0.5).select(store.to_numpy(), budget=1.0, labels=labels)
    np.testing.assert_array_equal(store.ids()[sel.positions], np.asarray(kept_ids, dtype=object))
    np.testing.assert_array_equal(sel.synthetic.vectors, emb[50:])
    np.testing.assert_array_equal(sel.synthetic.gap, gap)


def test_cli_matches_python_and_dask_matches_local(labelled, dask_client):
    tmp, pool, store, rows = labelled
    local = select_smote(store.path, tmp / "py", labels="label", sampling_strategy={"question": 50}, k_neighbors=3, seed=4,
                         executor=Executor.in_process(progress=False))
    on_dask = select_smote(store.path, tmp / "dask", labels="label", sampling_strategy={"question": 50}, k_neighbors=3, seed=4,
                           executor=Executor.on_client(dask_client, progress=False))
    result = CliRunner().invoke(main, ["select", "smote", "--pool-embeddings", str(store.path), "--labels", "label", "--out", str(tmp / "cli"),
                                       "--sampling-strategy", '{"question": 50}', "--k-neighbors", "3", "--seed", "4", "--local", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "class question: 20 -> 50 rows" in result.output
    cli = open_curated(tmp / "cli")
    assert local.n_rows == N_ROWS + 30
    for other in (on_dask, cli):
        assert other.manifest["fingerprint"] == local.manifest["fingerprint"]
        for a, b in zip(local.files, other.files):
            assert open(a, "rb").read() == open(b, "rb").read()
    # a finished run is reused, not redone
    again = select_smote(store.path, tmp / "py", labels="label", sampling_strategy={"question": 50}, k_neighbors=3, seed=4,
                         executor=Executor.in_process(progress=False))
    assert again.manifest["created_at"] == local.manifest["created_at"]


def test_stage_refuses_bad_labels_clearly(labelled):
    tmp, pool, store, rows = labelled
    with pytest.raises(InputDataError, match="no label column 'nope'"):
        select_smote(store.path, tmp / "e1", labels="nope", executor=Executor.in_process(progress=False))
    with pytest.raises(InputDataError, match=f"null for the pool row id={rows[41]['id']!r}"):
        select_smote(store.path, tmp / "e2", labels="gappy", executor=Executor.in_process(progress=False))
    with pytest.raises(InputDataError, match="at least 2 classes"):
        select_smote(store.path, tmp / "e3", labels="constant", executor=Executor.in_process(progress=False))
    with pytest.raises(ParameterError, match="'undersample_majority'"):
        select_smote(store.path, tmp / "e4", labels="label", undersample_majority=1.5, executor=Executor.in_process(progress=False))
    with pytest.raises(ParameterError, match="Class 'question' has 20 rows"):
        select_smote(store.path, tmp / "e5", labels="label", k_neighbors=20, executor=Executor.in_process(progress=False))
    result = CliRunner().invoke(main, ["select", "smote", "--pool-embeddings", str(store.path), "--labels", "label", "--out", str(tmp / "e6"),
                                       "--undersample-majority", "-0.5", "--local", "--quiet"])
    assert result.exit_code == 2 and "undersample_majority" in result.output


def test_write_curated_extra_rows_checks_its_columns(labelled):
    tmp, pool_path, store, rows = labelled
    pool = open_pool(str(pool_path), id_column="id", partition_rows=30)
    common = dict(pool=pool, positions=[3, 1], columns={"score": [0.5, 0.25]}, selector="t", params={}, fingerprint="f")
    with pytest.raises(ParameterError, match=r"lack the selection columns \['score'\]"):
        write_curated(tmp / "x1", extra_rows=pa.table({"text": ["a"]}), **common)
    with pytest.raises(ParameterError, match=r"neither selection columns"):
        write_curated(tmp / "x2", extra_rows=pa.table({"score": [1.0], "bogus": [1]}), **common)
    cur = write_curated(tmp / "x3", extra_rows=pa.table({"score": [1.0], "text": ["made up"]}), rows_per_shard=2, **common)
    table = cur.to_table()
    assert len(cur.files) == 2 and table.column("rank").to_pylist() == [0, 1, 2]
    assert table.column("id").to_pylist() == [rows[3]["id"], rows[1]["id"], None]
    assert table.column("text").to_pylist() == [rows[3]["text"], rows[1]["text"], "made up"]
    assert table.column("label").to_pylist() == [rows[3]["label"], rows[1]["label"], None]
    # an iterable of tables is streamed into the shards, cut across the tables' boundaries, ranks running on
    blocks = [pa.table({"score": [float(i), float(i) + 0.5], "text": [f"made up {i}", None]}) for i in range(3)]
    cur = write_curated(tmp / "x4", extra_rows=iter(blocks), rows_per_shard=3, **common)
    table = cur.to_table()
    assert [pa.ipc.open_stream(f).read_all().num_rows for f in cur.files] == [3, 3, 2] and cur.manifest["n_extra_rows"] == 6
    assert table.column("rank").to_pylist() == list(range(8))
    assert table.column("score").to_pylist() == [0.5, 0.25, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert table.column("text").to_pylist()[2:] == ["made up 0", None, "made up 1", None, "made up 2", None]
    # a bad later table is refused too, and the directory is left without a manifest (not a finished artefact)
    with pytest.raises(ParameterError, match=r"lack the selection columns \['score'\]"):
        write_curated(tmp / "x5", extra_rows=[pa.table({"score": [1.0]}), pa.table({"text": ["t"]})], rows_per_shard=2, **common)
    with pytest.raises(ArtifactError):
        open_curated(tmp / "x5")
