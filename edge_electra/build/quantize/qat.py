"""Quantization-aware training: fine-tune the student with INT8 rounding in the loop, distilled from its FP32 self.

Every Linear gets fake quantization: its weight per output channel (symmetric, as ONNX Runtime quantizes
MatMul weights) and its input per tensor with a running abs-max range. Rounding uses the straight-through
estimator. The loss is KL(frozen FP32 copy || student) on temperature-softened logits, plus cross-entropy
when labels are given. Every `eval_every` steps the student's top-1 agreement with the FP32 model is
measured on held-out texts, and the best state is kept; the first candidate is the untrained student with
only its ranges observed, so QAT never returns less agreement than that. The result is exported to the
same Q/DQ ONNX as post-training quantization, with the learned ranges pinned on the Linear inputs.
"""
from __future__ import annotations

import copy
import random
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import click
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_electra.data import Dataset
from edge_electra.errors import ConfigError, DataError
from edge_electra.build.export import ExportConfig, export_onnx
from edge_electra.build.quantize.static import WEIGHTED_OPS, StaticQuantConfig, quantize_static

QMAX = 127


@dataclass
class QATConfig:
    steps: int = 300
    batch_size: int = 16
    lr: float = 5e-5
    temperature: float = 1.0         # 1 keeps the student's top-1 closest to the FP32 model's
    label_weight: float = 0.5        # weight of cross-entropy on labels (when the data has them)
    range_momentum: float = 0.95     # running abs-max of each Linear input
    max_length: int = 64
    seed: int = 0
    observe_steps: int = 20          # forward passes that set the input ranges before any weight changes
    eval_every: int = 50             # steps between checks of held-out top-1 agreement with the FP32 model
    holdout: int = 256               # texts kept out of training for that check (at most a fifth of them)

    def __post_init__(self):
        if min(self.steps, self.observe_steps) < 0 or min(self.batch_size, self.eval_every, self.holdout) < 1:
            raise ConfigError("QAT needs steps and observe_steps ≥ 0, and batch_size, eval_every and holdout ≥ 1")


