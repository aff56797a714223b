"""Tests of thresher.stores.pool: planning partitions, stable ids, reading rows, fingerprints, errors.

Rows read through a pool are compared with the same files read directly by
pandas, pyarrow or datasets; ids and partitions are checked for every
partition size.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle

import datasets
import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thresher.exceptions import ArtifactError, InputDataError, ParameterError
from thresher.stores.pool import jsonl as jsonl_format
from thresher.stores.pool import Pool, PoolPartition, open_pool, reopen_pool

N_ROWS = 23
PARTITION_SIZES = [1, 4, 7, 23, 100]


def reference_rows(n: int = N_ROWS, offset: int = 0) -> list[dict]:
    return [{"text": f"row {offset + i} ü", "n": offset + i, "score": (offset + i) / 4} for i in range(n)]


def write_jsonl(path, rows, *, blank_every: int = 0, crlf: bool = False, trailing_newline: bool = True) -> None:
    end = "\r\n" if crlf else "\n"
    lines = []
    for i, row in enumerate(rows):
        lines.append(json.dumps(row, ensure_ascii=False))
        if blank_every and i % blank_every == 0:
            lines.append("   \t" if i % 2 else "")
    text = end.join(lines) + (end if trailing_newline else "")
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8", newline="") as f:
        f.write(text)


def write_format(directory, fmt: str, rows: list[dict]) -> str:
    """Write rows as ``fmt`` in ``directory``; returns the file's path."""
    table = pa.Table.from_pylist(rows)
    if fmt in ("jsonl", "jsonl.gz"):
        path = directory / f"data.{fmt}"
        write_jsonl(path, rows, blank_every=5)
    elif fmt == "json":
        path = directory / "data.json"
        path.write_text(json.dumps(rows, indent=1, ensure_ascii=False), encoding="utf-8")
    elif fmt == "parquet":
        path = directory / "data.parquet"
        pq.write_table(table, path, row_group_size=5)
    elif fmt == "arrow.stream":
        path = directory / "data.arrow"
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=6)
    elif fmt == "arrow.file":
        path = directory / "data.arrow"
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=6)
    elif fmt in ("csv", "csv.gz"):
        path = directory / f"data.{fmt}"
        opener = gzip.open if fmt.endswith(".gz") else open
        with opener(path, "wb") as f:
            pcsv.write_csv(table, f)
    else:
        raise AssertionError(fmt)
    return str(path)


def read_directly(path: str, fmt: str) -> pd.DataFrame:
    """The file read by pandas/pyarrow, independently of the pool."""
    if fmt.startswith("jsonl"):
        return pd.read_json(path, lines=True, compression="infer")
    if fmt == "json":
        return pd.read_json(path)
    if fmt == "parquet":
        return pq.read_table(path).to_pandas()
    if fmt == "arrow.stream":
        return pa.ipc.open_stream(pa.memory_map(path)).read_all().to_pandas()
    if fmt == "arrow.file":
        return pa.ipc.open_file(pa.memory_map(path)).read_all().to_pandas()
    return pd.read_csv(path, compression="infer")


def read_all(pool: Pool, columns=None) -> pa.Table:
    return pa.concat_tables([pool.read_partition(k, columns) for k in range(pool.n_partitions)])


def assert_partitions_cover(pool: Pool, rows_per_source: dict[str, int], partition_rows: int) -> None:
    """Partitions are numbered in order and tile each source's rows exactly once."""
    assert [p.index for p in pool.partitions] == list(range(pool.n_partitions))
    seen: dict[str, list[tuple[int, int]]] = {}
    for p in pool.partitions:
        assert p.stop > p.start
        if p.format not in ("json", "json.gz"):  # a JSON array file is one partition
            assert p.stop - p.start <= partition_rows
        seen.setdefault(p.source, []).append((p.start, p.stop))
    assert list(seen) == list(rows_per_source)
    for source, ranges in seen.items():
        covered = np.concatenate([np.arange(a, b) for a, b in ranges])
        np.testing.assert_array_equal(covered, np.arange(rows_per_source[source]))
    assert pool.n_rows == sum(rows_per_source.values())


