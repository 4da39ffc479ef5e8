"""The teacher: an edge-electra checkpoint or a Hugging Face sequence classifier, run once with its outputs cached.

The cache (logits, and [CLS] hidden states when a hidden-state loss is asked for) lives in the run
folder under a name hashed from the teacher's files, the texts and the settings, so a rerun or a
resumed run reuses it and any change to teacher or data recomputes it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import numpy as np
import torch

from edge_electra.atomic import atomic_file
from edge_electra.train.checkpoint import load_pretrained, resolve
from edge_electra.errors import CheckpointError, ConfigError
from edge_electra.runtime.tokenizer import Tokenizer

BACKENDS = ("auto", "edge_electra", "transformers")

logger = logging.getLogger(__name__)


def _backend(folder: Path, backend: str) -> str:
    if backend != "auto":
        return backend
    hf = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else {}
    return "edge_electra" if "edge_electra" in hf else "transformers"


def load_teacher(source: str, backend: str = "auto"):
    """(callable(input_ids, attention_mask, token_type_ids) -> (logits, hidden states), label names, tokenizer)."""
    if backend not in BACKENDS:
        raise ConfigError(f"teacher backend must be one of {list(BACKENDS)}, got {backend!r}")
    folder = resolve(source)
    tokenizer = Tokenizer.from_pretrained(folder)
    if _backend(folder, backend) == "edge_electra":
        model, _ = load_pretrained(folder)
        if model.config.task not in ("sequence", "joint"):
            raise CheckpointError(f"teacher {folder} is a {model.config.task!r} model; distillation needs a "
                                  "sequence classifier (fine-tune one first with `edge-electra finetune`)")
        def run(ids, mask, types):
            logits, hidden = model(ids, mask, types, output_hidden_states=True)
            return (logits[0] if isinstance(logits, tuple) else logits), hidden
        return model.eval(), run, list(model.config.labels), tokenizer
    try:
        import transformers
    except ImportError as e:
        raise ConfigError(f"teacher {folder} is a Hugging Face model; loading it needs "
                          "`pip install edge-electra[teacher]`") from e
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    def run(ids, mask, types):
        out = model(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
        return out.logits, list(out.hidden_states)
    return model, run, labels, tokenizer


def label_order(teacher_labels: list[str], labels: list[str]) -> list[int]:
    """For each student label, the teacher's column holding it."""
    if all(re.fullmatch(r"LABEL_\d+", name) for name in teacher_labels) and len(teacher_labels) == len(labels):
        return list(range(len(labels)))  # a teacher saved without label names: same order assumed
    missing = sorted(set(labels) - set(teacher_labels))
    if missing:
        raise ConfigError(f"the teacher does not know label(s) {missing[:10]}; fine-tune the teacher on "
                          "this dataset first (`edge-electra finetune`)")
    return [teacher_labels.index(name) for name in labels]


def _fingerprint(folder: Path, texts: list[str], settings: dict) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for name in ("config.json", "model.safetensors", "pytorch_model.bin"):
        if (folder / name).exists():
            h.update((folder / name).read_bytes())
    for text in texts:
        h.update(text.encode() + b"\0")
    return h.hexdigest()[:20]


def teacher_outputs(source: str, texts: list[str], labels: list[str], cache_dir: Path, *, backend: str = "auto",
                    max_length: int = 64, with_hidden: bool = False, batch_size: int = 64,
                    log=None) -> dict[str, np.ndarray]:
    """{"logits": (N, C) in the student's label order[, "hidden": (N, teacher layers + 1, H) [CLS] states]}."""
    log = log or logger.info
    folder = resolve(source)
    key = _fingerprint(folder, texts, {"max_length": max_length, "hidden": with_hidden, "labels": labels,
                                       "backend": backend})
    path = Path(cache_dir) / f"teacher-{key}.npz"
    if path.exists():
        log(f"teacher outputs: cached {path}")
        with np.load(path) as cached:
            return dict(cached)
    _, run, teacher_labels, tokenizer = load_teacher(source, backend)
    columns = label_order(teacher_labels, labels)
    logits, hidden = [], []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start:start + batch_size], max_length=max_length)
            out, states = run(*(torch.from_numpy(a) for a in enc.arrays().values()))
            logits.append(out[:, columns].float().numpy())
            if with_hidden:
                hidden.append(torch.stack([s[:, 0] for s in states], 1).half().numpy())
            if (start // batch_size) % 50 == 0:
                log(f"teacher outputs: {min(start + batch_size, len(texts))}/{len(texts)}")
    result = {"logits": np.concatenate(logits)}
    if with_hidden:
        result["hidden"] = np.concatenate(hidden)
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **result)
    return result
