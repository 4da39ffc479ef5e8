"""Backends piece by piece: the ORT runner and its EP handling, ORT-format conversion and op coverage,
the OpenVINO device fallback, and every part of the TensorRT backend that runs without TensorRT."""
import dataclasses
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edge_electra.backends import backend_names, get_backend  # noqa: E402
from edge_electra.backends import onnx_mobile  # noqa: E402
from edge_electra.backends import tensorrt as trt_backend  # noqa: E402
from edge_electra.backends.base import pick_fixed, run_in_chunks  # noqa: E402
from edge_electra.train.config import preset  # noqa: E402
from edge_electra.errors import BundleError, ConfigError  # noqa: E402
from edge_electra.build.export import ExportConfig, example_inputs, export_onnx  # noqa: E402
from edge_electra.train.model import Electra  # noqa: E402
from edge_electra.build.targets import load_target  # noqa: E402

CPU = "CPUExecutionProvider"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny sequence classifier, its unfused FP32 ONNX, a batch of inputs and torch's logits for it."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = Electra(preset("tiny", vocab_size=100, max_position=64, labels=["a", "b", "c"])).eval()
    root = tmp_path_factory.mktemp("backends")
    export_onnx(model, root / "model.onnx", ExportConfig(optimize=False))
    feeds = example_inputs(3, 16, 100)
    with torch.no_grad():
        expected = model(*(torch.from_numpy(feeds[n]) for n in ("input_ids", "attention_mask", "token_type_ids")))
    return {"root": root, "onnx": root / "model.onnx", "feeds": feeds, "expected": expected.numpy()}


def test_registry_lists_all_four_backends():
    assert backend_names() == ["onnx-mobile", "openvino", "tensorrt", "torch"]
    assert get_backend("onnx-mobile").available() == (True, "")
    ok, why = get_backend("tensorrt").available()
    assert not ok and "TensorRT is not installed" in why


def test_run_in_chunks_pads_the_last_chunk_and_trims():
    feeds = {"x": np.arange(5)[:, None] * np.ones((1, 4), dtype=np.int64)}
    seen = []

    def run(chunk):
        seen.append(len(chunk["x"]))
        return [chunk["x"].sum(axis=1)]

    (out,) = run_in_chunks(run, feeds, 2)
    assert seen == [2, 2, 2] and out.tolist() == [0, 4, 8, 12, 16]
    assert pick_fixed({32: "a", 64: "b"}, 64) == "b"
    with pytest.raises(ConfigError, match="pad inputs"):
        pick_fixed({32: "a"}, 20)


def test_provider_choice_falls_back_to_cpu_and_gives_xnnpack_the_threads(monkeypatch):
    providers, options, threads = onnx_mobile.choose_providers(
        ["NnapiExecutionProvider", "XnnpackExecutionProvider", CPU], {}, 4)
    assert providers == [CPU] and threads == 4           # neither EP is in this onnxruntime
    ort = onnx_mobile._ort()
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["XnnpackExecutionProvider", CPU])
    providers, options, threads = onnx_mobile.choose_providers(
        ["NnapiExecutionProvider", "XnnpackExecutionProvider"], {"XnnpackExecutionProvider": {"x": 1}}, 4)
    assert providers == ["XnnpackExecutionProvider", CPU]
    assert options[0] == {"x": "1", "intra_op_num_threads": "4"} and threads == 1


def test_ort_format_conversion_fixed_shapes_and_runner(tiny, tmp_path):
    stage = tmp_path / "stage"
    stage.mkdir()
    onnx_mobile.fix_shape(tiny["onnx"], stage / "model.s16.onnx", 1, 16)
    models, config = onnx_mobile.convert_to_ort(stage, tmp_path / "ort", "basic", "arm")
    assert [m.name for m in models] == ["model.s16.ort"]
    ops = config.read_text()
    assert "ai.onnx;" in ops and "MatMul" in ops and "LayerNormalization" in ops
    runner = onnx_mobile.OrtRunner([{"file": "model.s16.ort", "batch": 1, "seq": 16}], tmp_path / "ort",
                                   ["NnapiExecutionProvider"], {}, 1)
    assert runner.providers == [CPU] and runner.preferred_providers == ["NnapiExecutionProvider"]
    feeds = {n: a.astype(np.int32) for n, a in tiny["feeds"].items()}     # int32 is cast to the declared int64
    np.testing.assert_allclose(runner.run(feeds)["logits"], tiny["expected"], atol=1e-4)


def test_runner_feeds_only_the_inputs_the_model_declares(tiny, tmp_path):
    import onnx
    model = onnx.load(str(tiny["onnx"]))
    # Simulate ORT having pruned token_type_ids: replace the input by a constant zero tensor.
    (types,) = [i for i in model.graph.input if i.name == "token_type_ids"]
    model.graph.input.remove(types)
    shape = onnx.helper.make_node("Shape", ["input_ids"], ["ids_shape"])
    zeros = onnx.helper.make_node("ConstantOfShape", ["ids_shape"], ["token_type_ids"],
                                  value=onnx.helper.make_tensor("zero", onnx.TensorProto.INT64, [1], [0]))
    model.graph.node.insert(0, zeros)
    model.graph.node.insert(0, shape)
    onnx.save(model, str(tmp_path / "model.onnx"))
    runner = onnx_mobile.OrtRunner([{"file": "model.onnx"}], tmp_path, [], {}, 1)
    assert runner.input_names == ["input_ids", "attention_mask"]
    out = runner.run(tiny["feeds"])       # token_type_ids is offered and ignored
    np.testing.assert_allclose(out["logits"], tiny["expected"], atol=1e-4)
    with pytest.raises(ConfigError, match="needs input"):
        runner.run({"input_ids": tiny["feeds"]["input_ids"]})


