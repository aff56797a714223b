"""The embed stage: pool → embedding store, as a Dask job (or in-process)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from thresher.exceptions import ParameterError


def embed(
    pool: Any,
    out: str | Path,
    *,
    text: str | None = None,
    text_column: str | None = None,
    messages_column: str | None = None,
    chat_format: Literal["tulu", "plain"] = "tulu",
    id_column: str | None = None,
    format: str = "auto",
    split: str | None = None,
    model: str = "default",
    pooling: str | None = None,
    layer: int = -1,
    normalize: bool = True,
    max_length: int | None = None,
    batch_size: int = 64,
    device: str = "auto",
    model_dtype: str = "auto",
    padding_side: Literal["right", "left"] | None = None,
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
    backend: Literal["torch", "onnx-int8"] = "torch",
    quality_gate: Literal["refuse", "warn"] = "refuse",
    dtype: Literal["float32", "float16"] = "float32",
    partition_rows: int | None = None,
    executor: Any = None,
    resources: Mapping[str, float] | None = None,
    overwrite: bool = False,
    scheduler: str | None = None,
    workers: int | None = None,
    slurm: Any = None,
    client: Any = None,
    local: bool | None = None,
    progress: bool | None = None,
):
    """Embed a data pool into an embedding store.

    Parameters
    ----------
    pool : path, glob, list of paths, datasets.Dataset or DatasetDict
        The data pool (jsonl, json, parquet, arrow, csv, a ``save_to_disk`` folder, fsspec URLs).
    out : path
        The store directory. An interrupted run is resumed; a finished one with
        the same inputs is reused; a directory holding anything else is refused
        unless ``overwrite``.
    text, text_column, messages_column : str
        How each row becomes text: a template such as ``"{instruction}\\n\\n{response}"``,
        a column, or a chat ``messages`` column rendered in ``chat_format``.
        With none given, a column named ``text`` is used.
    model, pooling, layer, normalize, max_length, batch_size, device, model_dtype, padding_side, gguf_file
        The encoder (see :class:`thresher.embeddings.EncoderSpec`); the default
        model is the bundled all-MiniLM-L6-v2 with its own mean pooling.
    backend : "torch" or "onnx-int8", default "torch"
        What runs the model (``EncoderSpec.runtime``): torch in ``model_dtype``, or
        its transformer exported to ONNX with int8 weights and run by ONNX Runtime
        on CPU (``pip install "thresher[onnx]"``; exported once per machine into
        ``$THRESHER_CACHE_DIR/onnx``, default ``~/.cache/thresher/onnx``), ~2.5x
        faster on AVX-512 VNNI CPUs. An int8 store is another store: the backend
        and its export settings are in its fingerprint and manifest.
    quality_gate : "refuse" or "warn", default "refuse"
        With ``backend="onnx-int8"``, the first 256 rows are also embedded in
        float32 and the per-row cosines compared: below a median of 0.99 or a
        1st percentile of 0.96 the run is refused (``"refuse"``) or goes on
        with a loud warning (``"warn"``). The figures are recorded in the
        manifest under ``encoder.quality``.
    dtype : "float32" or "float16"
        Storage type of the vectors.
    executor : thresher.jobs.executor.Executor, optional
        Where it runs (default: an in-process local Dask cluster, one worker
        process per 4 cores, started for the call); ``Executor.in_process()``
        runs in this process without Dask, ``Executor.on_client(client)`` on a
        cluster of yours, ``Executor.from_settings(scheduler=..., slurm=...)``
        on a scheduler or SLURM.
    scheduler, workers, slurm, client, local, progress
        Deprecated: ``executor=Executor.from_settings(...)``.
    resources : mapping of str to float, optional
        Dask worker resources each embedding task needs, e.g. ``{"GPU": 1}``:
        the tasks then run only on workers started with those resources
        (``dask worker --resources GPU=1``, or ``worker_extra_args`` in a SLURM
        config), one at a time per GPU. A connected cluster none of whose
        workers declares them is refused rather than left waiting. Ignored
        in this process.

    Returns
    -------
    thresher.stores.EmbeddingStore
    """
    from thresher.jobs.executor import stage_executor
    from thresher.stores.output_guard import check_output

    executor = stage_executor(executor, "embed", scheduler=scheduler, workers=workers, slurm=slurm, client=client, local=local,
                              progress=progress)
    check_output(out, "embeddings", inputs={"pool": pool}, overwrite=overwrite)
    resources = _check_resources(resources)
    if executor.runs_here:
        from thresher.embeddings.encoders import check_device_available

        check_device_available(device)  # the model runs on this machine: no cluster is started for a device it lacks
    inputs = prepare_embed(
        pool, text=text, text_column=text_column, messages_column=messages_column, chat_format=chat_format, id_column=id_column,
        format=format, split=split, model=model, pooling=pooling, layer=layer, normalize=normalize, max_length=max_length,
        batch_size=batch_size, device=device, model_dtype=model_dtype, padding_side=padding_side, gguf_file=gguf_file,
        trust_remote_code=trust_remote_code, backend=backend, quality_gate=quality_gate, dtype=dtype, partition_rows=partition_rows,
    )
    with executor.started():
        return run_embed(inputs, out, executor=executor, resources=resources, overwrite=overwrite)


@dataclass(frozen=True)
class EmbedInputs:
    """What an embedding store is made from: the opened pool, how rows become text, the encoder, the stored dtype.

    ``quality_gate`` says what a failed int8 quality check does. It is not part of the store's identity
    (:meth:`fingerprint`): it changes no vector, since a gate that passes writes what ``"warn"`` writes
    and one that refuses writes nothing, so switching it recomputes neither the store nor the steps
    after it. A reused store's recorded figures are checked against it again
    (:func:`thresher.jobs.embed_job.check_recorded_quality`).
    """

    pool: Any
    text: Any
    encoder: Any
    dtype: str
    quality_gate: str = "refuse"

    def fingerprint(self) -> str:
        """The store's fingerprint, known before any row is embedded."""
        from thresher.jobs.embed_job import embed_fingerprint

        return embed_fingerprint(self.pool, self.text, self.encoder, self.dtype)


