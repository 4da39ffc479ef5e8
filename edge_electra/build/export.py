"""Export a checkpoint to ONNX: FP32 or FP16, dynamic or fixed shapes, with ONNX Runtime's transformer fusions.

Tensor names and axes come from edge_electra.runtime.io_spec; `fix_shape` is the one place that turns
a dynamic graph into a fixed-shape one (for the export CLI, and for backends' per-bucket variants).

We use the TorchScript exporter (`dynamo=False`): its graph of MatMul/Add/LayerNormalization/Erf nodes
and the decomposed SDPA pattern is what `onnxruntime.transformers.optimizer` (model_type "bert") fuses
into Attention, SkipLayerNormalization and BiasGelu. The fusions are counted and checked against the
layer count, and the exported graph is compared with torch on a padded batch before it is written.
"""
from __future__ import annotations

import collections
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np

from edge_electra.atomic import atomic_file
from edge_electra.errors import ConfigError, EdgeElectraError
from edge_electra.runtime import io_spec
from edge_electra.runtime.bundle import TensorSpec

FUSED_OPS = ("Attention", "MultiHeadAttention", "EmbedLayerNormalization", "SkipLayerNormalization",
             "BiasGelu", "Gelu", "FastGelu", "LayerNormalization")
# FP32 exports must match torch this closely; FP16 ones are checked on their top-1 instead.
FP32_TOLERANCE = 1e-4


@dataclass
class ExportConfig:
    opset: int = 17
    fp16: bool = False
    fixed_shape: list[int] | None = None   # [batch, seq] for runtimes that reject dynamic shapes
    optimize: bool = True                  # ORT transformer fusions + constant folding
    max_batch: int = 64                    # the upper bound written into the dynamic batch axis's spec


@dataclass
class ExportReport:
    path: Path
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    fused: dict[str, int] = field(default_factory=dict)
    max_abs_diff: float = 0.0              # largest |ONNX − torch| logit on the check batch
    config: ExportConfig = field(default_factory=ExportConfig)

    def summary(self) -> str:
        fused = ", ".join(f"{op} {n}" for op, n in self.fused.items() if n) or "none"
        shapes = ", ".join(f"{t.name}{t.shape}" for t in self.inputs)
        return (f"wrote {self.path}\n  inputs  {shapes}\n  outputs {', '.join(t.name for t in self.outputs)}\n"
                f"  fused   {fused}\n  max |onnx - torch| {self.max_abs_diff:.2e}")


def _check_config(model, config: ExportConfig) -> None:
    if config.opset < 17:
        raise ConfigError(f"opset {config.opset} is too old: LayerNormalization needs opset 17 or newer")
    if config.fixed_shape is not None:
        if len(config.fixed_shape) != 2 or min(config.fixed_shape) < 1:
            raise ConfigError(f"fixed_shape must be [batch, seq] with positive sizes, got {config.fixed_shape}")
        if config.fixed_shape[1] > model.config.max_position:
            raise ConfigError(f"fixed sequence length {config.fixed_shape[1]} exceeds the model's "
                              f"max_position {model.config.max_position}")


