"""The embedding job: one Dask task per pool partition, each writing one store shard.

Each task reads its partition, builds the texts, encodes them with the
worker's cached model (loaded once per worker process, not per task) and
writes ``part-NNNNN.arrow`` atomically, then a small completion marker.
A rerun after a crash skips partitions whose marker and shard agree; the
manifest is written last, once every shard exists, so an interrupted store is
never read as complete.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from thresher.exceptions import InputDataError
from thresher.fingerprint import fingerprint_of, hash_file
from thresher.jobs.progress import RowProgress
from thresher.stores.atomic import atomic_write_json, remove_temporaries
from thresher.stores.embedding_store import (
    EmbeddingStore,
    StoreDtype,
    finalize_embedding_store,
    open_embedding_store,
    shard_name,
    write_embedding_shard,
)
from thresher.stores.lock import locks_output
from thresher.stores.manifest import ShardInfo, prepare_output_dir

EMBED_JOB_VERSION = 1


def embed_fingerprint(pool: Any, text: Any, spec: Any, dtype: str) -> str:
    """Identity of a store: the pool's content, how texts are built, the encoder, the dtype and the partitioning."""
    # where the model lies on this machine and which device runs it do not change what is computed
    from thresher.embeddings.encoders import weights_fingerprint

    encoder = {k: v for k, v in spec.to_dict().items() if k not in ("model_path", "device")}
    encoder["weights"] = weights_fingerprint(spec)  # same name, other weights: another store
    params = {
        "encoder": encoder,
        "text": text.describe(),
        "dtype": dtype,
        "partitions": [p.stop - p.start for p in pool.partitions],
    }
    return fingerprint_of("embed", EMBED_JOB_VERSION, params, [pool.fingerprint])


def _marker_path(out: Path, partition: int) -> Path:
    return out / f".{shard_name(partition)}.done.json"


def embed_partition(partition: int, text: Any, spec: Any, out: str, dtype: StoreDtype, *, pool: Any,
                    threads: dict[str, int] | None = None) -> dict[str, Any]:
    """Embed one partition and write its shard + completion marker. Runs on a Dask worker (or in-process)."""
    from thresher.embeddings.encoders import cached_encoder

    started = time.perf_counter()
    _set_torch_threads(threads)
    table = pool.read_partition(partition, columns=text.required_columns)
    texts = text.build(table, source=pool.partitions[partition].source)
    result = cached_encoder(spec).encode(texts)
    hashes = np.fromiter((xxhash.xxh64_intdigest(t.encode("utf-8")) for t in texts), dtype=np.uint64, count=len(texts))
    info = write_embedding_shard(
        out, partition, table.column("id").combine_chunks(), result.vectors, dtype=dtype, extra_columns={"text_hash": hashes}
    )
    record = {
        "shard": asdict(info),
        "dim": int(result.vectors.shape[1]),
        "n_truncated": int(result.n_truncated),
        "n_tokens": int(result.n_tokens),
        "seconds": round(time.perf_counter() - started, 3),
    }
    atomic_write_json(_marker_path(Path(out), partition), record)
    return record


def _set_torch_threads(threads: dict[str, int] | None) -> None:
    if not threads:
        return
    try:
        from distributed import get_worker

        n = threads.get(get_worker().address)
    except ValueError:
        return
    _tune_allocator()
    if n:
        import torch

        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


_ALLOCATOR_TUNED = False


