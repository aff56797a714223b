"""`thresher embeddings import` end to end: the command, the store it writes read by datasets and FAISS, its refusals.

The imported store is used as any embedded one: `thresher index` builds a real
FAISS index over it (inner product, since the rows are unit vectors), and its
nearest neighbours equal brute force over the source vectors.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner

from thresher.cli import main
from thresher.stores import open_embedding_store

N, DIM = 300, 16


def unit_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_import_then_index_then_read_back(tmp_path: Path):
    import datasets

    vectors = unit_vectors(N, DIM)
    ids = [f"q{i:05d}" for i in range(N)]
    np.save(tmp_path / "vectors.npy", vectors)
    (tmp_path / "ids.txt").write_text("".join(i + "\n" for i in ids), encoding="utf-8")
    result = CliRunner().invoke(main, ["embeddings", "import", str(tmp_path / "vectors.npy"), "--ids", str(tmp_path / "ids.txt"),
                                       "--out", str(tmp_path / "store"), "--model", "BAAI/bge-small-en-v1.5", "--pooling", "cls",
                                       "--normalized", "--dtype", "float16", "--shard-rows", "128", "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"imported {N} rows into {tmp_path / 'store'} (3 shards, dim {DIM}, float16, L2-normalised, model 'BAAI/bge-small-en-v1.5')" in result.output
    store = open_embedding_store(tmp_path / "store", verify=True)
    assert (store.model, store.pooling, store.normalized, store.dtype) == ("BAAI/bge-small-en-v1.5", "cls", True, "float16")
    loaded = datasets.load_dataset("arrow", data_files=sorted(str(p) for p in (tmp_path / "store").glob("part-*.arrow")), split="train")
    assert loaded["id"] == ids
    np.testing.assert_array_equal(np.asarray(loaded["embedding"], dtype=np.float16), vectors.astype(np.float16))

    result = CliRunner().invoke(main, ["index", "--embeddings", str(tmp_path / "store"), "--out", str(tmp_path / "index"), "--index-type", "flat"])
    assert result.exit_code == 0, result.output
    assert "metric ip" in result.output
    from thresher.stores.index import open_index

    index = open_index(tmp_path / "index")
    queries = vectors[:20].astype(np.float16).astype(np.float32)
    _, found = index.search(queries, 5)
    exact = np.argsort(-(queries @ vectors.astype(np.float16).astype(np.float32).T), axis=1, kind="stable")[:, :5]
    assert [list(row) for row in found] == [[ids[j] for j in row] for row in exact]

    inspected = CliRunner().invoke(main, ["inspect", str(tmp_path / "store")])
    assert inspected.exit_code == 0 and "imported from" in inspected.output and "vectors.npy" in inspected.output


def test_parquet_with_its_own_ids_and_a_rerun_reuses_the_store(tmp_path: Path):
    vectors = unit_vectors(N, DIM, seed=1) * 3  # not unit: detected, recorded as not normalised
    table = pa.table({"uid": np.arange(N) * 7, "vec": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), DIM)})
    pq.write_table(table, tmp_path / "emb.parquet", row_group_size=100)
    argv = ["embeddings", "import", str(tmp_path / "emb.parquet"), "--id-column", "uid", "--vector-column", "vec", "--out",
            str(tmp_path / "store"), "--model", "e5", "--quiet"]
    first = CliRunner().invoke(main, argv)
    assert first.exit_code == 0, first.output
    assert "not normalised" in first.output
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    again = CliRunner().invoke(main, argv)
    assert again.exit_code == 0
    assert json.loads((tmp_path / "store" / "manifest.json").read_text())["created_at"] == manifest["created_at"]
    store = open_embedding_store(tmp_path / "store")
    assert store.ids().tolist() == list(range(0, 7 * N, 7))
    np.testing.assert_array_equal(store.to_numpy(), vectors)


def test_bad_input_exits_2_with_one_line_and_no_store(tmp_path: Path):
    """A real subprocess: the shell sees exit 2 and one line naming the id, never a traceback."""
    vectors = unit_vectors(N, DIM)
    vectors[123, 5] = np.nan
    np.save(tmp_path / "vectors.npy", vectors)
    np.save(tmp_path / "ids.npy", np.arange(N) + 10)
    proc = subprocess.run([sys.executable, "-m", "thresher", "embeddings", "import", str(tmp_path / "vectors.npy"), "--ids",
                           str(tmp_path / "ids.npy"), "--out", str(tmp_path / "store"), "--model", "m", "--quiet"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: The vector of id=133 (row 123 of {tmp_path / 'vectors.npy'}) holds NaN or infinity; every value must be finite."]
    assert not (tmp_path / "store").exists()


def test_a_run_over_an_imported_store_with_imported_target_stores(tmp_path: Path):
    """Bring your own vectors end to end: pool + imported store + imported target stores through `thresher run`.

    RDS+ over the imported store equals the brute-force definition computed here from the source arrays.
    """
    import yaml

    from thresher.selectors.rds import brute_force_rds
    from thresher.stores.curated import open_curated

    rng = np.random.default_rng(5)
    n, dim = 240, 16
    centres = unit_vectors(4, dim, seed=9)
    topic = rng.integers(0, 4, size=n)
    vectors = centres[topic] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
    ids = [f"row-{i:04d}" for i in range(n)]
    pq.write_table(pa.table({"id": ids, "text": [f"text {i}" for i in range(n)], "source": ["a" if i % 3 else "b" for i in range(n)]}),
                   tmp_path / "pool.parquet")
    np.save(tmp_path / "vectors.npy", vectors)
    result = CliRunner().invoke(main, ["embeddings", "import", str(tmp_path / "vectors.npy"), "--ids", str(tmp_path / "pool.parquet"),
                                       "--out", str(tmp_path / "store"), "--model", "my-encoder", "--shard-rows", "100", "--quiet"])
    assert result.exit_code == 0, result.output
    targets = {}
    for t in range(2):
        q = centres[t] + 0.3 * rng.standard_normal((7, dim)).astype(np.float32)
        np.save(tmp_path / f"t{t}.npy", q)
        (tmp_path / f"t{t}.txt").write_text("".join(f"q{t}-{j}\n" for j in range(7)), encoding="utf-8")
        result = CliRunner().invoke(main, ["embeddings", "import", str(tmp_path / f"t{t}.npy"), "--ids", str(tmp_path / f"t{t}.txt"),
                                           "--out", str(tmp_path / f"t{t}-store"), "--model", "my-encoder", "--quiet"])
        assert result.exit_code == 0, result.output
        targets[f"task{t}"] = q
    spec = {"name": "byo", "out": str(tmp_path / "run"), "pool": {"path": str(tmp_path / "pool.parquet"), "id_column": "id"},
            "embedding": {"store": str(tmp_path / "store")},
            "steps": [{"step": "rds", "budget": 30, "targets": {f"task{t}": str(tmp_path / f"t{t}-store") for t in range(2)},
                       "group_column": "source", "group_quotas": {"b": 5}}],
            "report": {"html": False}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    result = CliRunner().invoke(main, ["run", str(tmp_path / "spec.yaml"), "--local", "--quiet"])
    assert result.exit_code == 0, result.output
    curated = open_curated(next((tmp_path / "run" / "steps").iterdir()))
    table = pa.concat_tables(curated.tables())
    got = table.column("id").to_pylist()
    expected, _ = brute_force_rds(vectors, targets, 30, groups=[("a" if i % 3 else "b") for i in range(n)], group_quotas={"b": 5})
    assert got == [ids[p] for p in expected]
    assert table.column("source").to_pylist().count("b") <= 5
