"""Quantize an exported ONNX model: one verb and one config per workflow, all behind the accuracy gate.

quantize_dynamic, quantize_static (PTQ to Q/DQ), sensitivity_search (mixed precision within a budget),
qat (quantization-aware training, needs torch) and evaluate_gate/check (INT8 vs its FP32 source).
"""
from edge_electra.build.quantize.dynamic import DynamicQuantConfig, quantize_dynamic
from edge_electra.build.gate import GateReport, check, evaluate_gate
from edge_electra.build.quantize.sensitivity import SensitivityReport, sensitivity_search
from edge_electra.build.quantize.static import StaticQuantConfig, quantize_static

_LAZY = {"qat": ".qat", "QATConfig": ".qat"}

__all__ = ["DynamicQuantConfig", "quantize_dynamic", "StaticQuantConfig", "quantize_static",
           "SensitivityReport", "sensitivity_search", "GateReport", "evaluate_gate", "check", *_LAZY]


def __getattr__(name):
    if name in _LAZY:  # torch is imported only by those who ask for QAT
        import importlib
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