def prepare_embed(
    pool: Any,
    *,
    text: str | None = None,
    text_column: str | None = None,
    messages_column: str | None = None,
    chat_format: Literal["tulu", "plain"] = "tulu",
    id_column: str | None = None,
    format: str = "auto",
    split: str | None = None,
    model: str = "default",
    pooling: str | None = None,
    layer: int = -1,
    normalize: bool = True,
    max_length: int | None = None,
    batch_size: int = 64,
    device: str = "auto",
    model_dtype: str = "auto",
    padding_side: Literal["right", "left"] | None = None,
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
    backend: Literal["torch", "onnx-int8"] = "torch",
    quality_gate: Literal["refuse", "warn"] = "refuse",
    dtype: Literal["float32", "float16"] = "float32",
    partition_rows: int | None = None,
) -> EmbedInputs:
    """Check the options, open the pool (one streaming pass that plans partitions and hashes content) and build the encoder spec.

    Parameters as :func:`embed`; nothing is embedded and no cluster starts.
    """
    from thresher.embeddings.encoders import EncoderSpec
    from thresher.pipeline.text import TextBuilder
    from thresher.stores.pool import open_pool

    if dtype not in ("float32", "float16"):
        raise ParameterError(f"The 'dtype' parameter of embed must be 'float32' or 'float16'; got {dtype!r}.")
    if backend not in ("torch", "onnx-int8"):
        raise ParameterError(f"The 'backend' parameter of embed must be 'torch' or 'onnx-int8'; got {backend!r}.")
    if quality_gate not in ("refuse", "warn"):
        raise ParameterError(f"The 'quality_gate' parameter of embed must be 'refuse' or 'warn'; got {quality_gate!r}.")
    if backend != "torch":
        from thresher.embeddings.onnx_backend import require_onnxruntime

        require_onnxruntime()  # before the pool is read or a cluster starts
    if text is None and text_column is None and messages_column is None:
        text_column = "text"
    builder = TextBuilder(text, text_column=text_column, messages_column=messages_column, chat_format=chat_format)
    spec = EncoderSpec(
        model=model,
        pooling=pooling,
        layer=layer,
        normalize=normalize,
        max_length=max_length,
        batch_size=batch_size,
        device=device,
        dtype=model_dtype,
        padding_side=padding_side,
        gguf_file=gguf_file,
        trust_remote_code=trust_remote_code,
        runtime=backend,
    )
    opened = open_pool(pool, format=format, id_column=id_column, partition_rows=partition_rows, split=split)
    _check_columns(opened, builder)
    return EmbedInputs(opened, builder, spec, dtype, quality_gate)


