"""TensorRT 10: a serialized engine built from our ONNX by trt.OnnxParser, for one GPU and one TensorRT.

- One optimization profile: min/opt/max batch and sequence from the target profile.
- FP16/BF16 by builder flags over the FP32 graph; INT8 only from our explicit Q/DQ model (symmetric,
  zero points 0, biases back in float), never TensorRT's implicit calibrator.
- A persistent timing cache speeds up rebuilds.
- model.engine = a small JSON header (TensorRT version, GPU compute capability, precision) + the
  engine. Engines only run on the TensorRT version and GPU architecture that built them, so load
  checks the header first and says what to do on a mismatch.
- The runner pre-allocates device buffers for the largest shapes and runs on one CUDA stream
  through cuda-python (no torch, no pycuda).
"""
from __future__ import annotations

import importlib.util
import json
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge_electra.errors import BundleError, ConfigError
from edge_electra.backends import register
from edge_electra.backends.base import Backend, CompiledModel, check_feeds, user_cache_dir

ENGINE = "model.engine"
MAGIC = b"EDGE-ELECTRA-TRT"
NOT_INSTALLED = ("TensorRT is not installed (pip install 'edge-electra[tensorrt]' on a machine with an NVIDIA GPU, "
                 "or use JetPack's TensorRT on Jetson)")
PRECISION_FLAGS = {"fp32": [], "fp16": ["FP16"], "bf16": ["BF16"],
                   # Q/DQ layers run in INT8; the float ops between them may use FP16.
                   "int8-static": ["INT8", "FP16"]}


@dataclass
class EngineHeader:
    tensorrt: str
    compute_capability: str     # "8.7" for Jetson Orin, "9.0" for H100
    precision: str
    gpu: str = ""


def write_engine(path: Path, header: EngineHeader, engine: bytes) -> Path:
    meta = json.dumps(asdict(header)).encode()
    path.write_bytes(MAGIC + struct.pack("<I", len(meta)) + meta + engine)
    return path


def read_engine(path: Path) -> tuple[EngineHeader, memoryview]:
    data = memoryview(path.read_bytes())
    start = len(MAGIC) + 4
    if bytes(data[:len(MAGIC)]) != MAGIC or len(data) < start:
        raise BundleError(f"{path} is not an edge-electra TensorRT engine (no header); rebuild the bundle")
    (size,) = struct.unpack("<I", data[len(MAGIC):start])
    try:
        header = EngineHeader(**json.loads(bytes(data[start:start + size])))
    except (ValueError, TypeError) as e:
        raise BundleError(f"{path} has a malformed engine header ({e}); rebuild the bundle") from e
    return header, data[start + size:]


def check_header(header: EngineHeader, tensorrt_version: str, compute_capability: str, path: Path) -> None:
    if header.tensorrt != tensorrt_version:
        raise BundleError(f"{path} was built with TensorRT {header.tensorrt} but this machine has TensorRT "
                          f"{tensorrt_version}; engines only load in the version that built them: install "
                          f"tensorrt=={header.tensorrt} or recompile the bundle here")
    if header.compute_capability != compute_capability:
        raise BundleError(f"{path} was built for GPU compute capability {header.compute_capability} "
                          f"({header.gpu or 'unknown GPU'}) but this GPU is {compute_capability}; recompile the "
                          "bundle on this device (or one with the same GPU architecture)")


def optimization_shapes(target, input_names: list[str]) -> dict[str, tuple[tuple[int, int], ...]]:
    """Each input's (min, opt, max) [batch, seq] for the builder's optimization profile."""
    b, s = target.batch, target.seq
    return {name: ((b.min, s.min), (b.opt, s.opt), (b.max, s.max)) for name in input_names}


def builder_settings(target, precision: str, input_names: list[str]) -> dict:
    """Every builder decision as plain data; `_configure` turns it into TensorRT calls."""
    if precision not in PRECISION_FLAGS:
        raise ConfigError(f"TensorRT builds {list(PRECISION_FLAGS)}, not {precision!r}")
    return {"flags": PRECISION_FLAGS[precision],
            "workspace_bytes": int(target.runtime.get("workspace_mb", 1024)) << 20,
            "optimization_level": int(target.runtime.get("optimization_level", 3)),
            "timing_cache": bool(target.runtime.get("timing_cache", True)),
            "profile": {n: [list(d) for d in dims] for n, dims in optimization_shapes(target, input_names).items()}}


