"""TensorRT without TensorRT: the engine header, builder settings, the Q/DQ model, and the calls the builder
and the runner make, against test doubles of the `tensorrt` and cuda-python modules that record calls and
build or run nothing. Engine builds and runs are tested only where TensorRT is installed."""
import ctypes
import dataclasses
import gc
import itertools
import sys
import types
import weakref
from enum import IntEnum

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edge_electra.backends import tensorrt as trt_backend  # noqa: E402
from edge_electra.backends import tensorrt_build as trt_build  # noqa: E402
from edge_electra.build.export import example_inputs  # noqa: E402
from edge_electra.build.targets import load_target  # noqa: E402
from edge_electra.errors import BundleError, ConfigError  # noqa: E402
from edge_electra.runtime.io_spec import INPUTS  # noqa: E402

NAMES = list(INPUTS)
VERSION = "10.9.0"




# ---- test doubles ------------------------------------------------------------------------------------
class FakeTensorRT(types.ModuleType):
    """Stands in for `tensorrt`: records what the backend asks of it; builds and runs nothing."""

    class NetworkDefinitionCreationFlag(IntEnum):
        EXPLICIT_BATCH = 0
        STRONGLY_TYPED = 1

    class BuilderFlag:
        FP16, INT8, BF16 = "FP16", "INT8", "BF16"

    class MemoryPoolType:
        WORKSPACE = "WORKSPACE"

    class TensorIOMode:
        INPUT, OUTPUT = "INPUT", "OUTPUT"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    def __init__(self, accept_timing_cache=lambda content: True, accept_shape=lambda name, shape: True):
        super().__init__("tensorrt")
        self.__version__ = VERSION
        self.calls = []
        self.accept_timing_cache, self.accept_shape = accept_timing_cache, accept_shape
        self.runtimes = []
        fake = self

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                fake.calls.append(("create_network", flags))
                return "network"

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                fake.calls.append(("build", network))
                return b"plan from the fake builder"

        class Config:
            def set_memory_pool_limit(self, pool, size):
                fake.calls.append(("workspace", size))

            def set_flag(self, flag):
                fake.calls.append(("set_flag", flag))

            def add_optimization_profile(self, profile):
                return 0

            def create_timing_cache(self, content):
                return types.SimpleNamespace(content=bytes(content), serialize=lambda: b"timings")

            def set_timing_cache(self, cache, ignore_mismatch):
                fake.calls.append(("set_timing_cache", cache.content))
                return fake.accept_timing_cache(cache.content)

        class Profile:
            def set_shape(self, name, low, opt, high):
                fake.calls.append(("profile", name, low, opt, high))

        class OnnxParser:
            num_errors = 0

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                return True

        class Runtime:
            def __init__(self, logger):
                fake.runtimes.append(weakref.ref(self))

            def deserialize_cuda_engine(self, blob):
                return Engine(self)

        class Engine:
            num_io_tensors = 4

            def __init__(self, runtime):
                self._runtime = weakref.ref(runtime)      # an engine does not keep its runtime alive

            def get_tensor_name(self, i):
                return [*NAMES, "logits"][i]

            def get_tensor_mode(self, name):
                return fake.TensorIOMode.INPUT if name in NAMES else fake.TensorIOMode.OUTPUT

            def get_tensor_dtype(self, name):
                return "int64" if name in NAMES else "float32"

            def create_execution_context(self):
                return Context()

            def __del__(self):
                fake.calls.append(("engine released", "runtime alive" if self._runtime() else "runtime gone"))

        class Context:
            def __init__(self):
                self.shapes = {}

            def set_input_shape(self, name, shape):
                fake.calls.append(("set_input_shape", name, tuple(shape)))
                if not fake.accept_shape(name, tuple(shape)):
                    return False
                self.shapes[name] = tuple(shape)
                return True

            def get_tensor_shape(self, name):
                return self.shapes[name] if name in NAMES else (self.shapes[NAMES[0]][0], 3)

            def set_tensor_address(self, name, address):
                return True

            def execute_async_v3(self, stream):
                fake.calls.append(("execute", stream))
                return True

        self.Builder, self.OnnxParser, self.Runtime = Builder, OnnxParser, Runtime

    @staticmethod
    def nptype(dtype):
        return {"int64": np.int64, "float32": np.float32}[dtype]


