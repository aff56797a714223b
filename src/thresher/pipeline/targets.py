"""Target-task examples for targeted selection, embedded exactly as the pool was.

RDS+ compares pool and query embeddings, which only means something when
both come from the same model, pooling and layer: targets given as files are
embedded with the encoder recorded in the pool store's manifest (refused if
that model's weights changed since), and targets given as a store must carry
the same encoder settings and the same weights' hash.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from thresher.exceptions import InputDataError, ParameterError
from thresher.fingerprint import hash_bytes

_ENCODER_KEYS = ("model", "backend", "pooling", "layer", "normalize", "max_length", "padding_side", "gguf_file")


def load_targets(
    targets: Mapping[str, Any],
    store: Any,
    *,
    text: str | None = None,
    text_column: str | None = None,
    messages_column: str | None = None,
    chat_format: str | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Resolve each task's queries to an array of embeddings, with a fingerprint per task.

    A task's value may be an array (n, dim), an embedding-store directory, or
    a data file (anything :func:`thresher.stores.open_pool` reads), whose rows
    are turned into text by the given options or, by default, the way the
    pool's texts were built.
    """
    from thresher.stores.embedding_store import open_embedding_store

    if not targets:
        raise ParameterError("No target tasks were given: pass at least one, e.g. --targets gsm8k=tasks/gsm8k.jsonl.")
    arrays, fingerprints = {}, {}
    for task, value in targets.items():
        if isinstance(value, np.ndarray):
            arrays[task] = value
            fingerprints[task] = hash_bytes(np.ascontiguousarray(value, dtype=np.float32).tobytes())
        elif (Path(str(value)) / "manifest.json").is_file():
            target_store = open_embedding_store(value)
            _check_same_encoder(store, target_store.manifest.get("encoder", {}), f"the target store {value}")
            arrays[task] = target_store.to_numpy()
            fingerprints[task] = target_store.fingerprint
        else:
            arrays[task], fingerprints[task] = _embed_file(task, value, store, text, text_column, messages_column, chat_format)
        if len(arrays[task]) == 0:
            raise InputDataError(f"Target task {task!r} has no examples ({value}).")
    return arrays, fingerprints


def target_texts(
    targets: Mapping[str, Any],
    store: Any,
    *,
    text: str | None = None,
    text_column: str | None = None,
    messages_column: str | None = None,
    chat_format: str | None = None,
    max_chars: int = 2000,
) -> dict[str, list[str] | None]:
    """Each task's example texts, in query order, as :func:`load_targets` embeds them (cut to ``max_chars``).

    None for a task given as an array or an embedding store (no text to show).
    Read a partition at a time; targets are small (they are embedded whole).
    """
    from thresher.stores.pool import open_pool

    out: dict[str, list[str] | None] = {}
    for task, value in targets.items():
        if isinstance(value, np.ndarray) or (Path(str(value)) / "manifest.json").is_file():
            out[task] = None
            continue
        builder = _target_builder(store, text, text_column, messages_column, chat_format)
        pool = open_pool(str(value))
        texts: list[str] = []
        for i in range(pool.n_partitions):
            table = pool.read_partition(i, columns=builder.required_columns)
            texts += [t[:max_chars] for t in builder.build(table, source=str(value))]
        out[task] = texts
    return out


def _target_builder(store, text, text_column, messages_column, chat_format) -> Any:
    """The text builder of target files: the given options, or by default the pool's own."""
    from thresher.pipeline.text import TextBuilder

    pool_text = store.manifest.get("text") or {}
    if text is None and text_column is None and messages_column is None:
        text, text_column, messages_column = pool_text.get("template"), pool_text.get("text_column"), pool_text.get("messages_column")
    return TextBuilder(text, text_column=text_column, messages_column=messages_column,
                       chat_format=chat_format or pool_text.get("chat_format") or "tulu")


def _embed_file(task, source, store, text, text_column, messages_column, chat_format) -> tuple[np.ndarray, str]:
    from thresher.embeddings.encoders import EncoderSpec, cached_encoder
    from thresher.fingerprint import fingerprint_of
    from thresher.stores.pool import open_pool

    builder = _target_builder(store, text, text_column, messages_column, chat_format)
    pool = open_pool(str(source))
    missing = [c for c in builder.required_columns if c not in pool.column_names]
    if missing:
        raise InputDataError(f"Target file {source} of task {task!r} has no column {missing[0]!r} needed for its text; it has {pool.column_names}.")
    spec = EncoderSpec.from_dict(store.manifest["encoder"])
    _check_same_weights(store, spec, task)
    encoder = cached_encoder(spec)
    parts = []
    for i in range(pool.n_partitions):
        table = pool.read_partition(i, columns=builder.required_columns)
        parts.append(encoder.encode(builder.build(table, source=str(source))).vectors)
    vectors = np.concatenate(parts) if parts else np.empty((0, store.dim), np.float32)
    return vectors, fingerprint_of("embed_targets", 1, {"text": builder.describe(), "encoder": spec.to_dict()}, [pool.fingerprint])


def _check_same_weights(store: Any, spec: Any, task: str) -> None:
    """Refuse to embed target files with a model whose weights are not the ones that embedded the pool store.

    The store records its weights' hash (a store written before it was recorded is not checked).
    """
    from thresher.embeddings.encoders import weights_fingerprint

    recorded = store.manifest.get("encoder", {}).get("weights")
    if recorded is None:
        return
    now = weights_fingerprint(spec)
    if now != recorded:
        raise ParameterError(
            f"The model {spec.model!r} that embedded the pool store {store.path} now has other weights ({now}; the store records {recorded}), "
            f"so the targets of task {task!r} cannot be embedded as the pool was; re-embed the pool or restore the model."
        )


def _check_same_encoder(store: Any, encoder: dict[str, Any], where: str) -> None:
    """Refuse targets embedded with other settings or other weights than the pool store's (weights compared when both record them)."""
    mine = store.manifest.get("encoder", {})
    if mine.get("weights") is not None and encoder.get("weights") is not None and mine["weights"] != encoder["weights"]:
        raise ParameterError(
            f"The pool store {store.path} and {where} were embedded by different model weights (pool {mine['weights']}, target {encoder['weights']}), "
            f"though both name the model {mine.get('model')!r}; embed the targets with the pool's model."
            if mine.get("model") == encoder.get("model") else
            f"The pool store {store.path} and {where} were embedded by different model weights (pool {mine.get('model')!r} {mine['weights']}, "
            f"target {encoder.get('model')!r} {encoder['weights']}); embed the targets with the pool's model."
        )
    diffs = {k: (mine.get(k), encoder.get(k)) for k in _ENCODER_KEYS if mine.get(k) != encoder.get(k)}
    if diffs:
        detail = ", ".join(f"{k}: pool {a!r} vs target {b!r}" for k, (a, b) in diffs.items())
        raise ParameterError(f"The pool store {store.path} and {where} were embedded differently ({detail}); embed the targets with the pool's model, pooling and layer.")