def _tune_allocator() -> None:
    """Let glibc reuse large freed blocks in this worker process instead of unmapping them.

    Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which also
    turns off glibc's dynamic mmap threshold: every batch's activations (each
    batch a different shape) are then mmapped and unmapped afresh, measured here
    to make MiniLM encoding 1.5x slower. Raising both thresholds restores the
    speed (and then some); it only affects this worker process.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return
    _ALLOCATOR_TUNED = True
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 256 << 20)
        libc.mallopt(m_trim_threshold, 1 << 30)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def _completed(out: Path, partition: int, rows: int) -> dict[str, Any] | None:
    """The marker of a partition finished by an earlier run, if its shard is intact."""
    marker = _marker_path(out, partition)
    if not marker.is_file():
        return None
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
        shard = ShardInfo(**record["shard"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    path = out / shard.file
    if shard.rows != rows or not path.is_file() or f"xxh3_128:{hash_file(path)}" != shard.checksum:
        return None
    return record


@locks_output("out")
def run_embed_job(
    pool: Any,
    text: Any,
    spec: Any,
    out: str | Path,
    *,
    executor: Any = None,
    dtype: StoreDtype = "float32",
    overwrite: bool = False,
    retries: int = 2,
    resources: dict[str, float] | None = None,
) -> EmbeddingStore:
    """Embed every partition of ``pool`` into an embedding store at ``out``, resuming an interrupted run.

    ``executor`` (a started :class:`thresher.jobs.executor.Executor`; default in
    this process, useful in notebooks and for debugging) runs one task per
    partition still to embed, with a progress bar when ``executor.progress``.
    """
    from thresher.jobs.executor import Executor

    executor = executor if executor is not None else Executor.in_process()
    out = Path(out)
    fingerprint = embed_fingerprint(pool, text, spec, dtype)
    if prepare_output_dir(out, "embeddings", fingerprint, overwrite=overwrite) == "complete":
        return open_embedding_store(out)

    records: dict[int, dict[str, Any]] = {}
    for i, part in enumerate(pool.partitions):
        done = _completed(out, i, part.stop - part.start)
        if done is not None:
            records[i] = done
    todo = [i for i in range(len(pool.partitions)) if i not in records]
    rows_done = sum(r["shard"]["rows"] for r in records.values())
    bar = RowProgress(pool.n_rows, description="embed", enabled=executor.progress, initial=rows_done)
    job = executor.new_job()
    try:
        records.update(zip(todo, _embed_partitions(executor, pool, todo, text, spec, out, dtype, retries, bar, fingerprint, job, resources)))
    finally:
        bar.close()

    from thresher.embeddings.encoders import weights_fingerprint

    remove_temporaries(out)  # a worker lost mid-write leaves its temporary file behind
    shards = [ShardInfo(**records[i]["shard"]) for i in range(len(pool.partitions))]
    dims = {records[i]["dim"] for i in records}
    store_dim = dims.pop()
    _check_unique_ids(out, shards, pool)
    extra = {
        "text": text.describe(),
        "n_truncated": sum(r["n_truncated"] for r in records.values()),
        "n_tokens": sum(r["n_tokens"] for r in records.values()),
        "n_resumed_partitions": len(pool.partitions) - len(todo),
        "encode_seconds": round(sum(r["seconds"] for r in records.values()), 3),
        "wall_seconds": round(bar.seconds, 3),
        "job": dict(job),
    }
    finalize_embedding_store(
        out, shards=shards, fingerprint=fingerprint, dim=store_dim, dtype=dtype, encoder={**spec.to_dict(), "weights": weights_fingerprint(spec)},
        pool=pool.describe(), extra=extra
    )
    for i in range(len(pool.partitions)):
        _marker_path(out, i).unlink(missing_ok=True)
    return open_embedding_store(out)


def _embed_partitions(executor, pool, todo, text, spec, out, dtype, retries, bar, fingerprint, job, resources) -> list[dict[str, Any]]:
    """One :func:`embed_partition` task per partition in ``todo``; their records in ``todo`` order."""
    rows = [pool.partitions[i].stop - pool.partitions[i].start for i in todo]
    items = [(i, text, spec, str(out), dtype) for i in todo]
    if executor.dask is None:
        return executor.map(embed_partition, items, shared={"pool": pool}, rows=rows, bar=bar)
    from thresher.jobs.cluster import cores_per_worker

    run = uuid.uuid4().hex[:8]  # keys unique to this run: two runs of one store must not share Dask tasks
    return executor.map(
        embed_partition, items, shared={"pool": pool, "threads": cores_per_worker(executor.dask)}, rows=rows, bar=bar, job=job,
        retries=retries, resources=resources,  # e.g. {"GPU": 1}: only workers declaring it run the task
        keys=[f"embed-{fingerprint[:12]}-{run}-{i:05d}" for i in todo],
    )


def _check_unique_ids(out: Path, shards: list[ShardInfo], pool: Any) -> None:
    """Every pool id must be unique: later artefacts refer to rows by id. Hashes only, 8 bytes a row."""
    import pandas as pd

    from thresher.stores.arrow_io import read_stream_shard

    hashes = []
    for shard in shards:
        ids = read_stream_shard(out / shard.file).column("id").to_numpy(zero_copy_only=False)
        hashes.append(pd.util.hash_array(np.asarray(ids, dtype=object) if ids.dtype.kind in "OU" else ids))
    all_hashes = np.concatenate(hashes) if hashes else np.empty(0, np.uint64)
    uniq, counts = np.unique(all_hashes, return_counts=True)
    if (counts > 1).any():
        dup_hash = uniq[np.argmax(counts > 1)]
        position = int(np.flatnonzero(all_hashes == dup_hash)[0])
        shard_of = np.searchsorted(np.cumsum([s.rows for s in shards]), position, side="right")
        offset = position - int(sum(s.rows for s in shards[:shard_of]))
        dup_id = read_stream_shard(out / shards[shard_of].file).column("id")[offset].as_py()
        part = pool.partitions[shard_of]
        raise InputDataError(
            f"The id {dup_id!r} appears {int(counts[np.argmax(counts > 1)])} times in the pool (first in row {part.start + offset} of "
            f"{part.source or 'the dataset'}): ids must be unique (choose another id column, or none for derived ids)."
        )