def test_op_coverage_says_where_each_answer_comes_from(tiny, tmp_path):
    stage = tmp_path / "stage"
    stage.mkdir()
    onnx_mobile.fix_shape(tiny["onnx"], stage / "model.onnx", 1, 16)
    models, _ = onnx_mobile.convert_to_ort(stage, tmp_path / "ort", "basic", "arm")
    feeds = {n: a[:1] for n, a in tiny["feeds"].items()}
    report = onnx_mobile.op_coverage(stage / "model.onnx", models[0],
                                     ["NnapiExecutionProvider", "CoreMLExecutionProvider", "XnnpackExecutionProvider",
                                      "QNNExecutionProvider"], True, feeds, "basic")
    assert report[CPU]["source"] == "onnxruntime partitioning on the build machine"
    assert report[CPU]["supported_nodes"] == report[CPU]["nodes"] > 0
    assert "nnapi_supported_ops.md" in report["NnapiExecutionProvider"]["source"]
    assert "coreml_supported_mlprogram_ops.md" in report["CoreMLExecutionProvider"]["source"]
    assert "encoded in edge-electra" in report["XnnpackExecutionProvider"]["source"]
    assert report["QNNExecutionProvider"]["source"].startswith("none")
    nnapi = report["NnapiExecutionProvider"]
    assert 0 < nnapi["supported_nodes"] < nnapi["nodes"] and "ai.onnx:MatMul" not in nnapi["unsupported_ops"]
    assert "ai.onnx:MatMul" not in report["XnnpackExecutionProvider"]["unsupported_ops"]
    json.dumps(report)      # it goes into report.json


def test_openvino_runner_falls_back_to_cpu_for_a_missing_device(tiny, tmp_path):
    import openvino as ov
    from edge_electra.backends.openvino import OpenVinoRunner
    ov.save_model(ov.convert_model(str(tiny["onnx"])), str(tmp_path / "model.xml"), compress_to_fp16=False)
    runner = OpenVinoRunner([{"file": "model.xml"}], tmp_path, "GPU.1", "LATENCY", 1, "fp32", cache=False)
    assert runner.requested_device == "GPU.1" and runner.device == "CPU"
    np.testing.assert_allclose(runner.run(tiny["feeds"])["logits"], tiny["expected"], atol=1e-4)


# ---- TensorRT: everything that does not need TensorRT itself ------------------------------------
def test_engine_header_round_trip_and_mismatches(tmp_path):
    header = trt_backend.EngineHeader("10.3.0", "8.7", "fp16", "Orin")
    path = trt_backend.write_engine(tmp_path / "model.engine", header, b"ENGINE-BYTES")
    got, blob = trt_backend.read_engine(path)
    assert got == header and bytes(blob) == b"ENGINE-BYTES"
    trt_backend.check_header(got, "10.3.0", "8.7", path)
    with pytest.raises(BundleError, match="built with TensorRT 10.3.0 but this machine has TensorRT 10.4.1"):
        trt_backend.check_header(got, "10.4.1", "8.7", path)
    with pytest.raises(BundleError, match="compute capability 8.7 .*Orin.* but this GPU is 9.0"):
        trt_backend.check_header(got, "10.3.0", "9.0", path)
    (tmp_path / "plain.engine").write_bytes(b"serialized engine without our header")
    with pytest.raises(BundleError, match="no header"):
        trt_backend.read_engine(tmp_path / "plain.engine")


def test_builder_settings_follow_the_profile():
    target = load_target("jetson-orin")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    shapes = trt_backend.optimization_shapes(target, names)
    assert shapes["input_ids"] == ((1, 8), (1, 32), (8, 128))
    settings = trt_backend.builder_settings(target, "fp16", names)
    assert settings["flags"] == ["FP16"] and settings["workspace_bytes"] == 1024 << 20
    assert settings["optimization_level"] == 3 and settings["timing_cache"]
    assert settings["profile"]["token_type_ids"] == [[1, 8], [1, 32], [8, 128]]
    assert trt_backend.builder_settings(target, "int8-static", names)["flags"] == ["INT8", "FP16"]
    assert trt_backend.builder_settings(target, "fp32", names)["flags"] == []
    assert trt_backend.builder_settings(load_target("x86-nvidia-gpu"), "bf16", names)["flags"] == ["BF16"]
    with pytest.raises(ConfigError):
        trt_backend.builder_settings(target, "int8-dynamic", names)
    wide = dataclasses.replace(target, runtime={"workspace_mb": 64})
    assert trt_backend.builder_settings(wide, "fp32", names)["workspace_bytes"] == 64 << 20


