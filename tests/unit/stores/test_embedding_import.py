"""Bring-your-own embeddings (thresher.stores.embedding_import): every format round-trips, every bad input is named.

Source files are written with pyarrow and numpy; the store is read back through
its own reader and through pyarrow/datasets, and compared with the source arrays.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from thresher import import_embeddings
from thresher.exceptions import ArtifactError, InputDataError, ParameterError
from thresher.fingerprint import hash_file
from thresher.stores import open_embedding_store

N, DIM = 230, 12


@pytest.fixture
def source():
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    ids = [f"doc-{(17 * i) % N:04d}" for i in range(N)]
    return vectors, ids


def fixed_list(vectors: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(vectors).reshape(-1)), vectors.shape[1])


def write_parquet(path: Path, ids, vectors: np.ndarray, *, fixed: bool = True, row_group: int | None = None, **columns) -> Path:
    column = fixed_list(vectors) if fixed else pa.array([list(v) for v in vectors.tolist()], pa.list_(pa.from_numpy_dtype(vectors.dtype)))
    pq.write_table(pa.table({"id": ids, "embedding": column, **columns}), path, row_group_size=row_group)
    return path


def write_ipc(path: Path, ids, vectors: np.ndarray, *, stream: bool, batch: int = 50) -> Path:
    table = pa.table({"id": ids, "embedding": fixed_list(vectors)})
    with pa.OSFile(str(path), "wb") as sink:
        writer = pa.ipc.new_stream(sink, table.schema) if stream else pa.ipc.new_file(sink, table.schema)
        with writer:
            writer.write_table(table, max_chunksize=batch)
    return path


def check_store(out: Path, vectors: np.ndarray, ids, *, dtype=np.float32) -> None:
    """The store read back (its reader, pyarrow.dataset and datasets) equals the source, row for row."""
    import datasets

    store = open_embedding_store(out, verify=True)
    assert store.n_rows == len(ids) and store.dim == vectors.shape[1]
    np.testing.assert_array_equal(store.to_numpy(dtype=np.float64), vectors.astype(dtype).astype(np.float64))
    assert store.ids().tolist() == list(ids)
    streamed = [pa.ipc.open_stream(pa.memory_map(str(shard))).read_all() for shard in sorted(out.glob("part-*.arrow"))]
    assert pa.concat_tables(streamed).column("id").to_pylist() == list(ids)
    first = datasets.Dataset.from_file(str(out / "part-00000.arrow"))
    assert first["id"] == list(ids)[: len(first)]
    picked = [ids[5], ids[0], ids[-1]]
    assert store.positions_of(picked).tolist() == [5, 0, len(ids) - 1]


@pytest.mark.parametrize("layout", ["parquet-fixed", "parquet-list", "arrow-file", "arrow-stream"])
def test_arrow_and_parquet_files_round_trip(tmp_path, source, layout):
    vectors, ids = source
    if layout.startswith("parquet"):
        path = write_parquet(tmp_path / "v.parquet", ids, vectors, fixed=layout == "parquet-fixed", row_group=64)
    else:
        path = write_ipc(tmp_path / "v.arrow", ids, vectors, stream=layout == "arrow-stream")
    store = import_embeddings(path, tmp_path / "out", model="my-encoder", pooling="mean", shard_rows=100, batch_rows=37)
    check_store(tmp_path / "out", vectors, ids)
    m = store.manifest
    assert (m["model"], m["pooling"], m["dim"], m["dtype"], m["normalized"]) == ("my-encoder", "mean", DIM, "float32", False)
    assert [s["rows"] for s in m["shards"]] == [100, 100, 30]
    record = m["source"]["vector_files"][0]
    assert record["checksum"] == f"xxh3_128:{hash_file(path)}" and record["size"] == path.stat().st_size
    assert record["mtime_ns"] == path.stat().st_mtime_ns and m["source"]["source_dtypes"] == ["float32"]


@pytest.mark.parametrize("ids_format", ["npy-int", "npy-str", "txt", "jsonl", "parquet", "two-files"])
def test_npy_vectors_with_ids_from_another_file(tmp_path, source, ids_format):
    vectors, str_ids = source
    np.save(tmp_path / "v.npy", vectors.astype(np.float64))
    int_ids = [1000 + 3 * i for i in range(N)]
    expected = int_ids if ids_format in ("npy-int", "jsonl") else str_ids
    if ids_format == "npy-int":
        np.save(tmp_path / "ids.npy", np.asarray(int_ids, dtype=np.int32))
        id_files = [tmp_path / "ids.npy"]
    elif ids_format == "npy-str":
        np.save(tmp_path / "ids.npy", np.asarray(str_ids))
        id_files = [tmp_path / "ids.npy"]
    elif ids_format == "txt":
        (tmp_path / "ids.txt").write_text("".join(f"{i}\n" for i in str_ids), encoding="utf-8")
        id_files = [tmp_path / "ids.txt"]
    elif ids_format == "jsonl":
        (tmp_path / "ids.jsonl").write_text("".join(json.dumps({"uid": i, "other": "x"}) + "\n" for i in int_ids), encoding="utf-8")
        id_files = [tmp_path / "ids.jsonl"]
    elif ids_format == "parquet":
        pq.write_table(pa.table({"uid": str_ids}), tmp_path / "ids.parquet")
        id_files = [tmp_path / "ids.parquet"]
    else:  # ids split over two files at a row that is not a batch boundary
        (tmp_path / "a.txt").write_text("".join(f"{i}\n" for i in str_ids[:71]), encoding="utf-8")
        (tmp_path / "b.txt").write_text("\n".join(str_ids[71:]), encoding="utf-8")  # no newline after the last id
        id_files = [tmp_path / "a.txt", tmp_path / "b.txt"]
    store = import_embeddings(tmp_path / "v.npy", tmp_path / "out", model="m", ids=id_files, id_column="uid", shard_rows=64, batch_rows=50)
    check_store(tmp_path / "out", vectors.astype(np.float64), expected)
    assert store.manifest["source"]["source_dtypes"] == ["float64"]
    assert [Path(r["source"]).name for r in store.manifest["source"]["id_files"]] == [p.name for p in id_files]


def test_several_files_and_a_directory_in_order(tmp_path, source):
    vectors, ids = source
    folder = tmp_path / "vectors"
    folder.mkdir()
    write_parquet(folder / "part-b.parquet", ids[100:], vectors[100:])
    write_parquet(folder / "part-a.parquet", ids[:100], vectors[:100], fixed=False)  # a list column beside a fixed-size one
    (folder / "notes.md").write_text("not data\n")
    import_embeddings(folder, tmp_path / "out", model="m", dtype="float16")
    check_store(tmp_path / "out", vectors, ids, dtype=np.float16)
    with pytest.raises(ParameterError, match=r"vectors/store is inside the input vector file .*vectors; write the output to another directory"):
        import_embeddings(folder, folder / "store", model="m")
    assert not (folder / "store").exists()


def test_normalize_and_normalized(tmp_path, source):
    vectors, ids = source
    path = write_parquet(tmp_path / "v.parquet", ids, vectors)
    store = import_embeddings(path, tmp_path / "norm", model="m", normalize=True)
    expected = vectors / np.linalg.norm(vectors.astype(np.float32), axis=1, keepdims=True)
    np.testing.assert_allclose(store.to_numpy(), expected, rtol=1e-6)
    assert store.normalized and store.manifest["source"]["normalized_on_import"] is True
    unit = write_parquet(tmp_path / "unit.parquet", ids, expected.astype(np.float16))  # float16 units: norms within 1e-2
    assert import_embeddings(unit, tmp_path / "detected", model="m").normalized  # not stated: detected from the rows
    assert import_embeddings(unit, tmp_path / "stated", model="m", normalized=True).normalized
    assert not import_embeddings(unit, tmp_path / "stated-not", model="m", normalized=False).normalized  # as given
    assert not import_embeddings(path, tmp_path / "raw", model="m").normalized
    with pytest.raises(InputDataError, match=rf"The vector of id={ids[0]!r} \(row 0 of .*v\.parquet\) has L2 norm [\d.]+, not 1.*stated to be normalised"):
        import_embeddings(path, tmp_path / "lie", model="m", normalized=True)
    assert not (tmp_path / "lie").exists()
    with pytest.raises(ParameterError, match="'normalize' and 'normalized' parameters .* contradict"):
        import_embeddings(path, tmp_path / "both", model="m", normalize=True, normalized=False)


def test_streaming_keeps_memory_bounded_by_batch_and_shard(tmp_path):
    """51 MB of float64 vectors read 1,000 rows at a time into 4,000-row shards: the peak is far below the source.

    The peak includes the two 8 MiB read buffers of the content hash (the fingerprint); an import
    holding the whole source, or even a float32 copy of it (25.6 MB), would exceed the bound.
    """
    rng = np.random.default_rng(0)
    n, dim = 200_000, 32
    path = tmp_path / "v.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(n, dim))
    for lo in range(0, n, 10_000):
        out[lo : lo + 10_000] = rng.standard_normal((10_000, dim))
    out.flush()
    del out
    np.save(tmp_path / "ids.npy", np.arange(n, dtype=np.int64))
    np.save(tmp_path / "warm.npy", np.ones((3, 2)))  # a first small import: module imports are not counted in the peak below
    import_embeddings(tmp_path / "warm.npy", tmp_path / "warm", model="m", ids=_ids_file(tmp_path, 3))
    tracemalloc.start()
    store = import_embeddings(path, tmp_path / "out", model="m", ids=tmp_path / "ids.npy", shard_rows=4_000, batch_rows=1_000)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert store.n_shards == 50 and [s.rows for s in store.shards] == [4_000] * 50
    source_bytes = n * dim * 8
    assert peak < source_bytes / 2.5, f"peak numpy allocation {peak / 2**20:.1f} MiB for a {source_bytes / 2**20:.0f} MiB source"
    np.testing.assert_array_equal(store.take([0, 12_345, n - 1]), np.load(path, mmap_mode="r")[[0, 12_345, n - 1]].astype(np.float32))


def _ids_file(tmp_path: Path, n: int) -> Path:
    path = tmp_path / f"ids-{n}.txt"
    path.write_text("".join(f"id-{i}\n" for i in range(n)), encoding="utf-8")
    return path


def test_reimport_is_reused_overwrite_replaces_and_a_users_directory_is_refused(tmp_path, source):
    vectors, ids = source
    (tmp_path / "src").mkdir()
    path = write_parquet(tmp_path / "src" / "v.parquet", ids, vectors)
    out = tmp_path / "out"
    first = import_embeddings(path, out, model="m")
    again = import_embeddings(path, out, model="m")  # same files and settings: the finished store is reused as it is
    assert again.fingerprint == first.fingerprint and again.manifest["created_at"] == first.manifest["created_at"]
    with pytest.raises(ArtifactError, match="made from other inputs or parameters.*overwrite"):
        import_embeddings(path, out, model="m", dtype="float16")
    replaced = import_embeddings(path, out, model="m", dtype="float16", overwrite=True)
    assert replaced.dtype == "float16" and replaced.fingerprint != first.fingerprint
    check_store(out, vectors, ids, dtype=np.float16)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "part-00000.arrow"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me\n")
    for overwrite in (False, True):
        with pytest.raises(ArtifactError, match=r"mine is not empty and holds no thresher artefact \(it holds 'notes\.txt'\)"):
            import_embeddings(path, mine, model="m", overwrite=overwrite)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    with pytest.raises(ParameterError, match=r"src contains the input vector file .*src/v\.parquet; write the output to another directory"):
        import_embeddings(path, tmp_path / "src", model="m")


def test_fingerprint_follows_content_and_settings(tmp_path, source):
    vectors, ids = source
    a = write_parquet(tmp_path / "a.parquet", ids, vectors)
    b = write_parquet(tmp_path / "b.parquet", ids, vectors)  # same bytes, another name: same content
    fa = import_embeddings(a, tmp_path / "oa", model="m").fingerprint
    assert import_embeddings(b, tmp_path / "ob", model="m").fingerprint == fa
    assert import_embeddings(a, tmp_path / "oc", model="other").fingerprint != fa
    changed = vectors.copy()
    changed[7, 3] += 1
    c = write_parquet(tmp_path / "c.parquet", ids, changed)
    assert import_embeddings(c, tmp_path / "od", model="m").fingerprint != fa


# -- bad inputs: each refused, naming what is wrong, leaving no store behind -----------------------------------------


def _refused(tmp_path, error, pattern, *args, **kwargs):
    out = tmp_path / "out"
    with pytest.raises(error, match=pattern):
        import_embeddings(*args, out, **{"model": "m", **kwargs})
    assert not out.exists(), "a refused import left its output directory behind"


def test_values_that_are_not_finite_are_refused_by_id(tmp_path, source):
    vectors, ids = source
    bad = vectors.copy()
    bad[150, 4] = np.nan
    _refused(tmp_path, InputDataError, rf"The vector of id={ids[150]!r} \(row 150 of .*nan\.parquet\) holds NaN or infinity",
             write_parquet(tmp_path / "nan.parquet", ids, bad), shard_rows=50, batch_rows=40)
    bad = vectors.astype(np.float64)
    bad[3, 0] = -np.inf
    np.save(tmp_path / "inf.npy", bad)
    np.save(tmp_path / "ids.npy", np.arange(N))
    _refused(tmp_path, InputDataError, r"The vector of id=3 \(row 3 of .*inf\.npy\) holds NaN or infinity", tmp_path / "inf.npy", ids=tmp_path / "ids.npy")
    big = vectors.astype(np.float64)
    big[9, 1] = 1e6  # finite in float64, infinite in float16
    np.save(tmp_path / "big.npy", big)
    _refused(tmp_path, InputDataError, r"The vector of id=9 \(row 9 of .*big\.npy\) holds 1e\+06, beyond float16's range \(±65504\)",
             tmp_path / "big.npy", ids=tmp_path / "ids.npy", dtype="float16")


def test_repeated_ids_are_refused_naming_the_id_and_both_rows(tmp_path, source):
    vectors, ids = source
    write_parquet(tmp_path / "a.parquet", ids[:100], vectors[:100])
    again = list(ids[100:])
    again[60] = ids[42]
    write_parquet(tmp_path / "b.parquet", again, vectors[100:])
    _refused(tmp_path, InputDataError, rf"The id {ids[42]!r} appears 2 times \(row 42 of .*a\.parquet and row 60 of .*b\.parquet\): ids must be unique",
             [tmp_path / "a.parquet", tmp_path / "b.parquet"], shard_rows=30)


def test_widths_that_differ_are_refused_naming_file_and_row(tmp_path, source):
    vectors, ids = source
    write_parquet(tmp_path / "a.parquet", ids[:100], vectors[:100])
    write_parquet(tmp_path / "b.parquet", ids[100:], np.zeros((N - 100, DIM + 1), np.float32) + 1)
    _refused(tmp_path, InputDataError, r"The vectors of .*b\.parquet have dim 13; those of .*a\.parquet have dim 12",
             [tmp_path / "a.parquet", tmp_path / "b.parquet"])
    rows = [list(v) for v in vectors.tolist()]
    rows[77] = rows[77][:-2]
    pq.write_table(pa.table({"id": ids, "embedding": pa.array(rows, pa.list_(pa.float32()))}), tmp_path / "ragged.parquet")
    _refused(tmp_path, InputDataError, rf"The vector at row 77 \(id={ids[77]!r}, 0-based\) of .*ragged\.parquet has 10 values; the vectors before it have 12",
             tmp_path / "ragged.parquet", batch_rows=30)
    write_parquet(tmp_path / "c.parquet", ids[100:], vectors[100:, :8], fixed=False)  # a list column narrower than the file before
    _refused(tmp_path, InputDataError, r"row 0 \(id=.*0-based\) of .*c\.parquet has 8 values; the vectors before it have 12",
             [tmp_path / "a.parquet", tmp_path / "c.parquet"])


def test_types_and_shapes_that_are_not_vectors_are_refused(tmp_path, source):
    vectors, ids = source
    pq.write_table(pa.table({"id": ids, "embedding": pa.array([[1, 2]] * N, pa.list_(pa.int64()))}), tmp_path / "ints.parquet")
    _refused(tmp_path, InputDataError, r"The vector column 'embedding' of .*ints\.parquet holds list<\w+: int64> values; vectors must be lists",
             tmp_path / "ints.parquet")
    write_parquet(tmp_path / "v.parquet", ids, vectors)
    _refused(tmp_path, InputDataError, r"The vector column 'vec' is not in .*v\.parquet; it has columns \['id', 'embedding'\]",
             tmp_path / "v.parquet", vector_column="vec")
    _refused(tmp_path, InputDataError, r"v\.parquet holds vectors without ids", tmp_path / "v.parquet", id_column="uid")
    np.save(tmp_path / "ints.npy", np.ones((4, 3), dtype=np.int32))
    _refused(tmp_path, InputDataError, r"ints\.npy holds int32 values; vectors must be float16, float32 or float64", tmp_path / "ints.npy", ids=tmp_path / "v.parquet")
    np.save(tmp_path / "flat.npy", np.ones(5, dtype=np.float32))
    _refused(tmp_path, InputDataError, r"flat\.npy holds an array of shape \(5,\); vectors must be 2-D", tmp_path / "flat.npy", ids=tmp_path / "v.parquet")
    np.save(tmp_path / "objects.npy", np.asarray([None, 1], dtype=object), allow_pickle=True)
    _refused(tmp_path, InputDataError, r"objects\.npy holds Python objects", tmp_path / "objects.npy", ids=tmp_path / "v.parquet")
    np.save(tmp_path / "v.npy", vectors)
    _refused(tmp_path, InputDataError, r"v\.npy holds vectors without ids; give the ids in another file", tmp_path / "v.npy")
    (tmp_path / "v.csv").write_text("a,b\n")
    _refused(tmp_path, InputDataError, r"The vectors file .*v\.csv has an extension import_embeddings does not read", tmp_path / "v.csv")
    _refused(tmp_path, InputDataError, r"The vectors file .*absent\.parquet does not exist", tmp_path / "absent.parquet")
    (tmp_path / "broken.arrow").write_bytes(b"not arrow at all")
    _refused(tmp_path, InputDataError, r"broken\.arrow is not an Arrow IPC file or stream", tmp_path / "broken.arrow")
    pq.write_table(pa.table({"id": pa.array([1.5] * N), "embedding": fixed_list(vectors)}), tmp_path / "floatids.parquet")
    _refused(tmp_path, InputDataError, r"The id column 'id' of .*floatids\.parquet holds double values; ids must be integers or strings",
             tmp_path / "floatids.parquet")
    _refused(tmp_path, ParameterError, r"The 'model' parameter of import_embeddings must name the model", tmp_path / "v.parquet", model=" ")
    _refused(tmp_path, ParameterError, r"The 'shard_rows' parameter of import_embeddings must be an int >= 1; got 0", tmp_path / "v.parquet", shard_rows=0)


def test_ids_that_do_not_fit_the_vectors_are_refused(tmp_path, source):
    vectors, ids = source
    np.save(tmp_path / "v.npy", vectors)
    (tmp_path / "short.txt").write_text("".join(f"{i}\n" for i in ids[:-1]), encoding="utf-8")
    _refused(tmp_path, InputDataError, rf"The ids files hold {N - 1} ids \(short\.txt: {N - 1}\) but the vector files hold {N} rows",
             tmp_path / "v.npy", ids=tmp_path / "short.txt")
    lines = [f"{i}\n" for i in ids]
    lines[120] = "\n"
    (tmp_path / "blank.txt").write_text("".join(lines), encoding="utf-8")
    _refused(tmp_path, InputDataError, r"Line 121 of .*blank\.txt is empty", tmp_path / "v.npy", ids=tmp_path / "blank.txt")
    rows = [json.dumps({"id": i}) for i in range(N)]
    rows[33] = json.dumps({"id": "thirty-three"})
    (tmp_path / "mixed.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    _refused(tmp_path, InputDataError, r"mixed\.jsonl mixes integer and string ids \(line 34 holds 'thirty-three'",
             tmp_path / "v.npy", ids=tmp_path / "mixed.jsonl")
    pq.write_table(pa.table({"id": [*ids[:9], None, *ids[10:]]}), tmp_path / "nullid.parquet")
    _refused(tmp_path, InputDataError, r"The id column 'id' is null in row 9 \(0-based\) of .*nullid\.parquet", tmp_path / "v.npy", ids=tmp_path / "nullid.parquet")
    pq.write_table(pa.table({"id": pa.array([2**63 + 5] + list(range(1, N)), pa.uint64())}), tmp_path / "huge.parquet")
    _refused(tmp_path, InputDataError, r"The id 9223372036854775813 in row 0 of .*huge\.parquet does not fit in a signed 64-bit integer",
             tmp_path / "v.npy", ids=tmp_path / "huge.parquet")
    pq.write_table(pa.table({"id": pa.array(range(100))}), tmp_path / "ints.parquet")
    pq.write_table(pa.table({"id": ids[100:]}), tmp_path / "strs.parquet")
    _refused(tmp_path, InputDataError, r"The ids of row 100 of .*v\.npy are strings; those of .*v\.npy are integers",
             tmp_path / "v.npy", ids=[tmp_path / "ints.parquet", tmp_path / "strs.parquet"], batch_rows=50)


def test_null_vectors_and_empty_input_are_refused(tmp_path, source):
    vectors, ids = source
    column = pa.array([list(v) for v in vectors.tolist()[:5]] + [None] + [list(v) for v in vectors.tolist()[6:]], pa.list_(pa.float32()))
    pq.write_table(pa.table({"id": ids, "embedding": column}), tmp_path / "null.parquet")
    _refused(tmp_path, InputDataError, rf"The vector column of row 5 \(id={ids[5]!r}, 0-based\) of .*null\.parquet is null", tmp_path / "null.parquet")
    holes = [list(v) for v in vectors.tolist()]
    holes[8][2] = None
    pq.write_table(pa.table({"id": ids, "embedding": pa.array(holes, pa.list_(pa.float32()))}), tmp_path / "hole.parquet")
    _refused(tmp_path, InputDataError, rf"The vector at row 8 \(id={ids[8]!r}, 0-based\) of .*hole\.parquet holds a null value", tmp_path / "hole.parquet")
    write_parquet(tmp_path / "empty.parquet", pa.array([], pa.string()), np.empty((0, DIM), np.float32))
    _refused(tmp_path, InputDataError, r"The vector files hold no rows \(.*empty\.parquet\); there is nothing to import", tmp_path / "empty.parquet")
    zero = vectors.copy()
    zero[11] = 0
    _refused(tmp_path, InputDataError, rf"The vector of id={ids[11]!r} \(row 11 of .*zero\.parquet\) is all zeros and cannot be L2-normalised",
             write_parquet(tmp_path / "zero.parquet", ids, zero), normalize=True)


def test_a_failure_after_some_shards_leaves_none_behind(tmp_path, source):
    """The NaN sits in the last batch: earlier shards were written, and are removed with the refusal."""
    vectors, ids = source
    bad = vectors.copy()
    bad[-1, 0] = np.nan
    out = tmp_path / "existing"
    out.mkdir()  # an empty directory the user made: kept, and left empty
    source_file = write_parquet(tmp_path / "v.parquet", ids, bad)
    (tmp_path / "notes.txt").write_text("the user's")
    before = _digest_except(tmp_path, out)
    with pytest.raises(InputDataError, match="holds NaN"):
        import_embeddings(source_file, out, model="m", shard_rows=20, batch_rows=20)
    assert [p.name for p in out.iterdir() if p.name.startswith("part-") or p.name.startswith(".tmp-")] == []
    assert not (out / "manifest.json").exists()
    assert _digest_except(tmp_path, out) == before  # the input and everything beside the output, byte for byte


def _digest_except(root, skip) -> str:
    """A hash of every path and file content under ``root``, ``skip`` (a directory) left out."""
    import hashlib

    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if skip not in p.parents and p != skip):
        h.update(str(path).encode())
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()
