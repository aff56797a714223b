"""Regenerate thresher's bundled demo pool from the chitchat-dataset package (MIT licence).

Writes ``src/thresher/data/demo_pool.jsonl.gz`` (10,000 chat rows) and its card
``src/thresher/data/demo_pool.card.json`` (source, licence text, seed, counts,
checksum). The target tasks (``demo_targets.jsonl``) are handwritten and not
made here.

    pip install chitchat-dataset==0.9.0 && python scripts/make_demo_data.py

The chitchat-dataset (BYU PCC lab's Chit-Chat Challenge) holds 7,168
open-domain conversations between two people, each started from a topic
prompt, most rated by the participants (``witty``, ``upbeat``,
``interesting``, 1–10). A row is a *window* of consecutive turns of one
conversation (a turn = the consecutive messages of one speaker, joined), as a
chat ``messages`` list alternating user / assistant:

- rows 0 … 7,167: the opening window (the first ``OPENING_TURNS`` turns) of
  every conversation, in conversation-id order (``source`` "chitchat/opening");
  the first 2,000 hold the messages of the earlier 2,000-row demo pool (which
  tests still read) except where a turn was cut (below);
- then 2,832 later exchanges (``LATER_TURNS`` turns each, starting after the
  opening) drawn at random (``SEED``) from all conversations, in conversation
  and turn order (``source`` "chitchat/continuation"). Exchanges, not longer
  windows, so the mean text stays near 60 MiniLM tokens and the 10,000 rows
  embed in a minute or two on 2 cores.

``id`` is ``chitchat-<conversation number>-t<first turn>``, the conversation
number counting the dataset's conversation ids in sorted order, so ids are
stable for a given package version.

A turn longer than ``MAX_TURN_CHARS`` is cut at a word boundary (ending "…"): a
handful of messages run to thousands of words, far past the 256 tokens the
bundled MiniLM reads, and would only bloat the file.

``label`` is the conversation's own "interesting" rating, bucketed: "low"
(1–3), "medium" (4–7; over half of the rated conversations have exactly 5,
likely the rating form's default), "high" (8–10) or "unrated" (the conversation has no ratings). It is a
real, imbalanced class for the SMOTE demo ("low" is the minority). ``prompt``
is the topic prompt the conversation started from: 34 near balanced topics,
"" for the 243 conversations without one. ``conversation`` is the dataset's conversation id, so the
windows of one conversation can be grouped.

Deterministic: the same package version and seed give the same bytes (gzip
header without time stamp or name; sorted inputs; numpy's seeded Generator).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np

import chitchat_dataset

from thresher.stores.atomic import atomic_write_bytes, atomic_write_json

N_ROWS = 10_000
OPENING_TURNS = 4
LATER_TURNS = 2
MAX_TURN_CHARS = 600
SEED = 20_240_607
DATA_DIR = Path(__file__).resolve().parents[1] / "src" / "thresher" / "data"
OUT = DATA_DIR / "demo_pool.jsonl.gz"
CARD = DATA_DIR / "demo_pool.card.json"
PACKAGE = "chitchat-dataset"


def interest_bucket(conversation: dict) -> str:
    rating = conversation.get("ratings", {}).get("interesting")
    if rating is None:
        return "unrated"
    return "low" if rating <= 3 else "medium" if rating <= 7 else "high"


def clip(text: str) -> str:
    if len(text) <= MAX_TURN_CHARS:
        return text
    cut = text[:MAX_TURN_CHARS].rsplit(" ", 1)[0]
    return cut.rstrip() + " …"


def turns(conversation: dict) -> list[str]:
    """One string per turn (a speaker's consecutive messages, joined), empty turns kept so windows align."""
    return [" ".join(m["text"].strip() for m in turn) for turn in conversation["messages"]]


def window_starts(n_turns: int) -> list[int]:
    """First turn of each window: the opening (``OPENING_TURNS`` turns), then exchanges of ``LATER_TURNS``."""
    return [0, *range(OPENING_TURNS, n_turns, LATER_TURNS)]


def window(texts: list[str], start: int) -> list[dict]:
    """The messages of the window starting at turn ``start`` (even, so the first speaker is always "user")."""
    chunk = texts[start:start + (OPENING_TURNS if start == 0 else LATER_TURNS)]
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": clip(t)} for i, t in enumerate(chunk)]
    return [m for m in messages if m["content"]]


def build_rows(data: dict) -> list[dict]:
    conv_ids = sorted(data)
    texts = [turns(data[c]) for c in conv_ids]

    def row(k: int, start: int, source: str) -> dict | None:
        messages = window(texts[k], start)
        if not messages:
            return None
        conversation = data[conv_ids[k]]
        return {
            "id": f"chitchat-{k:04d}-t{start:03d}", "source": source, "messages": messages,
            "label": interest_bucket(conversation), "prompt": (conversation.get("prompt") or "").strip(),
            "conversation": conv_ids[k],
        }

    rows = [r for k in range(len(conv_ids)) if (r := row(k, 0, "chitchat/opening")) is not None]
    later = [(k, start) for k, t in enumerate(texts) for start in window_starts(len(t))[1:] if window(t, start)]
    picked = np.random.default_rng(SEED).choice(len(later), size=N_ROWS - len(rows), replace=False)
    rows += [row(*later[i], "chitchat/continuation") for i in sorted(picked)]
    return rows


def gzip_bytes(text: str) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as f:
        f.write(text.encode("utf-8"))
    return buffer.getvalue()


def main() -> None:
    package_dir = Path(chitchat_dataset.__file__).parent
    data = json.loads((package_dir / "dataset.json").read_text(encoding="utf-8"))
    rows = build_rows(data)
    assert len(rows) == N_ROWS and len({r["id"] for r in rows}) == N_ROWS
    payload = gzip_bytes("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    dist = importlib.metadata.distribution(PACKAGE)
    card = {
        "file": OUT.name,
        "made_by": "scripts/make_demo_data.py",
        "seed": SEED,
        "n_rows": len(rows),
        "columns": ["id", "source", "messages", "label", "prompt", "conversation"],
        "opening_turns": OPENING_TURNS,
        "later_turns": LATER_TURNS,
        "max_turn_chars": MAX_TURN_CHARS,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "sources": [{
            "name": "chitchat-dataset",
            "description": "Open-domain conversations from the BYU Perception, Control & Cognition lab's Chit-Chat Challenge.",
            "package": f"{PACKAGE}=={dist.version}",
            "url": "https://github.com/BYU-PCCL/chitchat-dataset",
            "licence": dist.metadata["License"],
            "licence_text": (Path(dist.locate_file(f"chitchat_dataset-{dist.version}.dist-info")) / "LICENSE").read_text(encoding="utf-8"),
        }],
        "counts": {
            "source": dict(sorted(Counter(r["source"] for r in rows).items())),
            "label": dict(sorted(Counter(r["label"] for r in rows).items())),
        },
        "label": "the conversation's 'interesting' rating: low 1-3, medium 4-7, high 8-10, unrated",
    }
    atomic_write_bytes(OUT, payload)
    atomic_write_json(CARD, card)
    print(f"wrote {len(rows)} rows ({len(payload) / 1e6:.2f} MB) to {OUT}")
    print(json.dumps(card["counts"], indent=1))


if __name__ == "__main__":
    main()