def qdq_model(path, zero_point, bias_zero_point=None):
    """x → Q → DQ → MatMul(w) [+ DQ(int32 bias)] → y, with the given zero points."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "scale"),
             numpy_helper.from_array(np.asarray(zero_point), "zero"),
             numpy_helper.from_array(np.ones((4, 4), np.float32), "w")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "scale", "zero"], ["xd"], name="dq"),
             helper.make_node("MatMul", ["xd", "w"], ["y0"], name="mm")]
    if bias_zero_point is not None:
        inits += [numpy_helper.from_array(np.ones(4, np.int32), "bq"),
                  numpy_helper.from_array(np.asarray(bias_zero_point), "bzero")]
        nodes += [helper.make_node("DequantizeLinear", ["bq", "scale", "bzero"], ["b"], name="bias_dq"),
                  helper.make_node("Add", ["y0", "b"], ["y"])]
    else:
        nodes.append(helper.make_node("Identity", ["y0"], ["y"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_qdq_check_accepts_symmetric_int8_only(tmp_path):
    assert trt_backend.check_qdq(qdq_model(tmp_path / "ok.onnx", np.int8(0))) == 1
    with pytest.raises(ConfigError, match="non-zero or non-int8 zero point"):
        trt_backend.check_qdq(qdq_model(tmp_path / "u8.onnx", np.uint8(128)))
    with pytest.raises(ConfigError, match="non-zero or non-int8 zero point"):
        trt_backend.check_qdq(qdq_model(tmp_path / "shifted.onnx", np.int8(3)))
    with pytest.raises(ConfigError, match="INT32 \\(quantized bias\\)"):
        trt_backend.check_qdq(qdq_model(tmp_path / "bias.onnx", np.int8(0), np.int32(0)))


def test_static_qdq_model_runs_in_ort_close_to_fp32(tiny, tmp_path):
    from edge_electra.build.gate import session
    from edge_electra.build.quantize.static import StaticQuantConfig, quantize_static
    calibration = [example_inputs(4, 16, 100, seed=s) for s in range(3)]
    qdq = quantize_static(tiny["onnx"], tmp_path / "qdq.onnx", calibration, StaticQuantConfig())
    import onnx
    ops = {n.op_type for n in onnx.load(str(qdq)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    logits = session(qdq).run(None, tiny["feeds"])[0]
    assert (logits.argmax(-1) == tiny["expected"].argmax(-1)).all()
    assert np.abs(logits - tiny["expected"]).max() < 0.1
    # What the TensorRT backend builds from: the same model with its INT32 biases back in float.
    for_trt = trt_backend.float_biases(qdq, tmp_path / "qdq.trt.onnx")
    assert trt_backend.check_qdq(for_trt) > 0
    np.testing.assert_allclose(session(for_trt).run(None, tiny["feeds"])[0], logits, atol=1e-5)
    with pytest.raises(ConfigError, match="no QuantizeLinear"):
        trt_backend.check_qdq(tiny["onnx"])


def test_each_backend_gets_the_int8_static_recipe_it_runs(tiny, tmp_path):
    """ONNX Runtime gets unsigned activations (its fast CPU path), TensorRT symmetric ones; both keep the
    outputs of weighted ops in float."""
    import onnx
    from onnx import numpy_helper

    from edge_electra.build.quantize.static import StaticQuantConfig, quantize_static
    calibration = [example_inputs(4, 16, 100, seed=s) for s in range(3)]
    for backend, zero_point_type in [("onnx-mobile", np.uint8), ("tensorrt", np.int8)]:
        config = StaticQuantConfig(**get_backend(backend).static_quant)
        graph = onnx.load(str(quantize_static(tiny["onnx"], tmp_path / f"{backend}.onnx", calibration, config))).graph
        zero_points = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        quantizers = [n for n in graph.node if n.op_type == "QuantizeLinear"]
        assert quantizers and {zero_points[n.input[2]].dtype.type for n in quantizers} == {zero_point_type}
        producers = {t: n.op_type for n in graph.node for t in n.output}
        assert not {producers.get(n.input[0]) for n in quantizers} & {"MatMul", "Gemm"}


def test_tensorrt_engine_build_and_run(tiny, tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed on this machine (needs an NVIDIA GPU)")
    settings = trt_backend.builder_settings(load_target("x86-nvidia-gpu"), "fp32",
                                            ["input_ids", "attention_mask", "token_type_ids"])
    engine = trt_backend.build_engine(tiny["onnx"], settings, tmp_path / "timing.cache")
    import tensorrt as trt
    capability, name = trt_backend.gpu()
    path = trt_backend.write_engine(tmp_path / "model.engine",
                                    trt_backend.EngineHeader(trt.__version__, capability, "fp32", name), engine)
    runner = trt_backend.TensorRTRunner(path, 8, 64)
    np.testing.assert_allclose(runner.run(tiny["feeds"])["logits"], tiny["expected"], atol=1e-3)
    assert (tmp_path / "timing.cache").stat().st_size > 0