def fake_quantize(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric INT8 round trip; gradients pass straight through the rounding."""
    q = torch.clamp(torch.round(x / scale), -QMAX, QMAX) * scale
    return x + (q - x).detach()


class FakeQuantLinear(nn.Module):
    def __init__(self, linear: nn.Linear, momentum: float):
        super().__init__()
        self.linear = linear
        self.momentum = momentum
        self.register_buffer("input_absmax", torch.zeros(()))

    def forward(self, x):
        if self.training:
            current = x.detach().abs().max()
            seen = self.input_absmax > 0
            self.input_absmax.copy_(torch.where(seen, self.momentum * self.input_absmax
                                                + (1 - self.momentum) * current, current))
        x = fake_quantize(x, self.input_absmax.clamp(min=1e-8) / QMAX)
        w = self.linear.weight
        w = fake_quantize(w, w.detach().abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / QMAX)
        return F.linear(x, w, self.linear.bias)


def insert_fake_quant(model: nn.Module, momentum: float) -> dict[str, FakeQuantLinear]:
    """Wrap every Linear of `model` in place; returns them by module path."""
    wrapped = {}
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                path = f"{name}.{child_name}" if name else child_name
                wrapped[path] = FakeQuantLinear(child, momentum)
                setattr(module, child_name, wrapped[path])
    return wrapped


def remove_fake_quant(model: nn.Module) -> None:
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, FakeQuantLinear):
                setattr(module, child_name, child.linear)


def _linear_inputs(onnx_path: Path) -> list[tuple[str, str, str]]:
    """(node name, input tensor, torch module path) of every MatMul/Gemm in the exported graph."""
    import onnx
    return [(node.name, node.input[0], node.name.strip("/").rsplit("/", 1)[0].replace("/", "."))
            for node in onnx.load(str(onnx_path)).graph.node if node.op_type in WEIGHTED_OPS]


def _export_plan(onnx_path: Path, ranges: dict[str, float], quant: StaticQuantConfig):
    """Quantize exactly what training rounded: each Linear's weight and input, with the input's learned range.

    Everything else stays float, Linear outputs, the embedding Gather and attention's query·key and
    probabilities·value MatMuls among them: rounding that training never saw would undo what it learned.
    """
    from onnxruntime.quantization.registry import QDQRegistry
    not_linear = {op for op in QDQRegistry if op not in WEIGHTED_OPS}
    overrides, untrained = {}, []
    for node, tensor, module in _linear_inputs(onnx_path):
        if module not in ranges:
            untrained.append(node)
        elif ranges[module] > 0:
            r = np.float32(ranges[module])
            overrides[tensor] = [{"rmin": -r, "rmax": r}]
    return overrides, replace(quant, exclude_op_types=sorted(not_linear | set(quant.exclude_op_types)),
                              exclude_nodes=[*quant.exclude_nodes, *untrained],
                              exclude_output_op_types=list(WEIGHTED_OPS))


def qat(checkpoint_or_model, train_data, tokenizer, out_onnx, calibration: list[dict[str, np.ndarray]],
        config: QATConfig = QATConfig(), quant: StaticQuantConfig = StaticQuantConfig()) -> Path:
    """Fine-tune with fake quantization and write the Q/DQ INT8 ONNX model to `out_onnx`.

    `train_data` is a Dataset (labels used when present) or a list of texts (pure self-distillation).
    """
    if isinstance(checkpoint_or_model, (str, Path)):
        from edge_electra.train.checkpoint import load_pretrained
        model, _ = load_pretrained(checkpoint_or_model)
    else:
        model = copy.deepcopy(checkpoint_or_model)
    texts = train_data.texts if isinstance(train_data, Dataset) else list(train_data)
    labels = (train_data.label_ids() if isinstance(train_data, Dataset) and train_data.labels
              and all(e.label is not None for e in train_data.examples) else None)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    shuffled = rng.sample(range(len(texts)), len(texts))
    split = min(config.holdout, len(texts) // 5)
    held, train = shuffled[:split], shuffled[split:]
    if len(train) < config.batch_size or not held:
        raise DataError(f"QAT needs a batch of {config.batch_size} training texts plus a fifth more held out "
                        f"to check its agreement with FP32; got {len(texts)} texts")
    teacher = copy.deepcopy(model).eval()
    wrapped = insert_fake_quant(model, config.range_momentum)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr)

    def encode(indices):
        arrays = tokenizer([texts[i] for i in indices], max_length=config.max_length).arrays()
        return {k: torch.from_numpy(v) for k, v in arrays.items()}

    held_feeds = encode(held)
    with torch.no_grad():
        held_log_probs = F.log_softmax(_first(teacher(**held_feeds)), -1)

    def observers(on: bool) -> None:
        # Never dropout: the student is to match the deterministic FP32 model. Only the range observers train.
        model.eval()
        for module in wrapped.values():
            module.train(on)

    def agreement() -> tuple[float, float]:
        """Held-out top-1 agreement with the FP32 model, then (to break ties) minus the KL divergence from it."""
        observers(False)
        with torch.no_grad():
            logits = _first(model(**held_feeds))
            kl = F.kl_div(F.log_softmax(logits, -1), held_log_probs, log_target=True, reduction="batchmean")
            return (logits.argmax(-1) == held_log_probs.argmax(-1)).float().mean().item(), -kl.item()

    order: list[int] = []

    def next_batch() -> list[int]:
        nonlocal order
        if len(order) < config.batch_size:
            order += rng.sample(train, len(train))
        batch, order = order[:config.batch_size], order[config.batch_size:]
        return batch

    with click.progressbar(length=config.observe_steps + config.steps, label="quantization-aware training",
                           file=sys.stderr) as bar:
        observers(True)
        for _ in range(config.observe_steps):
            with torch.no_grad():
                model(**encode(next_batch()))
            bar.update(1)
        best = (agreement(), 0, copy.deepcopy(model.state_dict()))
        for step in range(1, config.steps + 1):
            observers(True)
            batch = next_batch()
            feeds = encode(batch)
            with torch.no_grad():
                target = _first(teacher(**feeds))
            logits = _first(model(**feeds))
            t = config.temperature
            loss = F.kl_div(F.log_softmax(logits / t, -1), F.log_softmax(target / t, -1),
                            log_target=True, reduction="batchmean") * t * t
            if labels is not None and config.label_weight:
                loss = loss + config.label_weight * F.cross_entropy(logits, torch.tensor([labels[i] for i in batch]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % config.eval_every == 0 or step == config.steps:
                score = agreement()
                if score > best[0]:
                    best = (score, step, copy.deepcopy(model.state_dict()))
            bar.update(1)
    model.load_state_dict(best[2])
    click.echo(f"QAT: kept step {best[1]} of {config.steps}, held-out top-1 agreement with FP32 "
               f"{100 * best[0][0]:.1f}% on {len(held)} texts", err=True)
    ranges = {name: float(m.input_absmax) for name, m in wrapped.items()}
    remove_fake_quant(model)
    model.eval()
    with tempfile.TemporaryDirectory(prefix="edge-electra-qat.") as tmp:
        fp32 = export_onnx(model, Path(tmp) / "qat-fp32.onnx", ExportConfig(optimize=False)).path
        overrides, quant = _export_plan(fp32, ranges, quant)
        return quantize_static(fp32, out_onnx, calibration, quant, range_overrides=overrides)


def _first(output):
    return output[0] if isinstance(output, tuple) else output