class FakeCudart(types.ModuleType):
    """Stands in for cuda-python's runtime: device pointers are numbers, pinned host memory is real memory
    (the runner writes into it), and every call is recorded."""

    class cudaMemcpyKind:
        cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost = "HtoD", "DtoH"

    def __init__(self, capability=(8, 7)):
        super().__init__("cuda.bindings.runtime")
        self.capability = capability
        self.calls, self.pinned = [], {}
        self._pointers = itertools.count(0x1000, 0x1000)

    def cudaGetDeviceProperties(self, device):
        major, minor = self.capability
        return 0, types.SimpleNamespace(major=major, minor=minor, name=b"Fake GPU\x00")

    def cudaStreamCreate(self):
        return 0, 42

    def cudaStreamDestroy(self, stream):
        self.calls.append(("cudaStreamDestroy", stream))
        return (0,)

    def cudaMalloc(self, nbytes):
        return 0, next(self._pointers)

    def cudaFree(self, pointer):
        self.calls.append(("cudaFree", pointer))
        return (0,)

    def cudaMallocHost(self, nbytes):
        memory = (ctypes.c_byte * nbytes)()
        self.pinned[ctypes.addressof(memory)] = memory
        return 0, ctypes.addressof(memory)

    def cudaFreeHost(self, pointer):
        self.calls.append(("cudaFreeHost", pointer))
        return (0,)

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        self.calls.append(("cudaMemcpyAsync", dst, src, nbytes, kind, stream))
        return (0,)

    def cudaStreamSynchronize(self, stream):
        return (0,)

    def is_pinned(self, pointer, nbytes) -> bool:
        return any(start <= pointer and pointer + nbytes <= start + len(m) for start, m in self.pinned.items())


@pytest.fixture
def fake_trt(monkeypatch):
    def install(**behaviour):
        fake = FakeTensorRT(**behaviour)
        monkeypatch.setitem(sys.modules, "tensorrt", fake)
        return fake
    return install


@pytest.fixture
def fake_cuda(monkeypatch):
    def install(capability=(8, 7)):
        cudart = FakeCudart(capability)
        cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
        cuda.bindings, bindings.runtime = bindings, cudart
        for name, module in (("cuda", cuda), ("cuda.bindings", bindings), ("cuda.bindings.runtime", cudart)):
            monkeypatch.setitem(sys.modules, name, module)
        return cudart
    return install


def engine_file(tmp_path, capability="8.7"):
    return trt_backend.write_engine(tmp_path / "model.engine",
                                    trt_backend.EngineHeader(VERSION, capability, "fp16", "Fake GPU"), b"plan")


# ---- the engine file and the builder's settings ------------------------------------------------------
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
    shapes = trt_build.optimization_shapes(target, NAMES)
    assert shapes["input_ids"] == ((1, 8), (1, 32), (8, 128))
    settings = trt_build.builder_settings(target, "fp16", NAMES, "8.7")
    assert settings["flags"] == ["FP16"] and not settings["strongly_typed"]
    assert settings["workspace_bytes"] == 1024 << 20 and settings["optimization_level"] == 3
    assert settings["timing_cache"] and settings["profile"]["token_type_ids"] == [[1, 8], [1, 32], [8, 128]]
    assert trt_build.builder_settings(target, "fp32", NAMES, "8.7")["flags"] == []
    with pytest.raises(ConfigError):
        trt_build.builder_settings(target, "int8-dynamic", NAMES, "8.7")
    wide = dataclasses.replace(target, runtime={"workspace_mb": 64})
    assert trt_build.builder_settings(wide, "fp32", NAMES, "8.7")["workspace_bytes"] == 64 << 20


def test_int8_is_a_strongly_typed_network_without_precision_flags():
    settings = trt_build.builder_settings(load_target("jetson-orin"), "int8-static", NAMES, "8.7")
    assert settings["strongly_typed"] and settings["flags"] == []


def test_bf16_is_built_only_on_sm80_and_later():
    gpu = load_target("x86-nvidia-gpu")
    assert "bf16" in gpu.precisions
    for ampere_or_later in ("8.0", "8.6", "9.0", "12.0"):
        assert trt_build.builder_settings(gpu, "bf16", NAMES, ampere_or_later)["flags"] == ["BF16"]
    with pytest.raises(ConfigError, match="bf16 needs a GPU of compute capability 8.0 or later .*this GPU is 7.5"):
        trt_build.builder_settings(gpu, "bf16", NAMES, "7.5")      # Turing
    assert trt_build.builder_settings(gpu, "fp16", NAMES, "7.5")["flags"] == ["FP16"]