FORMATS = ["jsonl", "jsonl.gz", "json", "parquet", "arrow.stream", "arrow.file", "csv", "csv.gz"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_reads_all_rows_with_ids_independent_of_partitioning(tmp_path, fmt):
    rows = reference_rows()
    path = write_format(tmp_path, fmt, rows)
    expected = read_directly(path, fmt)
    name = os.path.basename(path)
    all_ids = []
    for partition_rows in PARTITION_SIZES:
        pool = open_pool(path, partition_rows=partition_rows)
        assert pool.n_rows == N_ROWS
        assert pool.column_names == ["text", "n", "score"]
        assert {p.format for p in pool.partitions} == {fmt}
        expected_partitions = 1 if fmt == "json" else -(-N_ROWS // partition_rows)
        assert pool.n_partitions == expected_partitions
        assert_partitions_cover(pool, {path: N_ROWS}, partition_rows)
        table = read_all(pool)
        assert table.column_names == ["id", "text", "n", "score"]
        pd.testing.assert_frame_equal(table.drop_columns("id").to_pandas(), expected, check_dtype=False)
        all_ids.append(table.column("id").to_pylist())
        for part in pool.partitions:  # each partition holds exactly its rows
            got = pool.read_partition(part)
            assert got.column("n").to_pylist() == list(range(part.start, part.stop))
            only_ids = pool.read_partition(part, [])
            assert only_ids.column_names == ["id"] and only_ids.num_rows == part.stop - part.start
    assert all(ids == [f"{name}:{i}" for i in range(N_ROWS)] for ids in all_ids)


def test_jsonl_byte_ranges_align_on_line_starts(tmp_path):
    path = tmp_path / "a.jsonl"
    write_jsonl(path, reference_rows(), blank_every=3, crlf=True, trailing_newline=False)
    data = path.read_bytes()
    pool = open_pool(path, partition_rows=4)
    assert pool.partitions[0].byte_start == 0
    assert pool.partitions[-1].byte_stop == len(data)
    for prev, part in zip(pool.partitions, pool.partitions[1:]):
        assert prev.byte_stop == part.byte_start
        assert data[part.byte_start - 1 : part.byte_start] == b"\n"
        assert json.loads(data[part.byte_start :].split(b"\n", 1)[0])["n"] == part.start
    assert read_all(pool).column("n").to_pylist() == list(range(N_ROWS))


def test_jsonl_scan_is_the_same_whatever_the_chunk_size(tmp_path, monkeypatch):
    path = tmp_path / "a.jsonl"
    write_jsonl(path, reference_rows(), blank_every=2, crlf=True, trailing_newline=False)
    big = open_pool(path, partition_rows=3)
    for chunk in (1, 2, 7, 64):
        monkeypatch.setattr(jsonl_format, "_CHUNK", chunk)
        small = open_pool(path, partition_rows=3)
        assert small == big
        assert read_all(small).equals(read_all(big))


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(st.sampled_from(["{}", '{"a":1}', "", " ", "\t\r", "\r", ' {"b": "x y"} ']), max_size=40),
    trailing=st.booleans(),
    every=st.integers(1, 5),
    chunk=st.integers(1, 16),
)
def test_scan_matches_a_line_by_line_count(lines, trailing, every, chunk):
    import io

    data = ("\n".join(lines) + ("\n" if trailing else "")).encode()
    # Oracle: split into lines, keep those with a non-blank byte, note where each starts.
    starts, offset = [], 0
    for line in data.split(b"\n"):
        if line.strip(b" \t\r"):
            starts.append(offset)
        offset += len(line) + 1
    old = jsonl_format._CHUNK
    jsonl_format._CHUNK = chunk
    try:
        scan = jsonl_format._scan_jsonl(io.BytesIO(data), every)
    finally:
        jsonl_format._CHUNK = old
    assert scan.n_rows == len(starts)
    assert scan.marks == starts[::every]
    assert scan.n_bytes == len(data)


def test_a_line_longer_than_a_parse_block_is_read(tmp_path):
    rows = [{"text": "x" * (3 << 20), "n": 0}, {"text": "short", "n": 1}]
    path = tmp_path / "long.jsonl"
    write_jsonl(path, rows)
    pool = open_pool(path, partition_rows=1)
    assert [len(t) for t in read_all(pool).column("text").to_pylist()] == [3 << 20, 5]


def test_csv_values_may_hold_newlines_quotes_and_commas(tmp_path):
    texts = [f'line {i}\nsecond, "quoted"' for i in range(30)]
    path = tmp_path / "q.csv"
    pcsv.write_csv(pa.table({"text": texts, "n": list(range(30))}), path)
    pool = open_pool(path, partition_rows=7)
    table = read_all(pool)
    assert table.column("text").to_pylist() == texts == pd.read_csv(path)["text"].tolist()
    assert table.column("id").to_pylist() == [f"q.csv:{i}" for i in range(30)]


def test_json_file_holding_json_lines_is_read_as_jsonl(tmp_path):
    path = tmp_path / "lines.json"
    write_jsonl(path, reference_rows())
    pool = open_pool(path, partition_rows=10)
    assert {p.format for p in pool.partitions} == {"jsonl"}
    assert pool.n_partitions == 3
    assert read_all(pool).column("n").to_pylist() == list(range(N_ROWS))


def test_parquet_partitions_cut_across_row_groups(tmp_path):
    rows = reference_rows(100)
    path = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=9)
    for partition_rows in (4, 13, 50):
        pool = open_pool(path, partition_rows=partition_rows)
        for part in pool.partitions:
            got = pool.read_partition(part, columns=["n"])
            assert got.column_names == ["id", "n"]
            assert got.column("n").to_pylist() == list(range(part.start, part.stop))


