"""The model's tensors, declared once per task: input names, output names and what each axis holds.

Export names the ONNX graph's tensors and dynamic axes from here, compile writes the manifest's
tensor specs from here, and runners feed inputs by these names. Torch-free: both sides import it.
"""
from __future__ import annotations

from typing import Any

from edge_electra.runtime.bundle import TensorSpec

# Every task takes the same three (batch, seq) int64 inputs, in this order.
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
TOKEN_IDS, ATTENTION_MASK, TOKEN_TYPES = INPUTS
INPUT_AXES = ("batch", "seq")
INPUT_DTYPE = "int64"
# "batch" and "seq" are dynamic; "labels" is the number of intents, "tags" of slot tags, "vocab" of tokens.
DYNAMIC_AXES = ("batch", "seq")
OUTPUTS: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "discriminator": [("logits", ("batch", "seq"))],
    "generator": [("logits", ("batch", "seq", "vocab"))],
    "sequence": [("logits", ("batch", "labels"))],
    "token": [("logits", ("batch", "seq", "tags"))],
    "joint": [("logits", ("batch", "labels")), ("slot_logits", ("batch", "seq", "tags"))],
}


def output_names(task: str) -> list[str]:
    return [name for name, _ in OUTPUTS[task]]


def dynamic_axes(task: str) -> dict[str, dict[int, str]]:
    """{tensor: {axis index: axis name}} for every dynamic axis of the inputs and the task's outputs."""
    tensors = [(name, INPUT_AXES) for name in INPUTS] + OUTPUTS[task]
    return {name: {i: a for i, a in enumerate(axes) if a in DYNAMIC_AXES} for name, axes in tensors}


def sizes(config) -> dict[str, int]:
    """The fixed axes' sizes for a model config (anything with task, labels, slot_labels and vocab_size)."""
    labels = len(config.labels)
    # A token-only model tags with its slot labels, or with its labels when it was given those instead.
    return {"labels": labels, "tags": len(config.slot_labels) or labels, "vocab": config.vocab_size}


def specs(config, batch: Any, seq: Any) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output TensorSpecs for `config`'s task; `batch` and `seq` are a size or a [min, max] range."""
    known = {"batch": batch, "seq": seq, **sizes(config)}
    inputs = [TensorSpec(name, INPUT_DTYPE, [known[a] for a in INPUT_AXES]) for name in INPUTS]
    outputs = [TensorSpec(name, "float32", [known[a] for a in axes]) for name, axes in OUTPUTS[config.task]]
    return inputs, outputs
