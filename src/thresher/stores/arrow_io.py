"""Reading and writing Arrow IPC *stream* shards, the format HF datasets caches in.

``datasets.Dataset.from_file`` memory-maps a stream-format file with no copy,
``datasets.load_dataset("arrow", ...)`` and ``pyarrow`` read it too; the IPC
*file* format would break the first of these.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from thresher.exceptions import ArtifactError
from thresher.stores.atomic import atomic_path


def write_stream_shard(path: str | Path, table: pa.Table, *, max_chunk_rows: int | None = None) -> None:
    """Write ``table`` to ``path`` atomically in the Arrow IPC stream format."""
    with atomic_path(path) as tmp:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=max_chunk_rows)


def read_stream_shard(path: str | Path) -> pa.Table:
    """Memory-map an IPC stream shard (no copy of its buffers)."""
    path = Path(path)
    try:
        source = pa.memory_map(str(path), "r")
        return pa.ipc.open_stream(source).read_all()
    except FileNotFoundError:
        raise ArtifactError(f"Shard {path} is missing.") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise ArtifactError(f"Shard {path} is not a readable Arrow IPC stream (truncated or corrupt?): {exc}") from exc