def test_directory_glob_and_list_give_sorted_files_and_relative_names(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    write_jsonl(tmp_path / "b.jsonl", reference_rows(5, 100))
    write_jsonl(tmp_path / "a.jsonl", reference_rows(3, 0))
    write_jsonl(tmp_path / "sub" / "c.jsonl", reference_rows(4, 200))
    write_jsonl(tmp_path / ".hidden" / "d.jsonl", reference_rows(2, 300))
    (tmp_path / "README.md").write_text("not data")
    (tmp_path / "_SUCCESS").write_text("")

    pool = open_pool(tmp_path, partition_rows=2)
    ids = read_all(pool, ["n"])
    assert ids.column("id").to_pylist() == (
        [f"a.jsonl:{i}" for i in range(3)] + [f"b.jsonl:{i}" for i in range(5)] + [f"sub/c.jsonl:{i}" for i in range(4)]
    )
    assert ids.column("n").to_pylist() == [0, 1, 2, 100, 101, 102, 103, 104, 200, 201, 202, 203]
    rows_per_source = {str(tmp_path / "a.jsonl"): 3, str(tmp_path / "b.jsonl"): 5, str(tmp_path / "sub" / "c.jsonl"): 4}
    assert_partitions_cover(pool, rows_per_source, 2)

    globbed = open_pool(str(tmp_path / "*.jsonl"), partition_rows=2)
    assert read_all(globbed, []).column("id").to_pylist() == [f"a.jsonl:{i}" for i in range(3)] + [f"b.jsonl:{i}" for i in range(5)]

    listed = open_pool([tmp_path / "b.jsonl", tmp_path / "sub" / "c.jsonl"], partition_rows=10)
    assert read_all(listed, []).column("id").to_pylist() == [f"b.jsonl:{i}" for i in range(5)] + [f"sub/c.jsonl:{i}" for i in range(4)]


def test_files_with_other_integer_and_float_types_are_unified(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"x": 1, "t": "a"}, {"x": 2, "t": "b"}])
    write_jsonl(tmp_path / "b.jsonl", [{"t": "c", "x": 2.5}])
    pool = open_pool(tmp_path)
    assert pool.schema.field("x").type == pa.float64()
    table = read_all(pool)
    assert table.column_names == ["id", "x", "t"]
    assert table.column("x").to_pylist() == [1.0, 2.0, 2.5]


