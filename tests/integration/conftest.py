"""Data for the integration tests: small pools of real, mixed-length text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from thresher.data import demo_pool_path


def demo_rows(n: int) -> list[dict]:
    rows = []
    with demo_pool_path().open(encoding="utf-8") as f:
        for line in f:
            rows.append(json.loads(line))
            if len(rows) == n:
                break
    return rows


def write_text_pool(path: Path, n: int) -> Path:
    """A jsonl pool of ``n`` rows with instruction/response columns of very different lengths."""
    rows = []
    for i, row in enumerate(demo_rows(n)):
        turns = [m["content"] for m in row["messages"]]
        response = " ".join(turns[1:]) * (1 + i % 7)  # some far longer than the model's 256-token limit
        rows.append({"uid": row["id"], "instruction": turns[0], "response": response or turns[0], "source": "chitchat"})
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


@pytest.fixture
def text_pool(tmp_path) -> Path:
    return write_text_pool(tmp_path / "pool.jsonl", 90)


@pytest.fixture
def make_text_pool():
    """``make_text_pool(path, n)`` writes a pool like :func:`text_pool` of any size."""
    return write_text_pool
