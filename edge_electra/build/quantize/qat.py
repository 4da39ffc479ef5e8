"""Quantization-aware training: fine-tune the student with INT8 rounding in the loop, distilled from its FP32 self.

Every Linear gets fake quantization: its weight per output channel (symmetric, as ONNX Runtime quantizes
MatMul weights) and its input per tensor with a running abs-max range. Rounding uses the straight-through
estimator. The loss is KL(frozen FP32 copy || student) on temperature-softened logits, the intent's and, for
a joint model, the slot tags', plus cross-entropy when labels are given. It trains on the one training loop
(train/loop.py). Every `eval_every` steps the student's top-1 agreement with the FP32 model is measured on
held-out texts, and the best state is kept; the first candidate is the untrained student with
only its ranges observed, so QAT never returns less agreement than that. The result is exported to the
same Q/DQ ONNX as post-training quantization, with the learned ranges pinned on the Linear inputs.
"""
from __future__ import annotations

import copy
import logging
import random
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_electra.data import Dataset
from edge_electra.errors import ConfigError, DataError
from edge_electra.build.export import ExportConfig, export_onnx
from edge_electra.build.quantize.static import WEIGHTED_OPS, StaticQuantConfig, quantize_static
from edge_electra.train.loop import Loop, LoopSettings
from edge_electra.train.placement import Runtime

log = logging.getLogger(__name__)

QMAX = 127


@dataclass
class QATConfig:
    steps: int = 300
    batch_size: int = 16
    lr: float = 5e-5
    temperature: float = 1.0         # 1 keeps the student's top-1 closest to the FP32 model's
    label_weight: float = 0.5        # weight of cross-entropy on labels (when the data has them)
    slot_weight: float = 1.0         # weight of the slot tags' distillation term (joint models)
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
        config: QATConfig = QATConfig(), quant: StaticQuantConfig = StaticQuantConfig(),
        progress: Callable[[int, int], None] | None = None) -> Path:
    """Fine-tune with fake quantization and write the Q/DQ INT8 ONNX model to `out_onnx`.

    `train_data` is a Dataset (labels used when present) or a list of texts (pure self-distillation).
    `progress(step, steps)` is called after each training step.
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
        held_targets = teacher(**held_feeds)

    def observers(on: bool) -> None:
        # Never dropout: the student is to match the deterministic FP32 model. Only the range observers train.
        model.eval()
        for module in wrapped.values():
            module.train(on)

    def agreement() -> tuple[tuple[float, float], dict]:
        """Held-out top-1 agreement with the FP32 model (the lower of intent and slot tags for a joint model),
        then, to break ties, minus the KL divergence from it."""
        observers(False)
        with torch.no_grad():
            report = agreement_with(model(**held_feeds), held_targets, held_feeds["attention_mask"])
        return (min(v for k, v in report.items() if k != "kl"), -report["kl"]), report

    def batches():
        order: list[int] = []
        while True:
            if len(order) < config.batch_size:
                order += rng.sample(train, len(train))
            batch, order = order[:config.batch_size], order[config.batch_size:]
            yield batch, {}

    def step(student, batch, done):
        observers(True)
        feeds = encode(batch)
        with torch.no_grad():
            target = teacher(**feeds)
        output = student(**feeds)
        loss = distillation_loss(output, target, feeds["attention_mask"], config.temperature, config.slot_weight)
        if labels is not None and config.label_weight:
            loss = loss + config.label_weight * F.cross_entropy(_intent(output), torch.tensor([labels[i] for i in batch]))
        return {"loss": loss}

    stream = batches()
    observers(True)
    with torch.no_grad():
        for _ in range(config.observe_steps):
            model(**encode(next(stream)[0]))
    settings = LoopSettings(steps=config.steps, log_every=config.eval_every, eval_every=config.eval_every,
                            evaluate_first=True)
    outcome = Loop(model, optimizer, None, settings, Runtime(torch.device("cpu"), "fp32"), seed=config.seed,
                   evaluate=agreement, progress=progress).run(step, lambda position: stream)
    model.load_state_dict(outcome.best_state)
    log.info("QAT: kept step %d of %d, held-out top-1 agreement with FP32 %s on %d texts", outcome.best_step,
             config.steps, ", ".join(f"{k} {100 * v:.1f}%" for k, v in outcome.best_report.items() if k != "kl"),
             len(held))
    ranges = {name: float(m.input_absmax) for name, m in wrapped.items()}
    remove_fake_quant(model)
    model.eval()
    with tempfile.TemporaryDirectory(prefix="edge-electra-qat.") as tmp:
        fp32 = export_onnx(model, Path(tmp) / "qat-fp32.onnx", ExportConfig(optimize=False)).path
        overrides, quant = _export_plan(fp32, ranges, quant)
        return quantize_static(fp32, out_onnx, calibration, quant, range_overrides=overrides)


def _intent(output):
    return output[0] if isinstance(output, tuple) else output


def _slots(output):
    return output[1] if isinstance(output, tuple) else None


def _kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher ‖ student) of the softened distributions over the last axis, one value per row (or token)."""
    return F.kl_div(F.log_softmax(student / temperature, -1), F.log_softmax(teacher / temperature, -1),
                    log_target=True, reduction="none").sum(-1)


def distillation_loss(student, teacher, attention_mask: torch.Tensor, temperature: float = 1.0,
                      slot_weight: float = 1.0) -> torch.Tensor:
    """T²·KL(teacher ‖ student) on softened logits: the intent's per utterance, plus, for a joint model, the
    slot tags' per real (unpadded) token, so that quantization cannot cost the tagging unseen."""
    t2 = temperature * temperature
    loss = _kl(_intent(student), _intent(teacher), temperature).mean() * t2
    if _slots(student) is not None:
        real = attention_mask.bool()
        loss = loss + slot_weight * _kl(_slots(student), _slots(teacher), temperature)[real].mean() * t2
    return loss


def agreement_with(student, teacher, attention_mask: torch.Tensor) -> dict[str, float]:
    """Top-1 agreement of intents (and of slot tags on real tokens, for a joint model) and the summed KL."""
    report = {"agreement": (_intent(student).argmax(-1) == _intent(teacher).argmax(-1)).float().mean().item(),
              "kl": _kl(_intent(student), _intent(teacher)).mean().item()}
    if _slots(student) is not None:
        real = attention_mask.bool()
        same = _slots(student).argmax(-1) == _slots(teacher).argmax(-1)
        report["slot_agreement"] = same[real].float().mean().item()
        report["kl"] += _kl(_slots(student), _slots(teacher))[real].mean().item()
    return report
