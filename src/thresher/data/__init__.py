"""Data shipped with thresher, so the demo and tests run with no download (see README.md here).

``demo_pool.jsonl.gz``: 10,000 chat rows from the chitchat-dataset (BYU PCC
lab, MIT licence): conversation openings and later exchanges as ``messages``,
with a stable ``id``, a ``source`` ("chitchat/opening" or
"chitchat/continuation"), a ``label`` (the conversation's "interesting" rating:
low / medium / high / unrated; "low" is the minority class), the ``prompt``
the conversation started from and its ``conversation`` id. Made by
``scripts/make_demo_data.py``.

``demo_pool.card.json``: the pool's card, written by the same script: source,
licence and its text, seed, row counts per source and label, checksum.

``demo_targets.jsonl``: sixteen short example conversations written for
thresher, eight for each of two target tasks (``travel`` and ``food``), for the
RDS+ demo.
"""

from __future__ import annotations

import gzip
import json
from importlib import resources
from pathlib import Path
from typing import Any


def _data_file(name: str) -> Path:
    return Path(str(resources.files("thresher") / "data" / name))


def demo_pool_path() -> Path:
    """The bundled demo pool (gzipped JSON Lines, readable by every thresher command)."""
    return _data_file("demo_pool.jsonl.gz")


def demo_targets_path() -> Path:
    """The bundled RDS+ target examples (JSON Lines with ``task`` and ``messages``)."""
    return _data_file("demo_targets.jsonl")


def demo_pool_card() -> dict[str, Any]:
    """The demo pool's card: where the rows come from, their licence, how they were made, counts."""
    return json.loads(_data_file("demo_pool.card.json").read_text(encoding="utf-8"))


def read_demo_pool(n: int | None = None) -> list[dict[str, Any]]:
    """The first ``n`` rows of the demo pool (all 10,000 when ``n`` is None), as dicts, in file order."""
    rows: list[dict[str, Any]] = []
    if n is not None and n <= 0:
        return rows
    with gzip.open(demo_pool_path(), "rt", encoding="utf-8") as f:
        for line in f:
            rows.append(json.loads(line))
            if len(rows) == n:
                break
    return rows
