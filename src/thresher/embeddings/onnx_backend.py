"""The ``onnx-int8`` runtime: the model's transformer exported to ONNX, weights quantised to int8, run by ONNX Runtime on CPU.

Why: on CPU, embedding is the cost of every run. Dynamic int8 quantisation
(int8 weights per output channel, activations quantised per batch at run
time; Jacob et al. 2018, arXiv 1712.05877) runs MiniLM's matrix products on
the CPU's VNNI int8 dot-product units: with every MatMul quantised, ~2x the
float32 engine's speed here (2.5x ``SentenceTransformer.encode``). torch's own
dynamic int8 quantisation lost far more (median cosine 0.93), hence ONNX Runtime.

What is quantised (:data:`EXPORT_SETTINGS`, chosen by measurement on the
bundled demo): only the MatMuls with a constant weight, not the embedding
tables (ONNX Runtime's default also quantises ``Gather``, which saves no time
and adds error at the input), and not the feed-forward output projections of
the first half of the layers (:func:`float_matmul_nodes`). Quantising every
eligible op kept the per-row cosine to float32 at a median of 0.991 but moved
RDS+ scores by ~0.02 (a median), and the demo's RDS+ selection overlapped the
float32 one with Jaccard 0.86 only; with these settings, 0.90, at ~80-90% of
the all-int8 speed (see BENCHMARKS.md).

The batching, truncation, padding and pooling are the float32 engine's
(:class:`~thresher.embeddings.encoders.Encoder`): only the transformer body
(token ids -> last hidden states) runs in ONNX Runtime; the registered pooling
mode and the L2 normalisation run in torch afterwards, as on the float32 path.

The export runs offline, from the local model folder, once per machine: into
``<cache>/onnx/<fingerprint>/`` where the fingerprint hashes the weights, the
export settings (:data:`EXPORT_SETTINGS`) and the versions of torch, onnx and
onnxruntime, so other settings or versions give another folder, never a silent
re-export over an existing one. The cache is ``$THRESHER_CACHE_DIR/onnx`` or
``~/.cache/thresher/onnx``. A folder is written under a temporary name and
renamed when complete; a folder whose ``export.json`` does not match is
refused, never overwritten.

Because int8 vectors are not float32 vectors, the runtime and its export
settings are part of the encoder's identity (:meth:`EncoderSpec.to_dict`),
hence of the store's fingerprint and manifest, and :func:`quality_figures`
measures the loss on a calibration sample (see ``thresher.jobs.embed_job``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from thresher.exceptions import EnvironmentProblemError, ParameterError, ThresherWarning

Runtime = Literal["torch", "onnx-int8"]
RUNTIMES = ("torch", "onnx-int8")
QualityGate = Literal["refuse", "warn"]

#: How the model is exported and quantised; every key is part of the export's fingerprint and of the encoder's identity.
EXPORT_SETTINGS: dict[str, Any] = {
    "exporter": "torch.onnx.export(dynamo=False)",
    "opset": 17,
    "output": "last_hidden_state",
    "quantization": "onnxruntime.quantization.quantize_dynamic",
    "weight_type": "QInt8",
    "per_channel": True,
    "reduce_range": False,
    "op_types_to_quantize": ["MatMul"],
    "float_matmuls": "ffn_output_first_half",
    "export_version": 2,
}
#: Values of ``EXPORT_SETTINGS["float_matmuls"]``: which weight MatMuls stay in float32 (see :func:`float_matmul_nodes`).
FLOAT_MATMULS = ("none", "ffn_output_first_half", "ffn_output_all")
#: Calibration sample's per-row cosine to float32 must reach these (the issue's gate).
QUALITY_MEDIAN_MIN = 0.99
QUALITY_P01_MIN = 0.96
#: Rows of the pool embedded both ways to measure the quality.
CALIBRATION_ROWS = 256

_INSTALL_HINT = 'pip install "thresher[onnx]"'
_MODEL_FILE = "model.int8.onnx"
_EXPORT_RECORD = "export.json"
_ST_POOLING = {"mean": "mean", "cls": "cls", "max": "max", "lasttoken": "last_token", "weightedmean": "weighted_mean"}


def require_onnxruntime() -> Any:
    """The ``onnxruntime`` module, or an error naming the extra that installs it."""
    try:
        import onnx  # noqa: F401 - the export writes through it
        import onnxruntime
    except ImportError as exc:
        raise EnvironmentProblemError(
            f"The 'onnx-int8' embedding backend needs onnxruntime and onnx, which are not installed ({exc.name} is missing): "
            f"install the extra with `{_INSTALL_HINT}`, or use backend 'torch'."
        ) from None
    return onnxruntime


def runtime_versions() -> dict[str, str]:
    """Versions that shape the exported and quantised model (part of the export fingerprint)."""
    ort = require_onnxruntime()
    import onnx

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__}


def cache_root() -> Path:
    """Where exported models are kept: ``$THRESHER_CACHE_DIR/onnx``, else ``~/.cache/thresher/onnx``."""
    base = os.environ.get("THRESHER_CACHE_DIR")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "thresher") / "onnx"


def export_record(spec: Any) -> dict[str, Any]:
    """What identifies an export of ``spec``'s model: weights, export settings, versions. Its hash names the folder."""
    from thresher.embeddings.encoders import weights_fingerprint

    return {
        "weights": weights_fingerprint(spec),
        "model_backend": spec.backend,
        "gguf_file": spec.gguf_file,
        "settings": EXPORT_SETTINGS,
        "versions": runtime_versions(),
    }