# ---- the builder's calls -------------------------------------------------------------------------------
def test_build_creates_strongly_typed_networks_for_int8_and_flags_for_fp16(fake_trt, tiny_classifier, tmp_path):
    fake = fake_trt()
    target = load_target("jetson-orin")
    trt_build.build_engine(tiny_classifier["onnx"], trt_build.builder_settings(target, "int8-static", NAMES, "8.7"), None)
    assert ("create_network", 1 << 1) in fake.calls
    assert not [c for c in fake.calls if c[0] == "set_flag"]
    fake.calls.clear()
    trt_build.build_engine(tiny_classifier["onnx"], trt_build.builder_settings(target, "fp16", NAMES, "8.7"), None)
    assert ("create_network", 0) in fake.calls and ("set_flag", "FP16") in fake.calls
    assert ("profile", "input_ids", [1, 8], [1, 32], [8, 128]) in fake.calls


def test_a_refused_timing_cache_is_replaced_and_an_empty_one_refused_is_an_error(fake_trt, tiny_classifier, tmp_path):
    settings = trt_build.builder_settings(load_target("jetson-orin"), "fp16", NAMES, "8.7")
    saved = tmp_path / "timing.cache"
    saved.write_bytes(b"timings from another TensorRT")
    fake = fake_trt(accept_timing_cache=lambda content: content == b"")
    trt_build.build_engine(tiny_classifier["onnx"], settings, saved)
    assert [c[1] for c in fake.calls if c[0] == "set_timing_cache"] == [b"timings from another TensorRT", b""]
    assert saved.read_bytes() == b"timings"      # the new cache replaces the refused one
    fake_trt(accept_timing_cache=lambda content: False)
    with pytest.raises(ConfigError, match="refused an empty timing cache"):
        trt_build.build_engine(tiny_classifier["onnx"], settings, saved)


def test_compile_refuses_bf16_on_a_turing_gpu_before_building(fake_trt, fake_cuda, tiny_classifier, tmp_path):
    fake, _ = fake_trt(), fake_cuda(capability=(7, 5))
    request = types.SimpleNamespace(target=load_target("x86-nvidia-gpu"), precision="bf16",
                                    reference_onnx=tiny_classifier["onnx"])
    with pytest.raises(ConfigError, match="this GPU is 7.5"):
        trt_build.compile_engine(request, tmp_path)
    assert not [c for c in fake.calls if c[0] == "build"]


# ---- the runner's calls --------------------------------------------------------------------------------
def test_the_runner_keeps_the_runtime_alive_as_long_as_its_engine(fake_trt, fake_cuda, tmp_path):
    fake, _ = fake_trt(), fake_cuda()
    runner = trt_backend.TensorRTRunner(engine_file(tmp_path), 8, 128)
    gc.collect()
    (runtime,) = fake.runtimes
    assert runtime() is not None
    runner.close()
    gc.collect()
    assert ("engine released", "runtime alive") in fake.calls and runtime() is None


def test_every_input_shape_the_engine_refuses_is_an_error(fake_trt, fake_cuda, tmp_path):
    fake_cuda()
    fake_trt(accept_shape=lambda name, shape: False)
    with pytest.raises(BundleError, match="cannot take input 'input_ids' of shape \\[8, 128\\]"):
        trt_backend.TensorRTRunner(engine_file(tmp_path), 8, 128)
    fake = fake_trt(accept_shape=lambda name, shape: shape[1] <= 64)
    runner = trt_backend.TensorRTRunner(engine_file(tmp_path), 8, 64)
    ids = np.ones((2, 100), np.int64)
    with pytest.raises(BundleError, match="sequence up to 64"):
        runner.run({n: ids for n in NAMES})
    with pytest.raises(BundleError, match="batch up to 8"):    # the gate's batch of 16 on jetson-orin
        runner.run({n: np.ones((16, 32), np.int64) for n in NAMES})
    assert not [c for c in fake.calls if c[0] == "execute"]


def test_copies_go_through_pinned_host_buffers_and_close_frees_them_and_the_stream(fake_trt, fake_cuda, tmp_path):
    fake_trt()
    cudart = fake_cuda()
    runner = trt_backend.TensorRTRunner(engine_file(tmp_path), 8, 64)
    runner.run({n: np.ones((2, 16), np.int64) for n in NAMES})
    copies = [c for c in cudart.calls if c[0] == "cudaMemcpyAsync"]
    assert {c[4] for c in copies} == {"HtoD", "DtoH"} and all(c[5] == 42 for c in copies)
    assert all(cudart.is_pinned(c[2] if c[4] == "HtoD" else c[1], c[3]) for c in copies)
    pinned = set(cudart.pinned)
    runner.close()
    assert ("cudaStreamDestroy", 42) in cudart.calls
    assert {c[1] for c in cudart.calls if c[0] == "cudaFreeHost"} == pinned