def check_qdq(onnx_path: Path) -> int:
    """TensorRT's explicit quantization takes symmetric INT8 Q/DQ: every zero point an int8 zero, and no
    INT32-quantized biases (its DequantizeLinear reads INT8, not INT32; biases stay float).

    Returns the number of QuantizeLinear nodes.
    """
    import onnx
    from onnx import numpy_helper
    graph = onnx.load(str(onnx_path)).graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    constants.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node
                      if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    quantize = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    if not quantize:
        raise ConfigError(f"{onnx_path} has no QuantizeLinear nodes; INT8 for TensorRT needs an explicit Q/DQ model")
    for node in quantize + [n for n in graph.node if n.op_type == "DequantizeLinear"]:
        if len(node.input) < 3 or not node.input[2]:
            continue   # no zero point: uint8 by the ONNX default, which only QuantizeLinear can imply
        zero = constants.get(node.input[2])
        if zero is not None and zero.dtype == np.int32:
            raise ConfigError(f"{onnx_path}: {node.op_type} {node.name!r} dequantizes an INT32 (quantized bias); "
                              "TensorRT reads INT8 Q/DQ only: quantize with biases left in float")
        if zero is None or zero.dtype != np.int8 or np.any(zero != 0):
            raise ConfigError(f"{onnx_path}: {node.op_type} {node.name!r} has a non-zero or non-int8 zero point; "
                              "TensorRT needs symmetric INT8 Q/DQ (quantize with symmetric activations)")
    return len(quantize)


def float_biases(src: Path, dest: Path) -> Path:
    """Replace every DequantizeLinear of an INT32 constant (ORT's quantized biases) by its float value."""
    import onnx
    from onnx import numpy_helper
    model = onnx.load(str(src))
    graph = model.graph
    constants = {t.name: t for t in graph.initializer}
    for node in [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in constants]:
        values = numpy_helper.to_array(constants[node.input[0]])
        if values.dtype != np.int32:
            continue
        scale, zero = (numpy_helper.to_array(constants[name]) if name in constants else 0
                       for name in (node.input[1], node.input[2] if len(node.input) > 2 else ""))
        bias = ((values.astype(np.int64) - zero) * scale).astype(np.float32)
        graph.initializer.append(numpy_helper.from_array(bias, node.output[0]))
        graph.node.remove(node)
    used = {name for n in graph.node for name in n.input}
    for init in [t for t in graph.initializer if t.name not in used and t.name not in {o.name for o in graph.output}]:
        graph.initializer.remove(init)
    onnx.save(model, str(dest))
    return dest


def _trt():
    try:
        import tensorrt
    except ImportError as e:
        raise BundleError(NOT_INSTALLED) from e
    return tensorrt


def _cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError as e:
            raise BundleError("the TensorRT runner needs cuda-python: pip install 'edge-electra[tensorrt]'") from e
    return cudart


