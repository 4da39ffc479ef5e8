"""Dynamic INT8: weights quantized ahead of time, activation ranges measured per batch at run time."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edge_electra.atomic import atomic_file
from edge_electra.errors import ConfigError
from edge_electra.build.quantize.static import without_preprocess_hint


@dataclass
class DynamicQuantConfig:
    per_channel: bool = True
    # On CPUs without VNNI, 7-bit weights avoid overflow in the u8*s8 multiply-add; off by default.
    reduce_range: bool = False
    weight_type: str = "int8"
    exclude_nodes: list[str] = field(default_factory=list)


def quantize_dynamic(fp32_onnx: str | Path, out_onnx: str | Path,
                     config: DynamicQuantConfig = DynamicQuantConfig()) -> Path:
    import onnx
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic
    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    if config.weight_type not in types:
        raise ConfigError(f"weight_type must be one of {list(types)}, got {config.weight_type!r}")
    fp32_onnx, out_onnx = Path(fp32_onnx), Path(out_onnx)
    if not fp32_onnx.is_file():
        raise ConfigError(f"model {fp32_onnx} not found")
    with atomic_file(out_onnx) as tmp, without_preprocess_hint():
        ort_quantize_dynamic(fp32_onnx, tmp, per_channel=config.per_channel, reduce_range=config.reduce_range,
                             weight_type=types[config.weight_type], nodes_to_exclude=config.exclude_nodes,
                             # ONNX shape inference cannot type the fused com.microsoft ops; they are float.
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return out_onnx
