"""Regenerate src/thresher/data/demo_pool.jsonl from the chitchat-dataset package (MIT licence).

Deterministic: the same package version gives the same file. Each row is the
opening of one conversation as a chat ``messages`` list (alternating user /
assistant turns), with the conversation id as ``id`` and the ``source``.

    pip install chitchat-dataset && python scripts/make_demo_data.py
"""

from __future__ import annotations

import json
from pathlib import Path

import chitchat_dataset

N_ROWS = 2000
MAX_TURNS = 4
OUT = Path(__file__).resolve().parents[1] / "src" / "thresher" / "data" / "demo_pool.jsonl"


def main() -> None:
    data = json.loads((Path(chitchat_dataset.__file__).parent / "dataset.json").read_text(encoding="utf-8"))
    rows = []
    for conv_id in sorted(data)[:N_ROWS]:
        turns = data[conv_id]["messages"][:MAX_TURNS]
        messages = [
            {"role": "user" if i % 2 == 0 else "assistant", "content": " ".join(m["text"].strip() for m in turn)}
            for i, turn in enumerate(turns)
        ]
        messages = [m for m in messages if m["content"]]
        if messages:
            rows.append({"id": conv_id, "source": "chitchat", "messages": messages})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} rows to {OUT}")


if __name__ == "__main__":
    main()
