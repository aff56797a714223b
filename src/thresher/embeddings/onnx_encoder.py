"""The encoder of the ``onnx-int8`` runtime: the float32 engine's batching and pooling around an int8 ONNX Runtime session.

See :mod:`thresher.embeddings.onnx_backend` for the export, its cache and the quality gate.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch

from thresher.embeddings.encoders import Encoder
from thresher.embeddings.onnx_backend import ensure_int8_model, make_session, require_onnxruntime, runtime_versions, st_pooling_mode
from thresher.embeddings.pooling import get_pooling
from thresher.exceptions import ParameterError


class OnnxInt8Encoder(Encoder):
    """The float32 engine's batching and pooling around an int8 ONNX Runtime session of the model's transformer.

    Build one with :func:`thresher.embeddings.load_encoder` on a spec with ``runtime="onnx-int8"``.
    Always right-padded (the exported graph takes no position ids); vectors do not depend on the side.
    """

    runtime = "onnx-int8"

    def __init__(self, spec: Any, tokenizer: Any, *, backend: str, max_length: int, pooling: str, normalizes: bool,
                 input_names: list[str], model_path: Path, fingerprint: str, dim: int) -> None:
        super().__init__(spec, tokenizer, max_length=max_length, device=torch.device("cpu"), dtype=torch.float32)
        if spec.padding_side == "left":
            raise ParameterError("The 'padding_side' parameter of EncoderSpec must be None or 'right' with runtime 'onnx-int8' "
                                 "(the exported graph takes no position ids); got 'left'.")
        self.padding_side = "right"
        self.backend = backend
        self.pooling = pooling
        self._pool = get_pooling(pooling)
        self._normalizes = normalizes
        self._feature_names = input_names
        self.model_path = model_path
        self.export_fingerprint = fingerprint
        self.session = make_session(model_path)
        self.dim = int(dim)

    def _embed_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        feeds = {name: batch[name].numpy() for name in (*self._feature_names, "attention_mask")}
        hidden = torch.from_numpy(self.session.run(None, feeds)[0])
        pooled = self._pool(hidden, batch["attention_mask"])
        return torch.nn.functional.normalize(pooled, p=2.0, dim=1) if self._normalizes else pooled

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "dtype": "int8",
            "cpu_linear_kernel": "onnxruntime",
            "onnx": {"fingerprint": self.export_fingerprint, "file": str(self.model_path), **runtime_versions()},
        }


def load_onnx_int8_encoder(spec: Any) -> OnnxInt8Encoder:
    """Load ``spec``'s tokenizer and (once per machine) export its transformer to int8 ONNX; the ready encoder.

    Raises
    ------
    EnvironmentProblemError
        If onnxruntime or onnx is not installed (naming the extra).
    ParameterError
        If the model cannot be loaded offline or has modules the int8 path cannot reproduce.
    """
    from thresher.embeddings import encoders as enc

    require_onnxruntime()
    folder, gguf_file = enc._resolve_model(spec)
    cpu = torch.device("cpu")
    backend = enc.loading_backend(spec, folder, gguf_file)
    if backend == "sentence-transformers":
        st_model = enc._load_sentence_transformer(spec, folder, cpu, torch.float32)
        tokenizer, model = enc._st_tokenizer(st_model, spec), enc._st_auto_model(st_model)
        max_length = spec.max_length or st_model.max_seq_length
        pooling, normalizes = (spec.pooling, False) if spec.pooling is not None else st_pooling_mode(st_model, spec.model)
    else:
        model, tokenizer = enc._load_transformers(spec, folder, gguf_file, cpu, torch.float32)
        max_length = None
        pooling, normalizes = spec.pooling or "mean", False
    config = enc._text_config(model.config)
    max_length = spec.max_length or max_length or enc._default_max_length(tokenizer, config)
    enc._check_max_length(spec, max_length, config)
    if getattr(model.config, "is_encoder_decoder", False):
        model = model.get_encoder()
    accepted = set(inspect.signature(model.forward).parameters)
    input_names = [name for name in tokenizer.model_input_names if name != "attention_mask" and name in accepted]
    path, fingerprint = ensure_int8_model(spec, lambda: model, input_names)
    return OnnxInt8Encoder(spec, tokenizer, backend=backend, max_length=max_length, pooling=pooling, normalizes=normalizes,
                           input_names=input_names, model_path=path, fingerprint=fingerprint, dim=int(config.hidden_size))
