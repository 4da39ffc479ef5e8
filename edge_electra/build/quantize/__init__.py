"""Quantize an exported ONNX model: one verb, dispatched on the config's type.

    quantize(fp32_onnx, out_onnx, DynamicQuantConfig())
    quantize(fp32_onnx, out_onnx, StaticQuantConfig(), calibration_feeds)       # Q/DQ, calibrated ranges
    quantize(fp32_onnx, out_onnx, search.config, calibration_feeds)             # mixed precision, as data

Mixed precision is a StaticQuantConfig whose exclude_nodes keep some groups in float: the sensitivity
search returns it (SensitivityReport.config). QAT (quantization-aware training, needs torch) is in
`.qat`. Every result is judged by the one accuracy gate, edge_electra.build.gate.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_electra.errors import ConfigError
from edge_electra.build.quantize.dynamic import DynamicQuantConfig, quantize_dynamic
from edge_electra.build.quantize.static import StaticQuantConfig, quantize_static

_LAZY = {"qat": ".qat", "QATConfig": ".qat", "sensitivity_search": ".sensitivity", "SensitivityReport": ".sensitivity"}
# Ops that only appear in a quantized graph, by the precision they mean.
INT8_STATIC_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearMatMul", "QLinearConv"}
INT8_DYNAMIC_OPS = {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul", "QAttention"}

__all__ = ["DynamicQuantConfig", "StaticQuantConfig", "quantize", "quantize_dynamic", "quantize_static",
           "precision_of", *_LAZY]


def quantize(fp32_onnx: str | Path, out_onnx: str | Path, config: DynamicQuantConfig | StaticQuantConfig,
             calibration: list[dict[str, np.ndarray]] | None = None, **options) -> Path:
    """Write `fp32_onnx` quantized as `config` says to `out_onnx` (atomically); static configs calibrate on
    `calibration` (feed dicts). `options` go to the method (e.g. quantize_static's calibration_cache)."""
    if isinstance(config, DynamicQuantConfig):
        return quantize_dynamic(fp32_onnx, out_onnx, config)
    if isinstance(config, StaticQuantConfig):
        return quantize_static(fp32_onnx, out_onnx, calibration or [], config, **options)
    raise ConfigError(f"quantize takes a DynamicQuantConfig or a StaticQuantConfig, not {type(config).__name__}")


def precision_of(onnx_path: str | Path) -> str:
    """What an ONNX model holds: int8-static (Q/DQ: PTQ, sensitivity search, QAT), int8-dynamic, fp16 or fp32."""
    import onnx
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    ops = {node.op_type for node in graph.node}
    if ops & INT8_DYNAMIC_OPS:   # first: dynamic graphs hold DequantizeLinear nodes too, for their weights
        return "int8-dynamic"
    if ops & INT8_STATIC_OPS:
        return "int8-static"
    weights = [t.data_type for t in graph.initializer if t.dims]
    half = sum(t == onnx.TensorProto.FLOAT16 for t in weights)
    return "fp16" if weights and half > len(weights) // 2 else "fp32"


def __getattr__(name):
    if name in _LAZY:  # torch is imported only by those who ask for QAT
        import importlib
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
