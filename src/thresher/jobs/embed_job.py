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
import os
import threading
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from thresher.exceptions import InputDataError, ParameterError
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
    if getattr(spec, "runtime", "torch") != "torch":  # the export (settings, weights, library versions) is what computes
        encoder["onnx_export"] = _export_identity(spec)["fingerprint"]
    params = {
        "encoder": encoder,
        "text": text.describe(),
        "dtype": dtype,
        "partitions": [p.stop - p.start for p in pool.partitions],
    }
    return fingerprint_of("embed", EMBED_JOB_VERSION, params, [pool.fingerprint])


def _export_identity(spec: Any) -> dict[str, Any]:
    """The fingerprint of ``spec``'s ONNX export and the versions of the libraries that made and run it."""
    from thresher.embeddings.onnx_backend import export_fingerprint, export_record

    record = export_record(spec)
    return {"fingerprint": export_fingerprint(record), **record["versions"]}


def _marker_path(out: Path, partition: int) -> Path:
    return out / f".{shard_name(partition)}.done.json"


def embed_partition(partition: int, text: Any, spec: Any, out: str, dtype: StoreDtype, *, pool: Any,
                    threads: dict[str, int] | None = None, progress: Any = None, progress_interval: float = 0.5) -> dict[str, Any]:
    """Embed one partition and write its shard + completion marker. Runs on a Dask worker (or in-process).

    ``progress`` receives ``(partition, rows embedded so far)`` as batches finish, at most every
    ``progress_interval`` seconds and after the last one: a callable (in-process) or the name of
    a Dask event topic the client listens to (on a worker).
    """
    from thresher.embeddings.encoders import cached_encoder

    started = time.perf_counter()
    _set_torch_threads(threads)
    table = pool.read_partition(partition, columns=text.required_columns)
    texts = text.build(table, source=pool.partitions[partition].source)
    result = cached_encoder(spec).encode(texts, on_batch=_batch_reporter(progress, partition, len(texts), progress_interval))
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


def _batch_reporter(progress: Any, partition: int, n_rows: int, interval: float) -> Any:
    """An ``on_batch`` callback sending the partition's cumulative rows to ``progress`` (None: no callback)."""
    if progress is None:
        return None
    if isinstance(progress, str):
        from distributed import get_worker

        worker, topic = get_worker(), progress

        def send(rows: int) -> None:
            worker.log_event(topic, {"partition": partition, "rows_done": rows})
    else:
        def send(rows: int) -> None:
            progress(partition, rows)

    state = {"rows": 0, "sent_at": time.monotonic()}

    def on_batch(n: int) -> None:
        state["rows"] += n
        now = time.monotonic()
        if now - state["sent_at"] >= interval or state["rows"] >= n_rows:
            state["sent_at"] = now
            send(state["rows"])

    return on_batch


class _BatchProgress:
    """Rows embedded per partition, as the tasks report them per batch; advances the bar by what is new.

    Reports carry a partition's cumulative count, so a task re-run after a lost worker
    (counting again from 0) advances nothing until it passes what was already counted.
    """

    def __init__(self, bar: RowProgress, rows: dict[int, int]) -> None:
        self.bar = bar
        self.total = dict(rows)
        self.done = dict.fromkeys(rows, 0)
        self._lock = threading.Lock()

    def report(self, partition: int, rows_done: int) -> None:
        with self._lock:
            new = min(int(rows_done), self.total[partition]) - self.done[partition]
            if new <= 0:
                return
            self.done[partition] += new
        self.bar.advance(new)

    def on_event(self, event: tuple[float, dict[str, int]]) -> None:
        """Handler of the Dask topic: ``event`` is ``(timestamp, {"partition", "rows_done"})``."""
        msg = event[1]
        self.report(int(msg["partition"]), int(msg["rows_done"]))

    def finish(self) -> None:
        for partition, total in self.total.items():
            self.report(partition, total)


def _progress_interval() -> float:
    """Seconds between a task's progress reports (``THRESHER_PROGRESS_INTERVAL``, default 0.5)."""
    raw = os.environ.get("THRESHER_PROGRESS_INTERVAL", "0.5")
    try:
        value = float(raw)
    except ValueError:
        raise ParameterError(f"THRESHER_PROGRESS_INTERVAL must be a number of seconds >= 0; got {raw!r}.") from None
    if not value >= 0:
        raise ParameterError(f"THRESHER_PROGRESS_INTERVAL must be a number of seconds >= 0; got {raw!r}.")
    return value


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
    quality_gate: str = "refuse",
) -> EmbeddingStore:
    """Embed every partition of ``pool`` into an embedding store at ``out``, resuming an interrupted run.

    ``executor`` (a started :class:`thresher.jobs.executor.Executor`; default in
    this process, useful in notebooks and for debugging) runs one task per
    partition still to embed, with a progress bar (and ``progress`` events)
    that advance per encoded batch, when ``executor.progress``.

    With an int8 runtime (``spec.runtime == "onnx-int8"``) the first
    :data:`~thresher.embeddings.onnx_backend.CALIBRATION_ROWS` rows are first
    embedded both in float32 and in int8, and ``quality_gate`` ("refuse" or
    "warn") applies to their per-row cosines; the figures go in the manifest
    (``encoder.quality``).
    """
    from thresher.jobs.executor import Executor

    executor = executor if executor is not None else Executor.in_process()
    out = Path(out)
    fingerprint = embed_fingerprint(pool, text, spec, dtype)
    if prepare_output_dir(out, "embeddings", fingerprint, overwrite=overwrite) == "complete":
        store = open_embedding_store(out)
        check_recorded_quality(store, gate=quality_gate)
        return store

    records: dict[int, dict[str, Any]] = {}
    for i, part in enumerate(pool.partitions):
        done = _completed(out, i, part.stop - part.start)
        if done is not None:
            records[i] = done
    todo = [i for i in range(len(pool.partitions)) if i not in records]
    encoder_record: dict[str, Any] = {}
    if getattr(spec, "runtime", "torch") != "torch":
        encoder_record = {"quality": calibrate_quality(pool, text, spec, gate=quality_gate), "onnx": _export_identity(spec)}
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
        out, shards=shards, fingerprint=fingerprint, dim=store_dim, dtype=dtype, encoder={**spec.to_dict(), "weights": weights_fingerprint(spec), **encoder_record},
        pool=pool.describe(), extra=extra
    )
    for i in range(len(pool.partitions)):
        _marker_path(out, i).unlink(missing_ok=True)
    return open_embedding_store(out)


