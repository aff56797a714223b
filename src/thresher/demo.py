"""The main job on the bundled defaults: the demo pool, the bundled model, an in-process cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from thresher.data import demo_pool_path, demo_targets_path


def run_demo(out: Path, *, overwrite: bool = False, progress: bool = True, **cluster: Any) -> dict[str, Path]:
    """Embed the bundled chat pool with all-MiniLM-L6-v2, index it, select with RDS+ for two target tasks, and print what was made."""
    from thresher.describe import describe_artifact
    from thresher.pipeline.embed import embed
    from thresher.stores.index import build_index

    out = Path(out)
    store = embed(
        str(demo_pool_path()), out / "embeddings", messages_column="messages", id_column="id",
        overwrite=overwrite, progress=progress, **cluster,
    )
    build_index(store, out / "index", overwrite=overwrite)
    for part in ("embeddings", "index"):
        print(describe_artifact(out / part, n_rows=3))
    # a nearest-neighbour query through the index, to show it answers with pool ids
    from thresher.stores.index import open_index

    index = open_index(out / "index")
    scores, ids = index.search(store.take([0]), 4)
    print(f"nearest neighbours of {store.shard_ids(0)[0]}: " + ", ".join(f"{i} ({s:.3f})" for i, s in zip(ids[0], scores[0])))
    # RDS+ for the two bundled target tasks: the 200 conversations closest to them, round-robin
    import json
    import tempfile

    from thresher.pipeline.select import select_rds

    rows = [json.loads(line) for line in demo_targets_path().read_text(encoding="utf-8").splitlines()]
    with tempfile.TemporaryDirectory() as tmp:
        targets = {}
        for task in sorted({r["task"] for r in rows}):
            path = Path(tmp) / f"{task}.jsonl"
            path.write_text("".join(json.dumps({"messages": r["messages"]}) + "\n" for r in rows if r["task"] == task), encoding="utf-8")
            targets[task] = path
        curated = select_rds(out / "embeddings", targets, out / "rds", budget=200, dedup=True, local=True, overwrite=overwrite, progress=progress)
    print(describe_artifact(out / "rds", n_rows=3))
    return {"embeddings": out / "embeddings", "index": out / "index", "rds": curated.path}
