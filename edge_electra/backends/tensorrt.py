"""TensorRT 10, device side: the backend's facts and the runner of a serialized engine (the build side is
tensorrt_build.py, imported by `compile` only).

- model.engine = a small JSON header (TensorRT version, GPU compute capability, precision) + the engine.
  Engines only run on the TensorRT version and GPU architecture that built them, so load checks the
  header first and says what to do on a mismatch.
- The runner keeps the trt.Runtime alive as long as its engine (TensorRT requires it), checks every
  input shape against the engine's optimization profile before copying, stages copies through pinned host
  buffers sized for the largest shapes, and runs on one CUDA stream that it destroys when closed; all
  through cuda-python (no torch, no pycuda).
"""
from __future__ import annotations

import ctypes
import importlib.util
import json
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge_electra.errors import BundleError, ConfigError
from edge_electra.backends import register
from edge_electra.backends.base import Backend, check_feeds

ENGINE = "model.engine"
MAGIC = b"EDGE-ELECTRA-TRT"
NOT_INSTALLED = ("TensorRT is not installed (pip install 'edge-electra[tensorrt]' on a machine with an NVIDIA GPU, "
                 "or use JetPack's TensorRT on Jetson)")


@dataclass
class TensorRTOptions:
    """A profile's [runtime] table for TensorRT (builder settings)."""
    # The builder's workspace memory pool.
    workspace_mb: int = 1024
    # Builder optimization level, 0 (fast builds) to 5 (slow builds, fastest engines).
    optimization_level: int = 3
    # Reuse tactic timings across builds (a per-user cache file per TensorRT version and GPU).
    timing_cache: bool = True

    def __post_init__(self):
        if self.workspace_mb < 1:
            raise ConfigError(f"'workspace_mb' must be at least 1, got {self.workspace_mb}")
        if not 0 <= self.optimization_level <= 5:
            raise ConfigError(f"'optimization_level' must be 0-5, got {self.optimization_level}")


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


def trt_module():
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


def pinned_array(pointer: int, nbytes: int, dtype: np.dtype) -> np.ndarray:
    """A flat numpy view of `nbytes` of page-locked host memory from cudaMallocHost."""
    return np.frombuffer((ctypes.c_byte * nbytes).from_address(int(pointer)), dtype=dtype)


class TensorRTRunner:
    def __init__(self, path: Path, max_batch: int, max_seq: int):
        trt, self._cudart = trt_module(), _cudart()
        self._device_buffers, self._pinned, self._host, self.stream = {}, [], {}, None
        header, blob = read_engine(path)
        capability, name = gpu()
        check_header(header, trt.__version__, capability, path)
        self.device = f"{name} (sm_{capability.replace('.', '')})"
        self.max_shape = (max_batch, max_seq)
        self._logger = trt.Logger(trt.Logger.WARNING)
        # An engine must not outlive the runtime that deserialized it: the runner holds both.
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(blob)
        if self.engine is None:
            raise BundleError(f"TensorRT could not deserialize {path}; rebuild the bundle on this device")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.stream = _cuda(self._cudart.cudaStreamCreate())
        for name in self.input_names:      # the largest shapes size the buffers
            self._set_shape(name, self.max_shape)
        for name in names:
            nbytes = int(np.prod(tuple(self.context.get_tensor_shape(name)))) * dtypes[name].itemsize
            self._device_buffers[name] = _cuda(self._cudart.cudaMalloc(nbytes))
            self._pinned.append(_cuda(self._cudart.cudaMallocHost(nbytes)))
            self._host[name] = pinned_array(self._pinned[-1], nbytes, dtypes[name])
            if not self.context.set_tensor_address(name, int(self._device_buffers[name])):
                raise BundleError(f"TensorRT refused the device buffer of {name!r}")

    def _set_shape(self, name: str, shape: tuple[int, ...]) -> None:
        too_large = any(d > m for d, m in zip(shape, self.max_shape))
        if too_large or not self.context.set_input_shape(name, tuple(shape)):
            raise BundleError(f"TensorRT cannot take input {name!r} of shape {list(shape)}: the engine's profile "
                              f"allows batch up to {self.max_shape[0]} and sequence up to {self.max_shape[1]}; "
                              "run smaller batches or recompile with a larger profile")

    def _staged(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        return self._host[name][:int(np.prod(shape))].reshape(shape)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart = self._cudart
        check_feeds(self.input_names, feeds)
        for name in self.input_names:
            array = np.asarray(feeds[name])
            self._set_shape(name, array.shape)
            staged = self._staged(name, array.shape)
            staged[...] = array
            _cuda(cudart.cudaMemcpyAsync(self._device_buffers[name], staged.ctypes.data, staged.nbytes,
                                         cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))
        if not self.context.execute_async_v3(int(self.stream)):
            raise BundleError("TensorRT failed to run the engine")
        staged = {n: self._staged(n, tuple(self.context.get_tensor_shape(n))) for n in self.output_names}
        for name, out in staged.items():
            _cuda(cudart.cudaMemcpyAsync(out.ctypes.data, self._device_buffers[name], out.nbytes,
                                         cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))
        _cuda(cudart.cudaStreamSynchronize(self.stream))
        # Copies: the pinned buffers are reused by the next call.
        return {n: out.astype(np.float32) for n, out in staged.items()}

    def close(self) -> None:
        """Free the buffers and the stream; release the context and engine before their runtime."""
        cudart = getattr(self, "_cudart", None)
        if cudart is None:
            return
        for pointer in self._device_buffers.values():
            cudart.cudaFree(pointer)
        for pointer in self._pinned:
            cudart.cudaFreeHost(pointer)
        if self.stream is not None:
            cudart.cudaStreamDestroy(self.stream)
        self._device_buffers, self._pinned, self._host, self.stream = {}, [], {}, None
        self.context = self.engine = None
        self._runtime = None

    def __del__(self):
        self.close()


@register("tensorrt")
class TensorRTBackend(Backend):
    precisions = ("fp32", "fp16", "bf16", "int8-static")
    options = TensorRTOptions
    library = "tensorrt"
    extra = "tensorrt"
    requires = ("tensorrt", "cuda")
    # TensorRT's explicit quantization takes symmetric INT8 Q/DQ (zero points 0): the Q/DQ recipe's default.
    static_quant = {}

    def available(self) -> tuple[bool, str]:
        if importlib.util.find_spec("tensorrt") is None:
            return False, NOT_INSTALLED
        if importlib.util.find_spec("cuda") is None:
            return False, "cuda-python is not installed (pip install 'edge-electra[tensorrt]')"
        return True, ""

    def compile(self, request, workdir: Path):
        from edge_electra.backends.tensorrt_build import compile_engine
        return compile_engine(request, workdir)

    def load(self, bundle, **_) -> TensorRTRunner:
        runtime = bundle.manifest.runtime
        return TensorRTRunner(bundle.file(ENGINE), int(runtime.get("max_batch", 1)),
                              int(runtime.get("max_seq", bundle.manifest.tokenizer.get("max_length", 128))))

    def runs_on(self, options) -> str:
        return "CUDA GPU"

    def devices(self) -> list[str]:
        capability, name = gpu()
        return [f"{name} (sm_{capability.replace('.', '')})"]