def run_embed(inputs: EmbedInputs, out: str | Path, *, executor: Any, resources: Mapping[str, float] | None = None,
              overwrite: bool = False) -> Any:
    """Run the embed job for ``inputs`` on a started ``executor``, its Dask tasks needing ``resources``."""
    from thresher.jobs.embed_job import run_embed_job

    resources = _check_resources(resources)
    client = executor.dask
    if client is not None and resources:
        _check_workers_have(client, resources)
    check_device_where_it_runs(inputs.encoder.device, client)
    return run_embed_job(inputs.pool, inputs.text, inputs.encoder, out, executor=executor, dtype=inputs.dtype, overwrite=overwrite,
                         resources=resources if client is not None else None, quality_gate=inputs.quality_gate)


def check_device_where_it_runs(device: str, client: Any | None) -> None:
    """Refuse ``device`` when the process that will run the model lacks it: this one, or any connected Dask worker.

    A cluster with no worker yet (SLURM jobs still queued) is let through; its tasks then fail on the worker.
    """
    from thresher.embeddings.encoders import check_device_available

    if device == "auto":
        return
    if client is None:
        check_device_available(device)
        return
    problems = client.run(_device_problem, device)
    for address, problem in sorted(problems.items()):
        if problem:
            raise ParameterError(f"{problem} (Dask worker {address})")


def _device_problem(device: str) -> str | None:
    """On a worker: why ``device`` is unusable there, or None."""
    import socket

    from thresher.embeddings.encoders import check_device_available

    try:
        check_device_available(device, where=f"the worker's machine {socket.gethostname()}")
    except ParameterError as exc:
        return str(exc).rstrip(".")
    return None


def _check_resources(resources: Mapping[str, float] | None) -> dict[str, float] | None:
    if resources is None:
        return None
    if not isinstance(resources, Mapping) or not all(
        isinstance(k, str) and k and isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for k, v in resources.items()
    ):
        raise ParameterError(f"The 'resources' parameter of embed must be a mapping of resource name to a number > 0, e.g. {{'GPU': 1}}; got {resources!r}.")
    return {k: float(v) for k, v in resources.items()} or None


def _check_workers_have(client: Any, resources: dict[str, float]) -> None:
    """Refuse a cluster whose connected workers all lack ``resources``: the tasks would wait for ever.

    A cluster with no worker yet (SLURM jobs still queued) is let through.
    """
    workers = client.scheduler_info(n_workers=-1)["workers"]
    declared = {address: w.get("resources") or {} for address, w in workers.items()}
    if declared and not any(all(have.get(k, 0) >= v for k, v in resources.items()) for have in declared.values()):
        seen = sorted({f"{k}={v:g}" for have in declared.values() for k, v in have.items()}) or ["none"]
        raise ParameterError(
            f"The 'resources' {resources} of embed are declared by none of the cluster's {len(declared)} workers "
            f"(their resources: {', '.join(seen)}); start workers with e.g. `dask worker --resources GPU=1`."
        )


def _check_columns(pool: Any, builder: Any) -> None:
    """Fail before any cluster starts when the text needs a column the pool lacks."""
    from thresher.exceptions import InputDataError

    missing = [c for c in builder.required_columns if c not in pool.column_names]
    where = pool.partitions[0].source or "the dataset"
    if missing:
        raise InputDataError(
            f"Column {missing[0]!r} needed for the text is not in {where}; the pool has columns {pool.column_names}."
        )
    builder.check_schema(pool.schema, where=where, example=lambda column: _first_value(pool, column))


def _first_value(pool: Any, column: str) -> str:
    """"row id=... holds ...": the first non-null value of ``column`` in the pool's first partition, for an error message."""
    from thresher.exceptions import ThresherError

    try:
        table = pool.read_partition(0, columns=[column])
    except ThresherError:
        return ""
    values = table.column(column)
    for row in range(table.num_rows):
        if values[row].is_valid:
            shown = repr(values[row].as_py())
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            return f"row id={table.column('id')[row].as_py()!r} holds {shown}"
    return ""