def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    ds = datasets.Dataset.from_list(reference_rows())
    ds.save_to_disk(str(tmp_path / "one"), num_shards=3)
    datasets.DatasetDict({"train": ds, "test": ds.select(range(5))}).save_to_disk(str(tmp_path / "dict"))

    pool = open_pool(tmp_path / "one", partition_rows=6)
    assert {p.format for p in pool.partitions} == {"hf_disk"}
    table = read_all(pool)
    assert table.column("id").to_pylist() == [f"data:{i}" for i in range(N_ROWS)]
    assert table.drop_columns("id").to_pylist() == ds.to_list()

    test = open_pool(tmp_path / "dict", split="test", partition_rows=2)
    table = read_all(test)
    assert table.column("id").to_pylist() == [f"test:{i}" for i in range(5)]
    assert table.drop_columns("id").to_pylist() == ds.select(range(5)).to_list()
    with pytest.raises(InputDataError, match=r"splits \['test', 'train'\]"):
        open_pool(tmp_path / "dict")
    with pytest.raises(InputDataError, match="no split 'dev'"):
        open_pool(tmp_path / "dict", split="dev")

    again = reopen_pool(json.loads(json.dumps(pool.describe())))
    assert again == pool
    assert read_all(again).equals(read_all(pool))


def test_in_memory_dataset_and_dataset_dict():
    ds = datasets.Dataset.from_list(reference_rows())
    pool = open_pool(ds, partition_rows=5)
    table = read_all(pool)
    assert table.column("id").to_pylist() == [f"data:{i}" for i in range(N_ROWS)]
    assert table.drop_columns("id").to_pylist() == ds.to_list()
    assert pool.partitions[0].source == "" and pool.partitions[0].format == "dataset"

    shuffled = ds.select([7, 3, 20, 0])  # an indices mapping: rows in the mapping's order
    assert read_all(open_pool(shuffled, partition_rows=3)).column("n").to_pylist() == [7, 3, 20, 0]

    dd = datasets.DatasetDict({"train": ds, "validation": ds.select(range(4))})
    val = open_pool(dd, split="validation", partition_rows=3)
    assert read_all(val).column("id").to_pylist() == [f"validation:{i}" for i in range(4)]
    with pytest.raises(InputDataError, match=r"splits \['train', 'validation'\]"):
        open_pool(dd)

    restored = pickle.loads(pickle.dumps(pool))
    assert restored == pool and read_all(restored).equals(table)
    with pytest.raises(InputDataError, match="save_to_disk"):
        reopen_pool(pool.describe())  # nothing on disk backs it


def test_dataset_backed_by_cache_files_reopens_from_its_description(tmp_path):
    datasets.Dataset.from_list(reference_rows()).save_to_disk(str(tmp_path / "d"), num_shards=2)
    ds = datasets.load_from_disk(str(tmp_path / "d"))
    pool = open_pool(ds, partition_rows=4)
    assert pool.dataset_files is not None and len(pool.dataset_files) == 2
    again = reopen_pool(json.loads(json.dumps(pool.describe())))
    assert again == pool
    assert read_all(again).equals(read_all(pool))
    assert open_pool(ds.select([1, 2]), partition_rows=4).dataset_files is None  # a row selection is not the files


def test_memory_and_file_urls(tmp_path):
    fs = fsspec.filesystem("memory")
    rows = reference_rows()
    try:
        with fs.open("/thresher-pool/a.jsonl", "w") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows[:10]))
        with fs.open("/thresher-pool/b.parquet", "wb") as f:
            pq.write_table(pa.Table.from_pylist(rows[10:]), f, row_group_size=4)
        pool = open_pool("memory://thresher-pool/*", partition_rows=4)
        table = read_all(pool)
        assert table.column("id").to_pylist() == [f"a.jsonl:{i}" for i in range(10)] + [f"b.parquet:{i}" for i in range(13)]
        assert table.column("n").to_pylist() == list(range(N_ROWS))
        assert all(p.source.startswith("memory://") for p in pool.partitions)
        assert reopen_pool(pool.describe()) == pool
        assert read_all(pickle.loads(pickle.dumps(pool))).equals(table)
    finally:
        fs.rm("/thresher-pool", recursive=True)

    path = write_format(tmp_path, "parquet", rows)
    local = open_pool(path, partition_rows=5)
    url = open_pool(f"file://{path}", partition_rows=5)
    assert url == local
    assert read_all(url).equals(read_all(local))