def _cuda(result):
    """Unwrap a cuda-python call's (error, value...) tuple, raising on any error."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if int(error) != 0:
        raise BundleError(f"CUDA call failed: {error}")
    return values[0] if len(values) == 1 else values


def gpu() -> tuple[str, str]:
    """(compute capability "major.minor", name) of CUDA device 0."""
    props = _cuda(_cudart().cudaGetDeviceProperties(0))
    name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else str(props.name)
    return f"{props.major}.{props.minor}", name


def _configure(trt, builder, network, settings: dict, timing_cache: bytes):
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings["workspace_bytes"])
    config.builder_optimization_level = settings["optimization_level"]
    for flag in settings["flags"]:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in settings["profile"].items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    cache = None
    if settings["timing_cache"]:
        cache = config.create_timing_cache(timing_cache)
        config.set_timing_cache(cache, ignore_mismatch=False)
    return config, cache


def build_engine(onnx_path: Path, settings: dict, timing_cache_path: Path | None) -> bytes:
    trt = _trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)   # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ConfigError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    cached = timing_cache_path.read_bytes() if timing_cache_path and timing_cache_path.is_file() else b""
    config, cache = _configure(trt, builder, network, settings, cached)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise ConfigError("TensorRT failed to build the engine (see its log above); try a larger workspace_mb "
                          "or another precision")
    if cache is not None and timing_cache_path is not None:
        timing_cache_path.parent.mkdir(parents=True, exist_ok=True)
        timing_cache_path.write_bytes(memoryview(cache.serialize()))
    return bytes(memoryview(engine))


class TensorRTRunner:
    def __init__(self, path: Path, max_batch: int, max_seq: int):
        trt, cudart = _trt(), _cudart()
        header, blob = read_engine(path)
        check_header(header, trt.__version__, gpu()[0], path)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self._logger).deserialize_cuda_engine(blob)
        if self.engine is None:
            raise BundleError(f"TensorRT could not deserialize {path}; rebuild the bundle on this device")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self._dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self._cudart = cudart
        self.stream = _cuda(cudart.cudaStreamCreate())
        for name in self.input_names:      # the largest shapes size the buffers
            self.context.set_input_shape(name, (max_batch, max_seq))
        self._buffers = {}
        for name in names:
            shape = self.context.get_tensor_shape(name)
            size = int(np.prod(shape)) * self._dtypes[name].itemsize
            self._buffers[name] = _cuda(cudart.cudaMalloc(size))
            self.context.set_tensor_address(name, int(self._buffers[name]))

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart = self._cudart
        check_feeds(self.input_names, feeds)
        host = {n: np.ascontiguousarray(feeds[n], dtype=self._dtypes[n]) for n in self.input_names}
        for name, array in host.items():
            self.context.set_input_shape(name, array.shape)
            _cuda(cudart.cudaMemcpyAsync(self._buffers[name], array.ctypes.data, array.nbytes,
                                         cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))
        if not self.context.execute_async_v3(int(self.stream)):
            raise BundleError("TensorRT failed to run the engine")
        outputs = {}
        for name in self.output_names:
            outputs[name] = np.empty(tuple(self.context.get_tensor_shape(name)), dtype=self._dtypes[name])
            _cuda(cudart.cudaMemcpyAsync(outputs[name].ctypes.data, self._buffers[name], outputs[name].nbytes,
                                         cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))
        _cuda(cudart.cudaStreamSynchronize(self.stream))
        return {n: o.astype(np.float32, copy=False) for n, o in outputs.items()}

    def __del__(self):
        for pointer in getattr(self, "_buffers", {}).values():
            self._cudart.cudaFree(pointer)


@register("tensorrt")
class TensorRTBackend(Backend):
    extra = "tensorrt"

    def available(self) -> tuple[bool, str]:
        if importlib.util.find_spec("tensorrt") is None:
            return False, NOT_INSTALLED
        if importlib.util.find_spec("cuda") is None:
            return False, "cuda-python is not installed (pip install 'edge-electra[tensorrt]')"
        return True, ""

    def compile(self, request, workdir: Path) -> CompiledModel:
        trt = _trt()
        target, precision = request.target, request.precision
        onnx_path = request.reference_onnx
        if precision == "int8-static":
            onnx_path = float_biases(request.onnx_for("int8-static", workdir), workdir / "model.qdq.trt.onnx")
            check_qdq(onnx_path)
        import onnx
        names = [i.name for i in onnx.load(str(onnx_path), load_external_data=False).graph.input]
        settings = builder_settings(target, precision, names)
        capability, name = gpu()
        timing_cache = user_cache_dir("tensorrt") / f"timing-trt{trt.__version__}-sm{capability}.cache"
        engine = build_engine(onnx_path, settings, timing_cache if settings["timing_cache"] else None)
        header = EngineHeader(trt.__version__, capability, precision, name)
        write_engine(workdir / ENGINE, header, engine)
        runtime = {"max_batch": target.batch.max, "max_seq": target.seq.max, "tensorrt": trt.__version__,
                   "compute_capability": capability}
        return CompiledModel(files={ENGINE: workdir / ENGINE}, precision=precision, runtime=runtime,
                             report={"builder": settings, "engine": asdict(header)}, onnx=onnx_path)

    def load(self, bundle, **_) -> TensorRTRunner:
        runtime = bundle.manifest.runtime
        return TensorRTRunner(bundle.file(ENGINE), int(runtime.get("max_batch", 1)),
                              int(runtime.get("max_seq", bundle.manifest.tokenizer.get("max_length", 128))))
