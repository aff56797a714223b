"""The onnx-int8 runtime: export cache, identity, plumbing against a direct ONNX Runtime run, the quality gate, the missing extra."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

from thresher.embeddings import EncoderSpec, load_encoder
from thresher.embeddings.onnx_backend import (
    EXPORT_SETTINGS,
    check_quality,
    export_fingerprint,
    export_record,
    quality_figures,
)
from thresher.exceptions import ParameterError



@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    """THRESHER_CACHE_DIR pointed at a fresh folder for this module: the model is exported once, here."""
    folder = tmp_path_factory.mktemp("thresher-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("THRESHER_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="module")
def int8(onnx_cache):
    return load_encoder(EncoderSpec(runtime="onnx-int8"))


def test_export_is_cached_in_a_fingerprinted_folder_and_reused(int8, onnx_cache):
    spec = EncoderSpec(runtime="onnx-int8")
    record = export_record(spec)
    folder = onnx_cache / "onnx" / export_fingerprint(record)
    assert int8.model_path == folder / "model.int8.onnx" and int8.model_path.is_file()
    assert json.loads((folder / "export.json").read_text()) == record
    assert record["settings"] == EXPORT_SETTINGS and record["versions"]["onnxruntime"]
    before = int8.model_path.stat().st_mtime_ns
    again = load_encoder(spec)  # a second load finds the export: nothing is written
    assert again.model_path == int8.model_path and again.model_path.stat().st_mtime_ns == before
    assert [p.name for p in (onnx_cache / "onnx").iterdir()] == [folder.name]  # no temporary folder left behind


def test_an_export_folder_with_other_settings_is_refused_not_overwritten(int8, onnx_cache):
    folder = int8.model_path.parent
    record_file = folder / "export.json"
    original = record_file.read_text()
    changed = json.loads(original)
    changed["settings"] = {**changed["settings"], "per_channel": False}
    record_file.write_text(json.dumps(changed))
    try:
        with pytest.raises(ParameterError, match="other settings.*remove the folder") as err:
            load_encoder(EncoderSpec(runtime="onnx-int8"))
        assert str(folder) in str(err.value)
        assert json.loads(record_file.read_text()) == changed  # left as it was
    finally:
        record_file.write_text(original)


def test_other_weights_or_settings_give_another_fingerprint(int8):
    record = export_record(EncoderSpec(runtime="onnx-int8"))
    assert export_fingerprint({**record, "weights": "xxh3_128:0"}) != export_fingerprint(record)
    assert export_fingerprint({**record, "settings": {**record["settings"], "opset": 18}}) != export_fingerprint(record)


def test_runtime_is_part_of_the_encoder_identity_and_float32_identity_is_unchanged():
    torch_spec, int8_spec = EncoderSpec(), EncoderSpec(runtime="onnx-int8")
    assert "runtime" not in torch_spec.to_dict()  # float32 stores keep their fingerprints
    d = int8_spec.to_dict()
    assert d["runtime"] == "onnx-int8" and d["export"] == EXPORT_SETTINGS
    assert EncoderSpec.from_dict({**d, "quality": {"median": 1.0}, "onnx": {}}) == int8_spec
    assert EncoderSpec.from_dict(torch_spec.to_dict()) == torch_spec


@pytest.mark.parametrize(("kwargs", "name"), [({"device": "cuda"}, "device"), ({"dtype": "float16"}, "dtype"), ({"layer": 2}, "layer"),
                                               ({"runtime": "int4"}, "runtime")])
def test_bad_runtime_settings_are_refused_naming_the_parameter(kwargs, name):
    with pytest.raises(ParameterError, match=f"'{name}' parameter of EncoderSpec"):
        EncoderSpec(**{"runtime": "onnx-int8", **kwargs})


def test_vectors_equal_a_direct_onnx_runtime_run_with_numpy_mean_pooling(int8, minilm_path, mixed_texts):
    """One text at a time (dynamic int8 quantises activations per batch): the engine's tokenising,
    truncation and pooling around the session must reproduce a plain tokenizer + session + numpy pipeline."""
    import onnxruntime as ort
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    session = ort.InferenceSession(str(int8.model_path), providers=["CPUExecutionProvider"])
    texts = mixed_texts[:12]
    for text in texts:
        got = int8.encode([text]).vectors[0]
        feeds = dict(tokenizer([text], truncation=True, max_length=256, return_tensors="np"))
        hidden = session.run(None, {k: v.astype(np.int64) for k, v in feeds.items()})[0][0]
        expected = hidden.mean(axis=0)  # one unpadded text: every token is real
        expected /= np.linalg.norm(expected)
        np.testing.assert_allclose(got, expected, atol=2e-5)


def test_int8_vectors_are_close_to_sentence_transformers_float32(int8, minilm_path, mixed_texts):
    from sentence_transformers import SentenceTransformer

    expected = SentenceTransformer(minilm_path, device="cpu").encode(mixed_texts, normalize_embeddings=True)
    got = int8.encode(mixed_texts).vectors
    cosine = (got * expected).sum(1)
    assert np.median(cosine) >= 0.98 and cosine.min() >= 0.9  # close, yet not float32 (that is why the gate exists)
    assert cosine.min() < 0.9999
    described = int8.describe()
    assert described["runtime"] == "onnx-int8" and described["dtype"] == "int8" and described["onnx"]["fingerprint"]


def test_batch_callback_counts_every_text_once(int8, mixed_texts):
    counts: list[int] = []
    int8.encode(mixed_texts, on_batch=counts.append)
    assert sum(counts) == len(mixed_texts) and len(counts) > 1


def test_quality_figures_match_numpy_and_the_gate_refuses_or_warns():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(300, 16))
    candidate = reference + rng.normal(scale=0.05, size=reference.shape) * (np.arange(300) % 50 == 0)[:, None] * 20
    figures = quality_figures(reference, candidate)
    cosine = np.array([a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(reference, candidate)])
    assert figures["rows"] == 300
    assert figures["median"] == pytest.approx(np.median(cosine), abs=1e-5)
    assert figures["p01"] == pytest.approx(np.percentile(cosine, 1), abs=1e-5)
    assert figures["p01"] < 0.96  # the perturbed rows sink the 1st percentile
    assert check_quality(quality_figures(reference, reference)) is None
    with pytest.raises(ParameterError, match=r"1st percentile 0\.\d{4} \(needs >= 0\.96\)") as err:
        check_quality(figures, gate="refuse")
    assert f"{figures['rows']} rows" in str(err.value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        message = check_quality(figures, gate="warn")
    assert message and any("WARNING" in str(w.message) and "1st percentile" in str(w.message) for w in caught)


def test_missing_onnxruntime_names_the_extra(tmp_path):
    """In a fresh interpreter where onnxruntime cannot be imported."""
    code = (
        "import sys; sys.modules['onnxruntime'] = None\n"
        "from thresher.embeddings import EncoderSpec, load_encoder\n"
        "from thresher.exceptions import EnvironmentProblemError\n"
        "try:\n    load_encoder(EncoderSpec(runtime='onnx-int8'))\n"
        "except EnvironmentProblemError as e:\n    print('ERR', e)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "THRESHER_CACHE_DIR": str(tmp_path)})
    assert 'ERR' in done.stdout and 'pip install "thresher[onnx]"' in done.stdout, done.stdout + done.stderr
    assert not any(tmp_path.iterdir())  # nothing exported
