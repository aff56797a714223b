"""Pinned fingerprints, ids and partitions of a small pool holding every input format.

The files under ``data/pool_formats`` are committed (their bytes, hence their
content hashes, never change); the values below were computed by the pool
code before it was split into one module per format (issue 15). Any change to
how a format is planned, named or hashed shows up here: a changed fingerprint
would make every existing embedding store refuse its pool, and changed ids
would break every artefact that refers to rows by id.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from thresher.stores.pool import FORMATS, open_pool, reopen_pool

DATA = Path(__file__).parent / "data" / "pool_formats"

# Rows i = 0..25 spread over the files a.jsonl .. h.csv.gz (in name order), rows 26..30 in the saved dataset.
FILES_FINGERPRINT = '168e95c4a5ce13109c742f4be8442548'
FILES_UID_FINGERPRINT = 'a173c71c5875ceee2a02964d1880305a'
SAVED_FINGERPRINT = 'a2883bcd5c79c0971bcde8a852f0f7ca'
FILE_ROWS = {"a.jsonl": 5, "b.jsonl.gz": 3, "c.json": 3, "d.parquet": 4, "e.arrow": 3, "f.arrow": 3, "g.csv": 3, "h.csv.gz": 2}
# (file, partition format, start, stop, byte_start, byte_stop) with partition_rows=2
FILES_PARTITIONS = [
    ('a.jsonl', 'jsonl', 0, 2, 0, 97),
    ('a.jsonl', 'jsonl', 2, 4, 97, 193),
    ('a.jsonl', 'jsonl', 4, 5, 193, 241),
    ('b.jsonl.gz', 'jsonl.gz', 0, 2, None, None),
    ('b.jsonl.gz', 'jsonl.gz', 2, 3, None, None),
    ('c.json', 'json', 0, 3, None, None),
    ('d.parquet', 'parquet', 0, 2, None, None),
    ('d.parquet', 'parquet', 2, 4, None, None),
    ('e.arrow', 'arrow.file', 0, 2, None, None),
    ('e.arrow', 'arrow.file', 2, 3, None, None),
    ('f.arrow', 'arrow.stream', 0, 2, None, None),
    ('f.arrow', 'arrow.stream', 2, 3, None, None),
    ('g.csv', 'csv', 0, 2, None, None),
    ('g.csv', 'csv', 2, 3, None, None),
    ('h.csv.gz', 'csv.gz', 0, 2, None, None),
]


def expected_row(i: int) -> dict:
    """How the fixture files were written (independent of the pool code)."""
    return {"text": f"row {i} ü", "label": i % 3, "uid": f"u{i:03d}"}


def read_all(pool) -> list[dict]:
    return [row for k in range(pool.n_partitions) for row in pool.read_partition(k).to_pylist()]


def partitions(pool) -> list[tuple]:
    return [(Path(p.source).name, p.format, p.start, p.stop, p.byte_start, p.byte_stop) for p in pool.partitions]


def test_every_format_keeps_its_pinned_fingerprint_ids_and_partitions():
    pool = open_pool(DATA / "files", partition_rows=2)
    assert pool.fingerprint == FILES_FINGERPRINT
    assert partitions(pool) == FILES_PARTITIONS
    ids = [f"{name}:{row}" for name, n in FILE_ROWS.items() for row in range(n)]
    assert read_all(pool) == [{"id": id_, **expected_row(i)} for i, id_ in enumerate(ids)]
    assert reopen_pool(pool.describe(), verify=True) == pool


def test_an_id_column_keeps_its_pinned_fingerprint():
    pool = open_pool(DATA / "files", partition_rows=2, id_column="uid")
    assert pool.fingerprint == FILES_UID_FINGERPRINT
    assert partitions(pool) == FILES_PARTITIONS
    assert [row["id"] for row in read_all(pool)] == [f"u{i:03d}" for i in range(26)]


def test_a_saved_dataset_keeps_its_pinned_fingerprint_and_ids():
    pool = open_pool(DATA / "saved", partition_rows=2)
    assert pool.fingerprint == SAVED_FINGERPRINT
    assert [(p.format, p.start, p.stop) for p in pool.partitions] == [("hf_disk", 0, 2), ("hf_disk", 2, 4), ("hf_disk", 4, 5)]
    assert read_all(pool) == [{"id": f"data:{k}", **expected_row(26 + k)} for k in range(5)]


@pytest.mark.parametrize("name", ["jsonl", "json", "parquet", "arrow", "csv"])
def test_each_file_format_alone_reads_its_file(name):
    """Forcing ``format=`` on the files of that format plans them with that format's module."""
    files = sorted(p for p in (DATA / "files").iterdir() if p.name.removesuffix(".gz").endswith(FORMATS[name].extensions))
    pool = open_pool(files, format=name, partition_rows=2)
    assert {p.format for p in pool.partitions} <= set(FORMATS[name].read_formats)
    assert pool.n_rows == sum(FILE_ROWS[p.name] for p in files)


def test_the_registry_covers_every_partition_format():
    """Every format a partition can record has exactly one reader."""
    read_formats = [kind for f in FORMATS.values() for kind in f.read_formats]
    assert len(read_formats) == len(set(read_formats))
    assert set(read_formats) == {"jsonl", "jsonl.gz", "json", "json.gz", "parquet", "arrow.file", "arrow.stream", "csv", "csv.gz", "hf_disk", "dataset"}