def _embed_partitions(executor, pool, todo, text, spec, out, dtype, retries, bar, fingerprint, job, resources) -> list[dict[str, Any]]:
    """One :func:`embed_partition` task per partition in ``todo``; their records in ``todo`` order."""
    batches = _BatchProgress(bar, {i: pool.partitions[i].stop - pool.partitions[i].start for i in todo})
    items = [(i, text, spec, str(out), dtype) for i in todo]
    interval = _progress_interval()
    if executor.dask is None:
        records = executor.map(embed_partition, items, shared={"pool": pool, "progress": batches.report, "progress_interval": interval})
        batches.finish()
        return records
    from thresher.jobs.cluster import cores_per_worker

    client = executor.dask
    run = uuid.uuid4().hex[:8]  # keys unique to this run: two runs of one store must not share Dask tasks
    topic = f"thresher-embed-progress-{fingerprint[:12]}-{run}"  # workers report batches here (Worker.log_event)
    client.subscribe_topic(topic, batches.on_event)
    try:
        records = executor.map(
            embed_partition, items, shared={"pool": pool, "threads": cores_per_worker(client), "progress": topic,
                                            "progress_interval": interval},
            job=job, retries=retries, resources=resources,  # e.g. {"GPU": 1}: only workers declaring it run the task
            keys=[f"embed-{fingerprint[:12]}-{run}-{i:05d}" for i in todo],
        )
    finally:
        client.unsubscribe_topic(topic)
    batches.finish()  # reports still in flight when the last task ended
    return records


def calibrate_quality(pool: Any, text: Any, spec: Any, *, gate: str = "refuse", n_rows: int | None = None) -> dict[str, Any]:
    """Per-row cosine of ``spec``'s vectors to float32 torch ones on the pool's first rows, checked by the quality gate.

    The first ``n_rows`` (default :data:`~thresher.embeddings.onnx_backend.CALIBRATION_ROWS`) texts
    of the pool, in partition order, are embedded by ``spec`` and by the same model in float32 on
    CPU with torch; see :func:`thresher.embeddings.onnx_backend.check_quality` for the gate.
    Runs in this process (it also exports the model once, before any task needs it).

    Returns
    -------
    dict
        ``{"median", "p01", "rows", "gate", "passed"}``, recorded in the manifest under ``encoder.quality``.
    """
    from dataclasses import replace

    from thresher.embeddings.encoders import cached_encoder, load_encoder
    from thresher.embeddings.onnx_backend import CALIBRATION_ROWS, check_quality, quality_figures

    n_rows = CALIBRATION_ROWS if n_rows is None else n_rows
    texts: list[str] = []
    for i, part in enumerate(pool.partitions):
        if len(texts) >= n_rows:
            break
        table = pool.read_partition(i, columns=text.required_columns)
        texts.extend(text.build(table, source=part.source)[: n_rows - len(texts)])
    candidate = cached_encoder(spec).encode(texts).vectors
    reference = load_encoder(replace(spec, runtime="torch", device="cpu", dtype="float32")).encode(texts).vectors
    figures = quality_figures(reference, candidate)
    warning = check_quality(figures, gate=gate, backend=spec.runtime)
    return {**figures, "gate": gate, "passed": warning is None}


def check_recorded_quality(store: Any, *, gate: str) -> None:
    """Apply ``gate`` to the quality figures a finished store recorded, when the store is reused rather than embedded again.

    The gate is not part of a store's fingerprint: it changes no vector (a gate that passes writes what
    ``"warn"`` writes; one that refuses writes nothing). So a store written under ``"warn"`` after failing
    the gate is the very store a later ``"refuse"`` run finds; its recorded figures are checked again, so a
    refusing run never goes on with vectors that failed the gate, and a warning run warns again.
    Stores without figures (the float32 engine) pass.
    """
    from thresher.embeddings.onnx_backend import check_quality

    encoder = store.manifest.get("encoder") or {}
    quality = encoder.get("quality")
    if not quality:
        return
    try:
        check_quality(quality, gate=gate, backend=encoder.get("runtime", "onnx-int8"))
    except ParameterError as exc:
        raise ParameterError(f"{exc} (The finished store {store.path} recorded these figures when it was written under "
                             f"quality_gate {quality.get('gate')!r}; it is not reused under 'refuse'.)") from None


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