def test_fingerprint_follows_content_not_partitioning(tmp_path):
    path = tmp_path / "a.jsonl"
    write_jsonl(path, reference_rows())
    first = open_pool(path, partition_rows=4)
    assert open_pool(path, partition_rows=4).fingerprint == first.fingerprint
    assert open_pool(path, partition_rows=9).fingerprint == first.fingerprint
    assert open_pool(path, id_column="n").fingerprint != first.fingerprint

    description = first.describe()
    rows = reference_rows()
    rows[5]["text"] = "changed"
    write_jsonl(path, rows)
    assert open_pool(path, partition_rows=4).fingerprint != first.fingerprint
    with pytest.raises(InputDataError, match="changed"):
        reopen_pool(description, verify=True)

    pq_path = tmp_path / "b.parquet"
    pq.write_table(pa.Table.from_pylist(rows), pq_path)
    before = open_pool(pq_path).fingerprint
    pq.write_table(pa.Table.from_pylist(rows[:-1]), pq_path)
    assert open_pool(pq_path).fingerprint != before

    ds = datasets.Dataset.from_list(rows)
    assert open_pool(ds).fingerprint == open_pool(ds).fingerprint
    assert open_pool(ds).fingerprint != open_pool(ds.select(range(3))).fingerprint


@pytest.mark.parametrize("fmt", ["jsonl.gz", "parquet", "csv"])
def test_describe_round_trip_and_pickle(tmp_path, fmt):
    path = write_format(tmp_path, fmt, reference_rows())
    pool = open_pool(path, partition_rows=6, id_column="n")
    description = json.loads(json.dumps(pool.describe()))
    again = reopen_pool(description, verify=True)
    assert again == pool
    assert again.describe() == pool.describe()
    restored = pickle.loads(pickle.dumps(pool))
    assert restored == pool
    for k in range(pool.n_partitions):
        assert again.read_partition(k).equals(pool.read_partition(k))
        assert restored.read_partition(k).equals(pool.read_partition(k))
    with pytest.raises(ArtifactError, match="not a pool description"):
        reopen_pool({"kind": "embeddings"})


def test_id_column_int_and_string(tmp_path):
    rows = [{"uid": f"u{i:03d}", "k": 10 * i, "text": f"t{i}"} for i in range(9)]
    path = tmp_path / "a.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([("uid", pa.large_string()), ("k", pa.int32()), ("text", pa.string())])), path)
    by_uid = open_pool(path, id_column="uid", partition_rows=4)
    assert by_uid.id_type == pa.string()
    table = read_all(by_uid, ["text"])
    assert table.column_names == ["id", "text"]
    assert table.column("id").to_pylist() == [r["uid"] for r in rows]
    by_k = open_pool(path, id_column="k", partition_rows=4)
    assert by_k.id_type == pa.int64()
    table = read_all(by_k)
    assert table.column("id").type == pa.int64()
    assert table.column("id").to_pylist() == [r["k"] for r in rows]
    assert table.column("k").to_pylist() == [r["k"] for r in rows]  # the id column stays a pool column too


def test_a_column_named_id_is_the_id_unless_another_is_named(tmp_path):
    path = tmp_path / "a.jsonl"
    write_jsonl(path, [{"id": 7, "text": "a"}, {"id": 3, "text": "b"}])
    assert read_all(open_pool(path)).column("id").to_pylist() == [7, 3]
    pool = open_pool(path, id_column="id")
    assert pool.column_names == ["text"]
    table = read_all(pool)
    assert table.column_names == ["id", "text"]
    assert table.column("id").to_pylist() == [7, 3]