# ---- the Q/DQ model TensorRT builds INT8 from -------------------------------------------------------------
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
    assert trt_build.check_qdq(qdq_model(tmp_path / "ok.onnx", np.int8(0))) == 1
    with pytest.raises(ConfigError, match="non-zero or non-int8 zero point"):
        trt_build.check_qdq(qdq_model(tmp_path / "u8.onnx", np.uint8(128)))
    with pytest.raises(ConfigError, match="non-zero or non-int8 zero point"):
        trt_build.check_qdq(qdq_model(tmp_path / "shifted.onnx", np.int8(3)))
    with pytest.raises(ConfigError, match="INT32 \\(quantized bias\\)"):
        trt_build.check_qdq(qdq_model(tmp_path / "bias.onnx", np.int8(0), np.int32(0)))


def test_static_qdq_model_runs_in_ort_close_to_fp32(tiny_classifier, tmp_path):
    import onnx

    from edge_electra.build.gate import session
    from edge_electra.build.quantize.static import StaticQuantConfig, quantize_static
    calibration = [example_inputs(4, 16, 100, seed=s) for s in range(3)]
    qdq = quantize_static(tiny_classifier["onnx"], tmp_path / "qdq.onnx", calibration, StaticQuantConfig())
    ops = {n.op_type for n in onnx.load(str(qdq)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    logits = session(qdq).run(None, tiny_classifier["feeds"])[0]
    assert (logits.argmax(-1) == tiny_classifier["expected"].argmax(-1)).all()
    assert np.abs(logits - tiny_classifier["expected"]).max() < 0.1
    # What the TensorRT backend builds from: the same model with its INT32 biases back in float.
    for_trt = trt_build.float_biases(qdq, tmp_path / "qdq.trt.onnx")
    assert trt_build.check_qdq(for_trt) > 0
    np.testing.assert_allclose(session(for_trt).run(None, tiny_classifier["feeds"])[0], logits, atol=1e-5)
    with pytest.raises(ConfigError, match="no QuantizeLinear"):
        trt_build.check_qdq(tiny_classifier["onnx"])


# ---- with TensorRT itself ------------------------------------------------------------------------------------
def real_tensorrt():
    pytest.importorskip("tensorrt", reason="TensorRT is not installed on this machine (needs an NVIDIA GPU)")
    pytest.importorskip("cuda", reason="cuda-python is not installed on this machine")


def test_tensorrt_engine_build_and_run(tiny_classifier, tmp_path):
    real_tensorrt()
    import tensorrt as trt
    capability, name = trt_backend.gpu()
    settings = trt_build.builder_settings(load_target("x86-nvidia-gpu"), "fp32", NAMES, capability)
    engine = trt_build.build_engine(tiny_classifier["onnx"], settings, tmp_path / "timing.cache")
    path = trt_backend.write_engine(tmp_path / "model.engine",
                                    trt_backend.EngineHeader(trt.__version__, capability, "fp32", name), engine)
    runner = trt_backend.TensorRTRunner(path, 8, 64)
    np.testing.assert_allclose(runner.run(tiny_classifier["feeds"])["logits"], tiny_classifier["expected"], atol=1e-3)
    assert (tmp_path / "timing.cache").stat().st_size > 0
    runner.close()


def test_polygraphy_finds_the_engine_matches_onnxruntime(tiny_classifier, tmp_path):
    real_tensorrt()
    pytest.importorskip("polygraphy", reason="Polygraphy is not installed (pip install 'edge-electra[tensorrt]')")
    capability, _ = trt_backend.gpu()
    settings = trt_build.builder_settings(load_target("x86-nvidia-gpu"), "fp32", NAMES, capability)
    engine = trt_build.build_engine(tiny_classifier["onnx"], settings, None)
    feeds = [example_inputs(2, 16, 100, seed=s) for s in range(3)]
    report = trt_build.compare_with_onnxruntime(tiny_classifier["onnx"], engine, feeds, trt_build.COMPARE_TOLERANCE["fp32"])
    assert report["passed"] and report["batches"] == 3
