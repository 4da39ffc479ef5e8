"""TensorRT 10, build side: a serialized engine built from our ONNX by trt.OnnxParser, for one GPU and one
TensorRT version (the runner is in tensorrt.py).

- One optimization profile: min/opt/max batch and sequence from the target profile.
- FP16/BF16 by builder flags over the FP32 graph; BF16 only on GPUs that have it (sm_80, Ampere, and later),
  decided from the build GPU's compute capability.
- INT8 only from our explicit Q/DQ model (symmetric, zero points 0, biases back in float), built as a
  strongly typed network: TensorRT takes every tensor's type from the graph (precision flags on weakly
  typed networks are deprecated since TensorRT 10.12), so the float ops between Q/DQ pairs run in FP32.
  Never TensorRT's implicit calibrator.
- A persistent timing cache speeds up rebuilds.
- Where Polygraphy is installed, the engine is compared with ONNX Runtime on calibration batches by
  Polygraphy's comparator, and the result goes into report.json.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np

from edge_electra.errors import ConfigError
from edge_electra.backends.base import CompiledModel, user_cache_dir
from edge_electra.backends.tensorrt import ENGINE, EngineHeader, gpu, trt_module, write_engine

log = logging.getLogger(__name__)
PRECISION_FLAGS = {"fp32": [], "fp16": ["FP16"], "bf16": ["BF16"], "int8-static": []}
STRONGLY_TYPED = {"int8-static"}
# The oldest GPU architecture (compute capability) each precision needs.
MIN_CAPABILITY = {"bf16": (8, 0)}
# Polygraphy's comparison tolerance (absolute and relative) on logits, per precision.
COMPARE_TOLERANCE = {"fp32": 1e-3, "fp16": 5e-2, "bf16": 1e-1, "int8-static": 2e-1}


def optimization_shapes(target, input_names: list[str]) -> dict[str, tuple[tuple[int, int], ...]]:
    """Each input's (min, opt, max) [batch, seq] for the builder's optimization profile."""
    b, s = target.batch, target.seq
    return {name: ((b.min, s.min), (b.opt, s.opt), (b.max, s.max)) for name in input_names}


def capability(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor or 0)


def builder_settings(target, precision: str, input_names: list[str], compute_capability: str) -> dict:
    """Every builder decision as plain data, for the GPU it builds on; `_configure` turns it into TensorRT calls."""
    if precision not in PRECISION_FLAGS:
        raise ConfigError(f"TensorRT builds {list(PRECISION_FLAGS)}, not {precision!r}")
    needed = MIN_CAPABILITY.get(precision)
    if needed and capability(compute_capability) < needed:
        raise ConfigError(f"{precision} needs a GPU of compute capability {needed[0]}.{needed[1]} or later "
                          f"(sm_{needed[0]}{needed[1]}); this GPU is {compute_capability}")
    options = target.options
    return {"strongly_typed": precision in STRONGLY_TYPED, "flags": PRECISION_FLAGS[precision],
            "workspace_bytes": options.workspace_mb << 20, "optimization_level": options.optimization_level,
            "timing_cache": options.timing_cache,
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


def _attach_timing_cache(config, cached: bytes):
    """A timing cache from `cached` (or an empty one if TensorRT refuses that), attached to `config`."""
    for content in ([cached] if cached else []) + [b""]:
        cache = config.create_timing_cache(content)
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            return cache
        if content:
            log.warning("TensorRT refused the saved timing cache (another TensorRT or GPU?); starting a new one")
    raise ConfigError("TensorRT refused an empty timing cache; set timing_cache = false in the target profile")


def _configure(trt, builder, settings: dict, timing_cache: bytes):
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings["workspace_bytes"])
    config.builder_optimization_level = settings["optimization_level"]
    for flag in settings["flags"]:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in settings["profile"].items():
        profile.set_shape(name, low, opt, high)
    if config.add_optimization_profile(profile) < 0:
        raise ConfigError(f"TensorRT refused the optimization profile {settings['profile']}")
    cache = _attach_timing_cache(config, timing_cache) if settings["timing_cache"] else None
    return config, cache


def build_engine(onnx_path: Path, settings: dict, timing_cache_path: Path | None) -> bytes:
    trt = trt_module()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Explicit batch is the only mode in TensorRT 10; strong typing is the one flag left.
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if settings["strongly_typed"] else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ConfigError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    cached = timing_cache_path.read_bytes() if timing_cache_path and timing_cache_path.is_file() else b""
    config, cache = _configure(trt, builder, settings, cached)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise ConfigError("TensorRT failed to build the engine (see its log above); try a larger workspace_mb "
                          "or another precision")
    if cache is not None and timing_cache_path is not None:
        timing_cache_path.parent.mkdir(parents=True, exist_ok=True)
        timing_cache_path.write_bytes(memoryview(cache.serialize()))
    return bytes(memoryview(engine))


def compare_with_onnxruntime(onnx_path: Path, engine: bytes, feeds: list[dict[str, np.ndarray]],
                             tolerance: float) -> dict:
    """Polygraphy's comparison of the engine with ONNX Runtime (CPU) on `feeds`."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner
    from polygraphy.comparator import Comparator, CompareFunc
    runners = [TrtRunner(EngineFromBytes(engine)),
               OnnxrtRunner(SessionFromOnnx(str(onnx_path), providers=["cpu"]))]
    with contextlib.redirect_stdout(io.StringIO()) as said:   # Polygraphy reports on stdout
        results = Comparator.run(runners, data_loader=feeds)
        passed = Comparator.compare_accuracy(results, compare_func=CompareFunc.simple(atol=tolerance, rtol=tolerance))
    log.debug("%s", said.getvalue())
    return {"tool": "polygraphy", "reference": "onnxruntime CPU", "batches": len(feeds), "atol": tolerance,
            "rtol": tolerance, "passed": bool(passed)}


def compile_engine(request, workdir: Path) -> CompiledModel:
    import onnx
    trt = trt_module()
    target, precision = request.target, request.precision
    compute_capability, gpu_name = gpu()
    names = [i.name for i in onnx.load(str(request.reference_onnx), load_external_data=False).graph.input]
    settings = builder_settings(target, precision, names, compute_capability)
    onnx_path = request.reference_onnx
    if precision == "int8-static":
        onnx_path = float_biases(request.onnx_for("int8-static", workdir), workdir / "model.qdq.trt.onnx")
        check_qdq(onnx_path)
    timing_cache = user_cache_dir("tensorrt") / f"timing-trt{trt.__version__}-sm{compute_capability}.cache"
    engine = build_engine(onnx_path, settings, timing_cache if settings["timing_cache"] else None)
    header = EngineHeader(trt.__version__, compute_capability, precision, gpu_name)
    write_engine(workdir / ENGINE, header, engine)
    report = {"builder": settings, "engine": asdict(header)}
    if importlib.util.find_spec("polygraphy") is not None:
        feeds = request.calibration_feeds(batch_size=min(8, target.batch.max))[:4]
        report["polygraphy"] = compare_with_onnxruntime(onnx_path, engine, feeds, COMPARE_TOLERANCE[precision])
    runtime = {"max_batch": target.batch.max, "max_seq": target.seq.max, "tensorrt": trt.__version__,
               "compute_capability": compute_capability}
    return CompiledModel(files={ENGINE: workdir / ENGINE}, precision=precision, runtime=runtime, report=report,
                         onnx=onnx_path)