def test_id_column_errors(tmp_path):
    path = tmp_path / "a.jsonl"
    write_jsonl(path, [{"uid": 1, "t": "a"}, {"uid": 2, "t": "b"}, {"uid": None, "t": "c"}, {"uid": 2, "t": "d"}])
    with pytest.raises(InputDataError) as info:
        open_pool(path, id_column="key")
    message = str(info.value)
    assert "'key'" in message and str(path) in message and "['uid', 't']" in message
    pool = open_pool(path, id_column="uid", partition_rows=2)
    with pytest.raises(InputDataError, match=rf"null in row 2 of {path}"):
        pool.read_partition(1)
    write_jsonl(path, [{"uid": 1, "t": "a"}, {"uid": 1, "t": "b"}])
    with pytest.raises(InputDataError, match=r"repeats the id 1 \(again in row 1"):
        open_pool(path, id_column="uid").read_partition(0)
    write_jsonl(path, [{"uid": 1.5, "t": "a"}])
    with pytest.raises(InputDataError, match="integers or strings"):
        open_pool(path, id_column="uid")


def test_bad_json_names_the_file_and_line(tmp_path, monkeypatch):
    path = tmp_path / "bad.jsonl"
    good = [json.dumps(r) for r in reference_rows(10)]
    lines = good[:3] + ["", ""] + good[3:7] + ['{"text": "oops", "n": 7'] + good[7:]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputDataError, match=rf"Line 10 of {path} is not valid JSON"):
        open_pool(path)  # within the first MiB, where the column types are inferred
    monkeypatch.setattr(jsonl_format, "_SAMPLE_BYTES", 16)
    pool = open_pool(path, partition_rows=4)  # the sample parses: the bad line is found on reading
    pool.read_partition(0)
    with pytest.raises(InputDataError, match=rf"Line 10 of {path} is not valid JSON"):
        pool.read_partition(1)

    path.write_text("\n".join(good[:2] + ["[1, 2]"]) + "\n")
    with pytest.raises(InputDataError, match=rf"Line 3 of {path} is a JSON list, not an object"):
        open_pool(path).read_partition(0)

    gz = tmp_path / "bad.jsonl.gz"
    with gzip.open(gz, "wt") as f:
        f.write("\n".join(good[:5] + ["\n", "{nope}"] + good[5:]) + "\n")
    pool = open_pool(gz, partition_rows=5)
    with pytest.raises(InputDataError, match=rf"Line 8 of {gz} is not valid JSON"):
        pool.read_partition(1)

    array = tmp_path / "bad.json"
    array.write_text('[\n{"a": 1},\n{"a": 2,,}\n]')
    with pytest.raises(InputDataError, match=rf"Line 3 of {array} is not valid JSON"):
        open_pool(array)
    array.write_text('[{"a": 1}, 3]')
    with pytest.raises(InputDataError, match=rf"Element 1 of the JSON array in {array}"):
        open_pool(array)


def test_conflicting_types_after_the_sample_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(jsonl_format, "_SAMPLE_BYTES", 16)
    path = tmp_path / "a.jsonl"
    write_jsonl(path, [{"x": i} for i in range(6)] + [{"x": "seven"}])
    pool = open_pool(path, partition_rows=3)
    assert pool.schema.field("x").type == pa.int64()
    read_all_but_last = [pool.read_partition(k) for k in range(2)]
    assert sum(t.num_rows for t in read_all_but_last) == 6
    with pytest.raises(InputDataError, match=rf"{path} from line 7 on hold values of conflicting types"):
        pool.read_partition(2)


def test_keys_missing_from_a_partition_read_as_nulls_of_the_pool_type(tmp_path):
    path = tmp_path / "a.jsonl"
    write_jsonl(path, [{"a": "x", "b": 1}, {"a": "y"}, {"a": "z"}])
    pool = open_pool(path, partition_rows=1)
    last = pool.read_partition(2)
    assert last.schema.field("b").type == pa.int64()
    assert last.column("b").to_pylist() == [None]


