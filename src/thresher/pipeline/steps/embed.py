"""The ``embed`` stage: the pool embedded into the run's own store, ``<run>/embeddings``.

Stage: :func:`thresher.pipeline.embed.run_embed`; job: :mod:`thresher.jobs.embed_job`.
Its fingerprint is the store's own (:func:`thresher.jobs.embed_job.embed_fingerprint`:
the pool's content, how rows become text, the encoder and its weights, the dtype
and the partitioning), recorded in the store's manifest, so a finished store is
recognised by its manifest and an interrupted one resumes. ``quality_gate`` is
not in it (it changes no vector); a cached store's recorded quality figures
are checked against the spec's gate when it is reused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thresher.pipeline.steps._base import SourceKind, StepInputs


@dataclass(frozen=True)
class EmbedSource:
    """The embed stage's config: its inputs (:class:`thresher.pipeline.embed.EmbedInputs`, the pool opened once) and the spec's section."""

    inputs: Any
    settings: Any  # thresher.pipeline.spec.EmbeddingSpec

    @property
    def pool(self) -> Any:
        return self.inputs.pool


class EmbedKind(SourceKind):
    name = "embed"
    cached_by = "manifest"

    @property
    def version(self) -> int:
        from thresher.jobs.embed_job import EMBED_JOB_VERSION

        return EMBED_JOB_VERSION

    def prepare(self, spec: Any, run_dir: Path) -> EmbedSource:
        from thresher.pipeline.embed import prepare_embed

        p, e = spec.pool, spec.embedding
        inputs = prepare_embed(
            p.path, text=p.text, text_column=p.text_column, messages_column=p.messages_column, chat_format=p.chat_format,
            id_column=p.id_column, format=p.format, split=p.split, model=e.model, pooling=e.pooling, layer=e.layer,
            normalize=e.normalize, max_length=e.max_length, batch_size=e.batch_size, device=e.device, model_dtype=e.model_dtype,
            padding_side=e.padding_side, gguf_file=e.gguf_file, trust_remote_code=e.trust_remote_code, backend=e.backend,
            quality_gate=e.quality_gate, dtype=e.dtype, partition_rows=p.partition_rows,
        )
        return EmbedSource(inputs, e)

    def directory(self, config: EmbedSource) -> str:
        return "embeddings"

    def plan_fingerprint(self, config: EmbedSource, upstream: list[str]) -> str:
        return config.inputs.fingerprint()

    def expected_rows(self, config: EmbedSource, bound: int) -> str:
        return f"{bound:,} rows × dim"

    def memory(self, config: EmbedSource, bound: int | None) -> str:
        e = config.settings
        tokens = e.batch_size * (e.max_length or 256)
        return f"model weights + ~{tokens * 4 * 4096 / 2**20:,.0f} MiB activations (batch {e.batch_size} × {e.max_length or 256} tokens)"

    def preflight(self, config: EmbedSource, executor: Any) -> None:
        if executor.runs_here:
            from thresher.embeddings.encoders import check_device_available

            check_device_available(config.settings.device)  # the model runs on this machine; remote workers are checked by run_embed

    def open_cached(self, config: Any, directory: Path) -> Any:
        from thresher.jobs.embed_job import check_recorded_quality
        from thresher.stores.embedding_store import open_embedding_store

        store = open_embedding_store(directory)
        check_recorded_quality(store, gate=config.inputs.quality_gate)  # the gate is not in the fingerprint; see there
        return store

    def run(self, config: EmbedSource, inputs: StepInputs, executor: Any) -> Any:
        from thresher.pipeline.embed import run_embed

        return run_embed(config.inputs, inputs.out, executor=executor, resources=config.settings.worker_resources, overwrite=inputs.overwrite)

    def notes(self, output: Any) -> list[str]:
        skipped = (output.manifest.get("pool") or {}).get("skipped") or []
        if not skipped:
            return []
        return [f"skipped {len(skipped)} path{'s' if len(skipped) > 1 else ''} in the pool's directories: " + ", ".join(skipped[:5])
                + (f" and {len(skipped) - 5} more (see its manifest.json)" if len(skipped) > 5 else "")]


STAGE = EmbedKind()
