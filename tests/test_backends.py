"""Backends piece by piece: the registry and the facts each backend declares, a backend added from outside
the package (the proof that adding one touches nothing else), the ORT runner and its EP handling,
ORT-format conversion and op coverage, and OpenVINO's device, precision hint and INT8 calibration.
TensorRT's parts are in test_backends_tensorrt.py."""
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tomli_w

torch = pytest.importorskip("torch")

from edge_electra import backends  # noqa: E402
from edge_electra.backends import backend_names, get_backend  # noqa: E402
from edge_electra.backends import onnx_mobile  # noqa: E402
from edge_electra.backends.base import Backend, CompiledModel, Variant, pick_fixed, run_in_chunks  # noqa: E402
from edge_electra.build.export import example_inputs, fix_shape  # noqa: E402
from edge_electra.build.package import write_bundle  # noqa: E402
from edge_electra.errors import BundleError, ConfigError  # noqa: E402
from edge_electra.runtime.bundle import Bundle, Manifest  # noqa: E402
from edge_electra.runtime.predictor import Predictor  # noqa: E402

from conftest import INTENTS, TEXTS, tiny_model  # noqa: E402

CPU = "CPUExecutionProvider"
ROOT = Path(__file__).resolve().parent.parent




# ---- the registry ----------------------------------------------------------------------------------
def test_registry_lists_all_four_backends_and_their_facts():
    assert backend_names() == ["onnx-mobile", "openvino", "tensorrt", "torch"]
    assert get_backend("onnx-mobile").available() == (True, "")
    ok, why = get_backend("tensorrt").available()
    assert not ok and "TensorRT is not installed" in why
    assert {n: get_backend(n).library for n in backend_names()} == {
        "onnx-mobile": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt", "torch": "torch"}
    assert get_backend("torch").precisions == ("fp32",) and "bf16" in get_backend("tensorrt").precisions
    with pytest.raises(ConfigError, match="unknown backend 'tflite'; choose one of"):
        get_backend("tflite")


def test_backend_modules_load_no_runtime_library_and_nothing_from_the_build_side():
    """Registering every backend imports neither its runtime library nor edge_electra.build/train/tools."""
    code = ("import sys\n"
            "from edge_electra.backends import backend_names, get_backend\n"
            "[get_backend(n).available() for n in backend_names()]\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('onnxruntime', 'openvino', 'tensorrt',"
            " 'torch', 'nncf', 'onnx', 'cuda') or m.startswith(('edge_electra.build', 'edge_electra.train',"
            " 'edge_electra.tools'))))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# ---- a backend from outside the package ------------------------------------------------------------
@dataclass
class NullOptions:
    intra_threads: int = 1

    def __post_init__(self):
        if self.intra_threads < 1:
            raise ConfigError(f"'intra_threads' must be at least 1, got {self.intra_threads}")


class NullRunner:
    """The FP32 ONNX model as it is, in ONNX Runtime on the CPU."""

    def __init__(self, path: Path, threads: int):
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=[CPU])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.device = "CPU"

    def run(self, feeds):
        outputs = self.session.run(self.output_names, {n: feeds[n] for n in self.input_names})
        return dict(zip(self.output_names, outputs))


class NullBackend(Backend):
    precisions = ("fp32",)
    options = NullOptions
    library = "onnxruntime"
    requires = ("onnxruntime",)
    extra = "onnx"

    def compile(self, request, workdir):
        shutil.copyfile(request.reference_onnx, workdir / "model.onnx")
        return CompiledModel({"model.onnx": workdir / "model.onnx"}, request.precision,
                             runtime={"intra_threads": request.target.options.intra_threads},
                             onnx=request.reference_onnx)

    def load(self, bundle, threads=None, **_):
        return NullRunner(bundle.file("model.onnx"), threads or self.bundle_options(bundle).intra_threads)

    def devices(self):
        return ["CPU"]


@pytest.fixture
def null_backend(monkeypatch):
    monkeypatch.setattr(backends, "_REGISTRY", dict(backends._REGISTRY))   # forgotten after the test
    return backends.register("null")(NullBackend)


def null_profile(path: Path, **runtime) -> Path:
    path.write_text(tomli_w.dumps({
        "name": "null-board", "description": "ONNX Runtime on the CPU, through a backend registered by a test",
        "backend": "null", "precisions": ["fp32"], "buckets": [16, 32, 64], "batch": {"min": 1, "opt": 1, "max": 8},
        "seq": {"min": 8, "opt": 32, "max": 64}, "runtime": runtime, "verified": ["test_backends.py"]}))
    return path


def test_a_backend_registered_from_a_test_module_compiles_loads_and_predicts(null_backend, tmp_path, monkeypatch):
    """The whole pipeline (targets, compile, the Predictor, the bench's system info) serves a backend that
    only its own module knows about."""
    from edge_electra.build.compile import compile_bundle
    from edge_electra.build.targets import load_target, table
    from edge_electra.tools.bench.sysinfo import backend_info
    from edge_electra.train.checkpoint import save_pretrained
    monkeypatch.setenv("EDGE_ELECTRA_CACHE", str(tmp_path / "cache"))
    model, tokenizer = tiny_model(labels=list(INTENTS))
    folder = save_pretrained(model, tmp_path / "ckpt", tokenizer=tokenizer)
    (tmp_path / "calibration.txt").write_text("\n".join(TEXTS) + "\n")
    profile = null_profile(tmp_path / "null-board.toml", intra_threads=2)
    assert load_target(profile).options == NullOptions(intra_threads=2)
    assert "null-board  null" in table([load_target(profile)], check=True)
    with pytest.raises(ConfigError, match="runtime \\(backend null\\): 'intra_threads' must be at least 1"):
        load_target(null_profile(tmp_path / "wrong.toml", intra_threads=0))

    out = compile_bundle(folder, profile, tmp_path / "bundle", precision="fp32",
                         calibration=tmp_path / "calibration.txt", threads=1)
    bundle = Bundle.load(out)
    assert bundle.manifest.backend == "null" and bundle.manifest.runtime["intra_threads"] == 2
    assert bundle.manifest.versions["onnxruntime"]
    predictor = Predictor.load(out)
    assert isinstance(predictor.runner, NullRunner)
    feeds = tokenizer(TEXTS).arrays()
    with torch.no_grad():
        expected = model(*(torch.from_numpy(feeds[n]) for n in ("input_ids", "attention_mask", "token_type_ids")))
    assert [p.label for p in predictor.predict_batch(TEXTS)] == [list(INTENTS)[i] for i in expected.argmax(-1)]
    assert backend_info()["null"] == {"available": True, "devices": ["CPU"]}


# ---- shared pieces -----------------------------------------------------------------------------------
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


@pytest.mark.parametrize("runtime, message", [
    ({"execution_providers": "CPUExecutionProvider"}, "'execution_providers' must be a list"),
    ({"optimization_level": 3}, "'optimization_level' must be one of"),
    ({"variants": [{"file": "other.onnx"}]}, "other.onnx"),
])
def test_damaged_runtime_options_in_a_manifest_are_refused_at_load(tiny_bundle, runtime, message):
    path = tiny_bundle(runtime={"max_batch": 8, **runtime})
    with pytest.raises(BundleError, match=message):
        Predictor.load(path)


# ---- ONNX Runtime ------------------------------------------------------------------------------------
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


def test_ort_format_conversion_fixed_shapes_and_runner(tiny_classifier, tmp_path):
    stage = tmp_path / "stage"
    stage.mkdir()
    fix_shape(tiny_classifier["onnx"], stage / "model.s16.onnx", 1, 16)
    models, config = onnx_mobile.convert_to_ort(stage, tmp_path / "ort", "basic", "arm")
    assert [m.name for m in models] == ["model.s16.ort"]
    ops = config.read_text()
    assert "ai.onnx;" in ops and "MatMul" in ops and "LayerNormalization" in ops
    runner = onnx_mobile.OrtRunner([Variant("model.s16.ort", seq=16, batch=1)], tmp_path / "ort",
                                   ["NnapiExecutionProvider"], {}, 1)
    assert runner.providers == [CPU] and runner.preferred_providers == ["NnapiExecutionProvider"]
    assert runner.device == "CPU"          # where it runs, not what it asked for
    feeds = {n: a.astype(np.int32) for n, a in tiny_classifier["feeds"].items()}     # int32 is cast to the declared int64
    np.testing.assert_allclose(runner.run(feeds)["logits"], tiny_classifier["expected"], atol=1e-4)


def test_runner_feeds_only_the_inputs_the_model_declares(tiny_classifier, tmp_path):
    import onnx
    model = onnx.load(str(tiny_classifier["onnx"]))
    # Simulate ORT having pruned token_type_ids: replace the input by a constant zero tensor.
    (types,) = [i for i in model.graph.input if i.name == "token_type_ids"]
    model.graph.input.remove(types)
    shape = onnx.helper.make_node("Shape", ["input_ids"], ["ids_shape"])
    zeros = onnx.helper.make_node("ConstantOfShape", ["ids_shape"], ["token_type_ids"],
                                  value=onnx.helper.make_tensor("zero", onnx.TensorProto.INT64, [1], [0]))
    model.graph.node.insert(0, zeros)
    model.graph.node.insert(0, shape)
    onnx.save(model, str(tmp_path / "model.onnx"))
    runner = onnx_mobile.OrtRunner([Variant("model.onnx")], tmp_path, [], {}, 1)
    assert runner.input_names == ["input_ids", "attention_mask"]
    out = runner.run(tiny_classifier["feeds"])       # token_type_ids is offered and ignored
    np.testing.assert_allclose(out["logits"], tiny_classifier["expected"], atol=1e-4)
    with pytest.raises(ConfigError, match="needs input"):
        runner.run({"input_ids": tiny_classifier["feeds"]["input_ids"]})


def test_op_coverage_says_where_each_answer_comes_from(tiny_classifier, tmp_path):
    stage = tmp_path / "stage"
    stage.mkdir()
    fix_shape(tiny_classifier["onnx"], stage / "model.onnx", 1, 16)
    models, _ = onnx_mobile.convert_to_ort(stage, tmp_path / "ort", "basic", "arm")
    feeds = {n: a[:1] for n, a in tiny_classifier["feeds"].items()}
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


def test_each_backend_gets_the_int8_static_recipe_it_runs(tiny_classifier, tmp_path):
    """ONNX Runtime gets unsigned activations (its fast CPU path), TensorRT symmetric ones; both keep the
    outputs of weighted ops in float."""
    import onnx
    from onnx import numpy_helper

    from edge_electra.build.quantize.static import StaticQuantConfig, quantize_static
    calibration = [example_inputs(4, 16, 100, seed=s) for s in range(3)]
    for backend, zero_point_type in [("onnx-mobile", np.uint8), ("tensorrt", np.int8)]:
        config = StaticQuantConfig(**get_backend(backend).static_quant)
        graph = onnx.load(str(quantize_static(tiny_classifier["onnx"], tmp_path / f"{backend}.onnx", calibration, config))).graph
        zero_points = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        quantizers = [n for n in graph.node if n.op_type == "QuantizeLinear"]
        assert quantizers and {zero_points[n.input[2]].dtype.type for n in quantizers} == {zero_point_type}
        producers = {t: n.op_type for n in graph.node for t in n.output}
        assert not {producers.get(n.input[0]) for n in quantizers} & {"MatMul", "Gemm"}


# ---- OpenVINO ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ov_bundle(tiny_classifier, tmp_path_factory):
    """An OpenVINO fp32 bundle of the tiny_classifier model whose manifest asks for an Intel GPU with the THROUGHPUT
    hint (what intel-igpu bundles held before the hint was dropped)."""
    ov = pytest.importorskip("openvino")
    _, tokenizer = tiny_model()
    root = tmp_path_factory.mktemp("ov")
    ov.save_model(ov.convert_model(str(tiny_classifier["onnx"])), str(root / "model.xml"), compress_to_fp16=False)
    manifest = Manifest("sequence", ["a", "b", "c"], "openvino", "fp32", [], [], {"max_length": 64},
                        runtime={"device": "GPU", "performance_hint": "THROUGHPUT", "cache": False, "threads": 1})
    return write_bundle(root / "bundle", manifest, {"model.xml": root / "model.xml", "model.bin": root / "model.bin"},
                        tokenizer)


@pytest.fixture
def pretend_gpu(monkeypatch):
    """OpenVINO's Core, claiming an Intel GPU is present: it records each compile_model call and compiles
    for the CPU, which is what really runs."""
    import openvino as ov
    calls = []

    class PretendGpu(ov.Core):
        @property
        def available_devices(self):
            return ["CPU", "GPU"]

        def compile_model(self, model, device, config):
            calls.append((device, dict(config)))
            return super().compile_model(model, "CPU", config)

    monkeypatch.setattr(ov, "Core", PretendGpu)
    return calls


def test_openvino_fp32_on_gpu_asks_for_f32_and_one_request_gets_the_latency_hint(ov_bundle, pretend_gpu, tiny_classifier):
    runner = get_backend("openvino").load(Bundle.load(ov_bundle))
    ((device, config),) = pretend_gpu
    assert device == "GPU"
    assert config["INFERENCE_PRECISION_HINT"] == "f32"   # the GPU plugin would run it in f16
    assert config["PERFORMANCE_HINT"] == "LATENCY"       # THROUGHPUT's streams would idle behind one request
    assert runner.requested_device == "GPU" and runner.device == "CPU"   # what OpenVINO says it runs on
    np.testing.assert_allclose(runner.run(tiny_classifier["feeds"])["logits"], tiny_classifier["expected"], atol=1e-4)


def test_openvino_records_the_device_it_actually_runs_on(tiny_classifier, ov_bundle):
    from edge_electra.backends.openvino import OpenVinoRunner
    folder = Path(ov_bundle)
    missing = OpenVinoRunner([Variant("model.xml")], folder, "GPU.1", 1, "fp32", cache=False)
    assert missing.requested_device == "GPU.1" and missing.device == "CPU"
    np.testing.assert_allclose(missing.run(tiny_classifier["feeds"])["logits"], tiny_classifier["expected"], atol=1e-4)
    chosen = OpenVinoRunner([Variant("model.xml")], folder, "AUTO", 1, "fp32", cache=False)
    assert chosen.requested_device == "AUTO" and chosen.device == "CPU"


def test_openvino_outputs_survive_the_next_call(tiny_classifier, ov_bundle):
    # The runner lets OpenVINO share its input and output buffers (no copies); what it returns must still be
    # the caller's own, not a view the next inference overwrites.
    from edge_electra.backends.openvino import OpenVinoRunner
    runner = OpenVinoRunner([Variant("model.xml")], Path(ov_bundle), "CPU", 1, "fp32", cache=False)
    first = runner.run(tiny_classifier["feeds"])["logits"]
    other = {name: (array + 7) % 100 for name, array in tiny_classifier["feeds"].items()}
    assert not np.allclose(runner.run(other)["logits"], tiny_classifier["expected"], atol=1e-4)
    np.testing.assert_allclose(first, tiny_classifier["expected"], atol=1e-4)


def test_the_bench_shows_the_device_a_bundle_ran_on(ov_bundle):
    from edge_electra.tools.bench.harness import BenchConfig, Subject, describe
    from edge_electra.tools.bench.report import table
    subject = Subject("igpu", Path(ov_bundle), Predictor.load(ov_bundle))
    info = describe(subject, BenchConfig(cold_start=False), None)
    assert info["device"] == "CPU"
    system = {"cpu": {"model": "x", "usable_cores": 1, "flags": []}, "os": "linux", "gemm_gflops": 1.0,
              "versions": {}}
    assert "igpu: openvino fp32 on CPU" in table({"results": [], "bundles": [info], "system": system})


def test_openvino_static_int8_calibrates_on_the_recipes_sample_count(tiny_classifier):
    ov = pytest.importorskip("openvino")
    from edge_electra.backends.openvino import quantize_int8

    class Seen(dict):
        touched = False

        def __getitem__(self, name):
            self.touched = True
            return super().__getitem__(name)

    feeds = [Seen(example_inputs(1, 16, 100, seed=s)) for s in range(12)]
    quantize_int8(ov.convert_model(str(tiny_classifier["onnx"])), feeds, samples=5)
    assert sum(f.touched for f in feeds) == 5
