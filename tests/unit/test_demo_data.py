"""The bundled demo data: its size, ids, sources, labels and licence, checked against the chitchat-dataset it came from."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from thresher.data import demo_pool_card, demo_pool_path, demo_targets_path, read_demo_pool
from thresher.stores import open_pool

LABELS = {"low", "medium", "high", "unrated"}
SOURCES = {"chitchat/opening", "chitchat/continuation"}


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    with gzip.open(demo_pool_path(), "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def chitchat() -> dict:
    import chitchat_dataset

    return json.loads((Path(chitchat_dataset.__file__).parent / "dataset.json").read_text(encoding="utf-8"))


def test_pool_size_ids_columns_and_counts_match_the_card(rows):
    card = demo_pool_card()
    assert len(rows) >= 10_000 and len(rows) == card["n_rows"]
    assert hashlib.sha256(demo_pool_path().read_bytes()).hexdigest() == card["sha256"]
    assert all(list(r) == card["columns"] for r in rows)
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids) and all(re.fullmatch(r"chitchat-\d{4}-t\d{3}", i) for i in ids)
    sources, labels = Counter(r["source"] for r in rows), Counter(r["label"] for r in rows)
    assert set(sources) == SOURCES and set(labels) == LABELS
    assert sources == card["counts"]["source"] and labels == card["counts"]["label"]
    # a real imbalance SMOTE can work on: a minority class of well over 30 rows, several times rarer than the largest
    assert 30 <= min(labels.values()) and max(labels.values()) >= 4 * min(labels.values())
    assert all(r["messages"] and all(m["role"] in ("user", "assistant") and m["content"].strip() for m in r["messages"]) for r in rows)


def test_licence_is_recorded():
    (source,) = demo_pool_card()["sources"]
    assert source["name"] == "chitchat-dataset" and source["licence"] == "MIT"
    assert "Copyright (c) 2019 Perception, Control and Cognition Lab" in source["licence_text"]
    assert "Permission is hereby granted, free of charge" in source["licence_text"]


def test_rows_are_windows_of_the_source_conversations_with_their_rating_bucket(rows, chitchat):
    conv_ids = sorted(chitchat)
    openings = [r for r in rows if r["source"] == "chitchat/opening"]
    assert [r["conversation"] for r in openings] == conv_ids  # every conversation opens once, in id order
    picked = np.random.default_rng(0).choice(len(rows), size=400, replace=False)
    for i in picked:
        row = rows[i]
        k, start = (int(x) for x in re.fullmatch(r"chitchat-(\d{4})-t(\d{3})", row["id"]).groups())
        conversation = chitchat[conv_ids[k]]
        assert row["conversation"] == conv_ids[k] and row["prompt"] == (conversation.get("prompt") or "").strip()
        rating = conversation.get("ratings", {}).get("interesting")
        expected = "unrated" if rating is None else "low" if rating <= 3 else "medium" if rating <= 7 else "high"
        assert row["label"] == expected
        assert (start == 0) == (row["source"] == "chitchat/opening")
        turns = [" ".join(m["text"].strip() for m in turn) for turn in conversation["messages"]]
        window = [t for t in turns[start:start + (4 if start == 0 else 2)] if t]
        assert len(row["messages"]) == len(window)
        for j, (message, turn) in enumerate(zip(row["messages"], window)):
            content = message["content"]
            assert content == turn or (content.endswith(" …") and turn.startswith(content[:-2]) and len(content) <= 602), (row["id"], j)


def test_read_demo_pool_and_open_pool_read_the_gzipped_file(rows):
    assert read_demo_pool(25) == rows[:25] and read_demo_pool(0) == [] and len(read_demo_pool()) == len(rows)
    pool = open_pool(str(demo_pool_path()), id_column="id", partition_rows=4_000)
    assert pool.n_rows == len(rows) and pool.n_partitions == 3
    last = pool.read_partition(2, columns=["id", "label"])
    assert last.column("id").to_pylist() == [r["id"] for r in rows[8_000:]]
    assert last.column("label").to_pylist() == [r["label"] for r in rows[8_000:]]


def test_targets_have_at_least_two_tasks_of_eight_examples():
    targets = [json.loads(line) for line in demo_targets_path().read_text(encoding="utf-8").splitlines()]
    tasks = Counter(t["task"] for t in targets)
    assert len(tasks) >= 2 and min(tasks.values()) >= 8
    for t in targets:
        assert [m["role"] for m in t["messages"]] == ["user", "assistant"] and all(m["content"].strip() for m in t["messages"])