def example_inputs(batch: int, seq: int, vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random token ids with the last row padded to half length, so the mask path is exercised."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab_size, size=(batch, seq), dtype=np.int64)
    mask = np.ones_like(ids)
    if batch > 1 and seq > 2:
        mask[-1, max(2, seq // 2):] = 0
        ids[-1, max(2, seq // 2):] = 0
    return dict(zip(io_spec.INPUTS, (ids, mask, np.zeros_like(ids))))


def fix_shape(src: str | Path, dest: str | Path, batch: int, seq: int) -> Path:
    """A copy of the ONNX model `src` whose inputs are [batch, seq] and whose other shapes follow from them
    (runtimes that reject dynamic shapes: NNAPI, CoreML, NPUs)."""
    import onnx
    model = fixed_shape_proto(onnx.load(str(src)), batch, seq)
    onnx.save(model, str(dest))
    return Path(dest)


def fixed_shape_proto(model, batch: int, seq: int):
    import onnx
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_input_shape_fixed
    for value in model.graph.input:
        make_input_shape_fixed(model.graph, value.name, [batch, seq])
    fix_output_shapes(model)
    return onnx.shape_inference.infer_shapes(model)


def _put_residual_last(graph) -> None:
    """Order each residual Add feeding a LayerNormalization as (branch, residual).

    The fusion walks the first Add input looking for the attention output; when the residual is
    itself an Add (the embedding projection before layer 0) it takes the wrong one and skips the
    layer. Add is commutative, so swapping changes nothing numerically.
    """
    consumers = collections.Counter(name for node in graph.node for name in node.input)
    feeds_norm = {node.input[0] for node in graph.node if node.op_type == "LayerNormalization"}
    for node in graph.node:
        if node.op_type == "Add" and node.output[0] in feeds_norm and len(node.input) == 2:
            a, b = node.input
            if consumers[a] > 1 and consumers[b] == 1:
                node.input[0], node.input[1] = b, a


def _count_ops(model_proto) -> dict[str, int]:
    counts = collections.Counter(node.op_type for node in model_proto.graph.node)
    return {op: counts[op] for op in FUSED_OPS if counts[op]}


def _max_abs_diff(onnx_path: Path, model, feeds: dict[str, np.ndarray]) -> float:
    import onnxruntime as ort
    import torch
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, feeds)
    with torch.no_grad():
        expected = model(*(torch.from_numpy(feeds[n]) for n in io_spec.INPUTS))
    expected = expected if isinstance(expected, tuple) else (expected,)
    return max(float(np.abs(g.astype(np.float32) - e.numpy()).max()) for g, e in zip(got, expected))


def export_onnx(model, path: str | Path, config: ExportConfig = ExportConfig()) -> ExportReport:
    """Write `model` as ONNX to `path` (atomically) and report its inputs, outputs and fused ops."""
    import onnx
    import torch
    _check_config(model, config)
    cfg = model.config
    model = model.cpu().eval()
    path = Path(path)
    batch, seq = config.fixed_shape or (2, min(16, cfg.max_position))
    feeds = example_inputs(batch, seq, cfg.vocab_size)
    dynamic = config.fixed_shape is None
    with tempfile.TemporaryDirectory(prefix="edge-electra-export.") as tmp:
        raw = Path(tmp) / "raw.onnx"
        with warnings.catch_warnings():  # the TorchScript exporter's deprecation and tracer notes
            warnings.simplefilter("ignore")
            torch.onnx.export(model, tuple(torch.from_numpy(feeds[n]) for n in io_spec.INPUTS), str(raw),
                              input_names=list(io_spec.INPUTS), output_names=io_spec.output_names(cfg.task),
                              opset_version=config.opset, do_constant_folding=True, dynamo=False,
                              dynamic_axes=io_spec.dynamic_axes(cfg.task))
        proto = onnx.load(str(raw))
        if not dynamic:
            proto = fixed_shape_proto(proto, batch, seq)
        _put_residual_last(proto.graph)
        if config.optimize:
            from onnxruntime.transformers.optimizer import optimize_model
            optimized = optimize_model(proto, model_type="bert", num_heads=cfg.num_heads,
                                       hidden_size=cfg.hidden_size, opt_level=0)
        else:
            from onnxruntime.transformers.onnx_model import OnnxModel
            optimized = OnnxModel(proto)
        if config.fp16:
            optimized.convert_float_to_float16(keep_io_types=True)
        proto = optimized.model
        if config.optimize:
            _check_fusions(proto, cfg)
            _declare_contrib_domain(proto)
        with atomic_file(path) as out:
            onnx.save(proto, str(out))
            diff = _max_abs_diff(out, model, feeds)
            if not config.fp16 and diff > FP32_TOLERANCE:
                raise EdgeElectraError(f"the exported graph differs from torch by {diff:.2e} (> {FP32_TOLERANCE}); "
                                       "try --no-optimize and report the model config")
    b, s = ([1, config.max_batch], [1, cfg.max_position]) if dynamic else (batch, seq)
    return ExportReport(path, *io_spec.specs(cfg, b, s), _count_ops(proto), diff, config)


def _declare_contrib_domain(proto) -> None:
    """The optimizer emits com.microsoft ops without importing the domain, which breaks ONNX shape inference."""
    import onnx
    if any(n.domain == "com.microsoft" for n in proto.graph.node) and \
            not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))


def _check_fusions(proto, cfg) -> None:
    counts = _count_ops(proto)
    attention = counts.get("Attention", 0) + counts.get("MultiHeadAttention", 0)
    if attention != cfg.num_layers:
        raise EdgeElectraError(f"ONNX Runtime fused {attention} of {cfg.num_layers} attention blocks; the graph "
                               "is not in the form the optimizer expects. Export with --no-optimize instead.")


def load_model(checkpoint: str | Path):
    from edge_electra.train.checkpoint import load_pretrained
    model, _ = load_pretrained(checkpoint)
    return model


def parse_shape(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        shape = [int(v) for v in text.split(",")]
    except ValueError:
        shape = []
    if len(shape) != 2:
        raise ConfigError(f"--fixed-shape takes BATCH,SEQ (e.g. 1,32), got {text!r}")
    return shape


@click.command()
@click.argument("checkpoint", type=click.Path())
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Where to write the .onnx file.")
@click.option("--fp16", is_flag=True, help="Convert weights and activations to float16 (inputs/outputs stay as they are).")
@click.option("--fixed-shape", help="BATCH,SEQ for runtimes that reject dynamic shapes, e.g. 1,32.")
@click.option("--opset", default=17, show_default=True, type=int)
@click.option("--no-optimize", is_flag=True, help="Skip ONNX Runtime's transformer fusions "
              "(keep standard ONNX ops, e.g. for TensorRT, OpenVINO or static INT8).")
def command(checkpoint, out, fp16, fixed_shape, opset, no_optimize):
    """Export CHECKPOINT (a checkpoint folder) to ONNX and print the fused-op counts."""
    import torch
    torch.set_num_threads(min(2, torch.get_num_threads()))
    config = ExportConfig(opset=opset, fp16=fp16, fixed_shape=parse_shape(fixed_shape), optimize=not no_optimize)
    with click.progressbar(length=2, label="exporting") as bar:
        model = load_model(checkpoint)
        bar.update(1)
        report = export_onnx(model, out, config)
        bar.update(1)
    click.echo(report.summary())
