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
    float_matmul_nodes,
    quality_figures,
)
from thresher.exceptions import ParameterError, ThresherWarning



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


def test_only_weight_matmuls_are_quantised_and_the_first_layers_ffn_outputs_stay_float(int8, minilm_path):
    """MiniLM-L6: 6 layers x 6 weight MatMuls (query, key, value, attention output, FFN in, FFN out); the FFN output
    projections of layers 0-2 stay float32, the embedding tables are not quantised."""
    import onnx
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(minilm_path)
    graph = onnx.load(str(int8.model_path)).graph
    initializers = {init.name: init for init in graph.initializer}
    float_weight_matmuls = sorted(n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in initializers)
    kept = (config.num_hidden_layers + 1) // 2
    assert float_weight_matmuls == [f"/model/encoder/layer.{i}/output/dense/MatMul" for i in range(kept)]
    assert sum(n.op_type == "MatMulInteger" for n in graph.node) == 6 * config.num_hidden_layers - kept
    consumers = {i: n.op_type for n in graph.node for i in n.input}
    int8_weights = [name for name, init in initializers.items() if init.data_type == onnx.TensorProto.INT8]
    assert int8_weights and {consumers[name] for name in int8_weights} == {"MatMulInteger"}
    word_embeddings = next(n for n in graph.node if n.name.endswith("word_embeddings/Gather"))
    assert initializers[word_embeddings.input[0]].data_type == onnx.TensorProto.FLOAT


def test_float_matmul_nodes_picks_the_down_projections_of_the_first_half_of_the_layers(tmp_path):
    """A toy graph of 3 layers, each up (4 -> 8) then down (8 -> 4), plus an activation x activation MatMul."""
    import onnx
    from onnx import TensorProto, helper

    nodes, inits, x = [], [], "x"
    for layer in range(3):
        for part, shape in (("up", (4, 8)), ("down", (8, 4))):
            inits.append(helper.make_tensor(f"w{layer}{part}", TensorProto.FLOAT, shape, np.ones(shape).ravel().tolist()))
            nodes.append(helper.make_node("MatMul", [x, f"w{layer}{part}"], [f"h{layer}{part}"], name=f"l{layer}_{part}"))
            x = f"h{layer}{part}"
    nodes.append(helper.make_node("MatMul", [x, x], ["y"], name="scores"))  # no constant weight: never picked
    graph = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    path = tmp_path / "toy.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert float_matmul_nodes(path, "ffn_output_first_half") == ["l0_down", "l1_down"]
    assert float_matmul_nodes(path, "ffn_output_all") == ["l0_down", "l1_down", "l2_down"]
    assert float_matmul_nodes(path, "none") == []
    with pytest.raises(ParameterError, match="'float_matmuls' export setting"):
        float_matmul_nodes(path, "last")


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
    # measured here: median 0.9974, min 0.9902 with EXPORT_SETTINGS; every MatMul and Gather in int8 gave 0.9951 and 0.9833
    assert np.median(cosine) >= 0.996 and cosine.min() >= 0.985
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
    assert message and any(issubclass(w.category, ThresherWarning) and "1st percentile" in str(w.message) for w in caught)


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
