"""Static INT8 (post-training quantization) to explicit QuantizeLinear/DequantizeLinear ONNX.

The Q/DQ graph runs in ONNX Runtime as is and is what TensorRT and OpenVINO consume. Weights are
per-channel symmetric; activations are symmetric by default (TensorRT requires a zero point of 0), and
each backend says what it needs (`Backend.static_quant`). Weighted ops (MatMul, Gemm) quantize their
inputs and keep float outputs.
LayerNorm, Softmax, GELU and the residual adds stay float: they are cheap and quantizing them costs
the most accuracy in transformers.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from edge_electra.atomic import atomic_file
from edge_electra.errors import ConfigError, DataError

METHODS = ("minmax", "entropy", "percentile")
WEIGHTED_OPS = ("MatMul", "Gemm")   # what a Linear exports to
FUSED_CONTRIB_OPS = ("Attention", "MultiHeadAttention", "EmbedLayerNormalization")


@dataclass
class StaticQuantConfig:
    method: Literal["minmax", "entropy", "percentile"] = "minmax"
    percentile: float = 99.99
    per_channel: bool = True
    symmetric_activations: bool = True
    exclude_op_types: list[str] = field(default_factory=lambda: [
        "LayerNormalization", "Softmax", "Gelu", "Erf", "Add", "Mul", "Div", "Sub", "Sqrt", "Pow"])
    exclude_nodes: list[str] = field(default_factory=list)
    # Weighted ops take INT8 inputs but give float outputs: one rounding fewer per Linear, and the
    # placement TensorRT recommends for explicit Q/DQ.
    exclude_output_op_types: list[str] = field(default_factory=lambda: list(WEIGHTED_OPS))

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"calibration method must be one of {list(METHODS)}, got {self.method!r}")


@contextlib.contextmanager
def without_preprocess_hint():
    """Silence onnxruntime's root-logger advice to run its pre-processing: our exported graphs are already
    shape-inferred and fused, and its pre-processing cannot type the fused com.microsoft ops."""
    def keep(record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()
    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _feed_reader(feeds: list[dict[str, np.ndarray]]):
    from onnxruntime.quantization import CalibrationDataReader

    class FeedReader(CalibrationDataReader):
        def __init__(self):
            self._batches = iter(feeds)

        def get_next(self):
            return next(self._batches, None)
    return FeedReader()


def check_quantizable(fp32_onnx: Path) -> None:
    import onnx
    if not fp32_onnx.is_file():
        raise ConfigError(f"model {fp32_onnx} not found")
    fused = sorted({n.op_type for n in onnx.load(str(fp32_onnx), load_external_data=False).graph.node
                    if n.op_type in FUSED_CONTRIB_OPS})
    if fused:
        raise ConfigError(f"{fp32_onnx} holds ONNX Runtime fused ops {fused}, which static INT8 leaves in float "
                          "and TensorRT/OpenVINO cannot read; export it with --no-optimize for static INT8")


def quantize_static(fp32_onnx: str | Path, out_onnx: str | Path, calibration: list[dict[str, np.ndarray]],
                    config: StaticQuantConfig = StaticQuantConfig(), calibration_cache: str | Path | None = None,
                    range_overrides: dict | None = None) -> Path:
    """Calibrate on `calibration` (feed dicts) and write the Q/DQ model to `out_onnx` atomically.

    With `calibration_cache`, the activation ranges are saved there on the first call and reused by
    later calls with the same method (the sensitivity search quantizes many variants this way).
    `range_overrides` pins the range of some tensors ({name: [{"rmin": .., "rmax": ..}]}, e.g. from QAT).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static
    from onnxruntime.quantization.registry import QDQRegistry
    fp32_onnx, out_onnx = Path(fp32_onnx), Path(out_onnx)
    check_quantizable(fp32_onnx)
    cached = calibration_cache is not None and Path(calibration_cache).is_file()
    if not calibration and not cached:
        raise DataError("static quantization needs calibration data; pass --calibration FILE or use the default set")
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    activation = QuantType.QInt8 if config.symmetric_activations else QuantType.QUInt8
    with atomic_file(out_onnx) as tmp, without_preprocess_hint():
        ort_quantize_static(
            fp32_onnx, tmp, None if cached else _feed_reader(calibration), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=[op for op in QDQRegistry if op not in config.exclude_op_types],
            nodes_to_exclude=config.exclude_nodes, per_channel=config.per_channel,
            activation_type=activation, weight_type=QuantType.QInt8, calibrate_method=methods[config.method],
            calibration_cache_path=calibration_cache,
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": config.symmetric_activations,
                           "CalibPercentile": config.percentile, "TensorQuantOverrides": range_overrides or {},
                           "OpTypesToExcludeOutputQuantization": config.exclude_output_op_types})
    return out_onnx