def export_fingerprint(record: dict[str, Any]) -> str:
    from thresher.fingerprint import hash_bytes

    return hash_bytes(json.dumps(record, sort_keys=True).encode("utf-8"))


def ensure_int8_model(spec: Any, body: Any, feature_names: list[str]) -> tuple[Path, str]:
    """The int8 ONNX file of ``spec``'s model, exported (from ``body``, a float32 CPU module) on first use; and its fingerprint.

    ``body()`` is called only when an export is needed (it loads the torch model).

    Raises
    ------
    ParameterError
        If the cache folder for this fingerprint exists but holds another or an incomplete export.
    """
    record = export_record(spec)
    fingerprint = export_fingerprint(record)
    folder = cache_root() / fingerprint
    if not folder.exists():
        _export(body(), feature_names, record, folder)
    _check_export(folder, record)
    return folder / _MODEL_FILE, fingerprint


def _check_export(folder: Path, record: dict[str, Any]) -> None:
    try:
        found = json.loads((folder / _EXPORT_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        found = None
    if found != record or not (folder / _MODEL_FILE).is_file():
        raise ParameterError(
            f"The ONNX export cache folder {str(folder)!r} holds an incomplete export or one made with other settings; "
            "thresher never re-exports over it silently: remove the folder to export again."
        )


def _export(model: torch.nn.Module, feature_names: list[str], record: dict[str, Any], folder: Path) -> None:
    """Export ``model``'s last hidden states to ONNX, quantise it to int8, and rename the folder into place."""
    require_onnxruntime()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".tmp-{folder.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        names = [*feature_names, "attention_mask"]
        example = tuple(torch.ones(2, 8, dtype=torch.int64) if n != "token_type_ids" else torch.zeros(2, 8, dtype=torch.int64) for n in names)
        axes = {n: {0: "batch", 1: "tokens"} for n in [*names, "last_hidden_state"]}
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad(), _quiet_root_logger():
            warnings.simplefilter("ignore")  # the TorchScript tracer's warnings are about training-only branches
            torch.onnx.export(
                _Body(model.eval(), names), example, str(tmp / "model.float32.onnx"), input_names=names,
                output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=EXPORT_SETTINGS["opset"], dynamo=False,
            )
            quantize_dynamic(
                str(tmp / "model.float32.onnx"), str(tmp / _MODEL_FILE), per_channel=EXPORT_SETTINGS["per_channel"],
                reduce_range=EXPORT_SETTINGS["reduce_range"], weight_type=getattr(QuantType, EXPORT_SETTINGS["weight_type"]),
                op_types_to_quantize=EXPORT_SETTINGS["op_types_to_quantize"],
                nodes_to_exclude=float_matmul_nodes(tmp / "model.float32.onnx", EXPORT_SETTINGS["float_matmuls"]),
            )
        (tmp / "model.float32.onnx").unlink()
        (tmp / _EXPORT_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True), encoding="utf-8")
        try:
            tmp.rename(folder)
        except OSError:
            if not folder.exists():  # another process finished the same export first: use theirs
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def float_matmul_nodes(path: Path, which: str) -> list[str]:
    """Names of the MatMul nodes of the float32 ONNX model at ``path`` that the quantisation leaves in float32.

    The feed-forward output projections (a constant weight with more input than
    output features: intermediate size -> hidden size) take the GELU outputs,
    whose few large values stretch a per-tensor activation scale so that the
    many small ones lose most of their bits (Bondarenko et al. 2021,
    arXiv 2109.12948). Measured on the bundled demo with all-MiniLM-L6-v2
    (MatMuls only quantised): keeping the first half of the layers'
    projections in float32 lifted the per-row cosine to float32 from a median
    of 0.992 to 0.996 (1st percentile 0.985 -> 0.992) and the RDS+ Jaccard to
    the float32 selection from 0.86 to 0.90, at 1.6-1.8x the float32 engine's
    speed instead of 1.9-2.0x; keeping the last layers' projections helped
    little, keeping all six reached Jaccard 0.91 at 1.3-1.8x.

    Parameters
    ----------
    which : {"none", "ffn_output_first_half", "ffn_output_all"}
        "ffn_output_first_half": the projections of the first ceil(n / 2) of the
        model's n layers, in graph order.
    """
    if which not in FLOAT_MATMULS:
        raise ParameterError(f"The 'float_matmuls' export setting must be one of {FLOAT_MATMULS}; got {which!r}.")
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    shapes = {init.name: tuple(init.dims) for init in graph.initializer}
    projections = [node.name for node in graph.node if node.op_type == "MatMul" and len(shapes.get(node.input[1], ())) == 2
                   and shapes[node.input[1]][0] > shapes[node.input[1]][1]]
    if which == "none":
        return []
    return projections if which == "ffn_output_all" else projections[: (len(projections) + 1) // 2]


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """quantize_dynamic logs advice on the root logger ("consider pre-processing"): not the user's concern."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class _Body(torch.nn.Module):
    """Positional inputs (ONNX's) -> last hidden states of a Hugging Face model."""

    def __init__(self, model: torch.nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, inputs))).last_hidden_state


def make_session(path: Path) -> Any:
    """An ONNX Runtime CPU session on ``path``, using torch's current thread count (the job sets it per worker)."""
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def st_pooling_mode(st_model: Any, model_name: str) -> tuple[str, bool]:
    """The registered pooling mode equal to a sentence-transformers folder's own modules, and whether it normalises.

    Raises
    ------
    ParameterError
        If the folder holds a module the int8 path cannot reproduce (a dense layer, several pooling modes).
    """
    mode, normalizes = None, False
    for module in list(st_model)[1:]:
        kind = type(module).__name__
        if kind == "Pooling":
            config = module.get_config_dict()
            chosen = [k.removeprefix("pooling_mode_").removesuffix("_tokens").replace("_", "") for k, v in config.items()
                      if k.startswith("pooling_mode_") and v is True]
            if config.get("pooling_mode"):
                chosen = [str(config["pooling_mode"]).replace("_", "")]
            if len(chosen) != 1 or chosen[0] not in _ST_POOLING:
                raise ParameterError(f"Model {model_name!r} pools with {chosen}, which the 'onnx-int8' backend cannot reproduce; use backend 'torch' "
                                     "or set 'pooling'.")
            mode = _ST_POOLING[chosen[0]]
        elif kind == "Normalize":
            normalizes = True
        else:
            raise ParameterError(f"Model {model_name!r} has a {kind} module after its pooling, which the 'onnx-int8' backend does not run; "
                                 "use backend 'torch'.")
    if mode is None:
        raise ParameterError(f"Model {model_name!r} has no pooling module; set 'pooling' to use the 'onnx-int8' backend.")
    return mode, normalizes


def quality_figures(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float | int]:
    """Per-row cosine between ``candidate`` and ``reference`` vectors (same rows, same order): median, 1st percentile, rows.

    Parameters
    ----------
    reference, candidate : numpy.ndarray of shape (n_rows, dim)
    """
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    cosine = np.einsum("ij,ij->i", reference, candidate) / np.where(norms > 0, norms, 1.0)
    return {"median": round(float(np.median(cosine)), 5), "p01": round(float(np.percentile(cosine, 1)), 5), "rows": int(len(cosine))}


def check_quality(figures: dict[str, float | int], *, gate: QualityGate = "refuse", backend: str = "onnx-int8") -> str | None:
    """Apply the gate (median >= 0.99 and 1st percentile >= 0.96): raise (``"refuse"``) or return a warning (``"warn"``) below it.

    Returns
    -------
    str or None
        The warning's text when the gate failed under ``"warn"`` (also issued as a :class:`~thresher.exceptions.ThresherWarning`), else None.
    """
    if gate not in ("refuse", "warn"):
        raise ParameterError(f"The 'quality_gate' parameter of embed must be 'refuse' or 'warn'; got {gate!r}.")
    if figures["median"] >= QUALITY_MEDIAN_MIN and figures["p01"] >= QUALITY_P01_MIN:
        return None
    message = (
        f"The {backend!r} embeddings differ too much from float32 on a calibration sample of {figures['rows']} rows: per-row cosine "
        f"median {figures['median']:.4f} (needs >= {QUALITY_MEDIAN_MIN}) and 1st percentile {figures['p01']:.4f} (needs >= {QUALITY_P01_MIN})."
    )
    if gate == "refuse":
        raise ParameterError(message + " Use backend 'torch', or quality_gate 'warn' to embed anyway.")
    warnings.warn(message + " Embedding anyway (quality_gate 'warn').", ThresherWarning, stacklevel=2)
    return message