def test_empty_and_missing_inputs(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n  \n")
    with pytest.raises(InputDataError, match=r"empty\.jsonl is empty"):
        open_pool(tmp_path / "empty.jsonl")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(InputDataError, match=r"empty\.csv is empty"):
        open_pool(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("a,b\n")
    with pytest.raises(InputDataError, match=r"header\.csv is empty"):
        open_pool(tmp_path / "header.csv")
    pq.write_table(pa.table({"a": pa.array([], pa.int64())}), tmp_path / "empty.parquet")
    with pytest.raises(InputDataError, match=r"empty\.parquet is empty"):
        open_pool(tmp_path / "empty.parquet")
    with pytest.raises(InputDataError, match="dataset is empty"):
        open_pool(datasets.Dataset.from_dict({"a": []}))
    with pytest.raises(InputDataError, match="No files match"):
        open_pool(str(tmp_path / "*.nothing"))
    with pytest.raises(InputDataError, match="does not exist"):
        open_pool(tmp_path / "missing.jsonl")
    (tmp_path / "nodata").mkdir()
    (tmp_path / "nodata" / "notes.txt").write_text("x")
    with pytest.raises(InputDataError, match="No files matched in directory"):
        open_pool(tmp_path / "nodata")
    with pytest.raises(InputDataError, match=r"format of .*notes\.txt"):
        open_pool(tmp_path / "nodata" / "notes.txt")
    (tmp_path / "ragged.csv").write_text("a,b\n1,2\n3,4,5\n")
    with pytest.raises(InputDataError, match=r"ragged\.csv is not a readable CSV file"):
        open_pool(tmp_path / "ragged.csv")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(InputDataError, match=r"broken\.parquet is not a readable Parquet file"):
        open_pool(tmp_path / "broken.parquet")


def test_mixed_schemas_name_both_files(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"text": "a", "n": 1}])
    write_jsonl(tmp_path / "b.jsonl", [{"text": "b", "m": 1}])
    with pytest.raises(InputDataError) as info:
        open_pool(tmp_path)
    assert "a.jsonl" in str(info.value) and "b.jsonl" in str(info.value)
    write_jsonl(tmp_path / "b.jsonl", [{"text": "b", "n": "one"}])
    with pytest.raises(InputDataError, match=r"b\.jsonl and .*a\.jsonl hold columns of incompatible types"):
        open_pool(tmp_path)


def test_bad_parameters():
    with pytest.raises(ParameterError, match="'partition_rows' parameter of open_pool"):
        open_pool("x.jsonl", partition_rows=0)
    with pytest.raises(ParameterError, match="'format' parameter"):
        open_pool("x.jsonl", format="xml")
    with pytest.raises(ParameterError, match="'source' parameter"):
        open_pool(42)


def test_read_partition_validates_its_arguments(tmp_path):
    path = write_format(tmp_path, "jsonl", reference_rows())
    pool = open_pool(path, partition_rows=10)
    with pytest.raises(InputDataError, match=r"Column 'nope' is not in the pool; it has columns \['text', 'n', 'score'\]"):
        pool.read_partition(0, ["nope"])
    with pytest.raises(ParameterError, match="'partition' parameter"):
        pool.read_partition(3)
    assert pool.read_partition(0, ["score", "text", "id"]).column_names == ["id", "score", "text"]


def test_a_file_changed_since_planning_is_refused(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.Table.from_pylist(reference_rows()), path)
    pool = open_pool(path, partition_rows=10)
    pq.write_table(pa.Table.from_pylist(reference_rows(12)), path)
    with pytest.raises(InputDataError, match="changed since the pool was opened"):
        pool.read_partition(2)


def test_partition_is_a_frozen_record():
    part = PoolPartition(0, "a.jsonl", "jsonl", 0, 5, 0, 100)
    assert part.n_rows == 5
    with pytest.raises(AttributeError):
        part.start = 1  # type: ignore[misc]
