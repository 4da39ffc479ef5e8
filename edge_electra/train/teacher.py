"""The teacher: an edge-electra checkpoint (any ELECTRA/BERT folder) or a Hugging Face sequence classifier.

Its outputs are computed once and cached (logits, and for a joint teacher slot logits at each whitespace
word's first piece) in the run folder, under a name hashed from the teacher's files, the texts and the
settings, so a rerun or a resumed run reuses them and any change to teacher or data recomputes them.
Intermediate-layer signals (hidden states, attention) are too large to cache: `OnlineTeacher` computes
them batch by batch, on the student's own token ids.
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
from edge_electra.errors import CheckpointError, ConfigError
from edge_electra.runtime.tokenizer import Tokenizer
from edge_electra.train import labelled
from edge_electra.train.checkpoint import load_pretrained, resolve

BACKENDS = ("auto", "edge_electra", "transformers")
CLASSIFIERS = ("ForSequenceClassification", "EdgeElectraForJointIntentSlot")

logger = logging.getLogger(__name__)


def _hf_config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else {}


def _backend(folder: Path, backend: str) -> str:
    if backend != "auto":
        return backend
    return "edge_electra" if "edge_electra" in _hf_config(folder) else "transformers"


def has_task_head(source: str) -> bool:
    """Whether a teacher folder classifies (an edge-electra sequence/joint model or a HF sequence classifier),
    rather than being a bare pre-trained encoder that must be fine-tuned first."""
    hf = _hf_config(resolve(source))
    task = hf.get("edge_electra", {}).get("task")
    if task is not None:
        return task in ("sequence", "joint") and bool(hf.get("id2label"))
    return any(a.endswith(CLASSIFIERS) for a in hf.get("architectures", []))


def load_teacher(source: str, backend: str = "auto"):
    """(model, callable(ids, mask, types) -> (intent logits, slot logits or None, hidden states), intent labels,
    slot labels, tokenizer)."""
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
            intent, slots = logits if isinstance(logits, tuple) else (logits, None)
            return intent, slots, hidden
        return model.eval(), run, list(model.config.labels), list(model.config.slot_labels), tokenizer
    try:
        import transformers
    except ImportError as e:
        raise ConfigError(f"teacher {folder} is a Hugging Face model; loading it needs "
                          "`pip install edge-electra[teacher]`") from e
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    def run(ids, mask, types):
        out = model(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
        return out.logits, None, list(out.hidden_states)
    return model, run, labels, [], tokenizer


def label_order(teacher_labels: list[str], labels: list[str], what: str = "label") -> list[int]:
    """For each student label, the teacher's column holding it."""
    if all(re.fullmatch(r"LABEL_\d+", name) for name in teacher_labels) and len(teacher_labels) == len(labels):
        return list(range(len(labels)))  # a teacher saved without label names: same order assumed
    missing = sorted(set(labels) - set(teacher_labels))
    if missing:
        raise ConfigError(f"the teacher does not know {what}(s) {missing[:10]}; fine-tune the teacher on "
                          "this dataset first (`edge-electra finetune`), or pass a bare encoder as --teacher")
    return [teacher_labels.index(name) for name in labels]


def word_slots(slots: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(B, W, T): slot logits at each word's first piece (zeros where a word has none)."""
    picked = slots.gather(1, positions.clamp(min=0)[..., None].expand(-1, -1, slots.shape[-1]))
    return picked * (positions >= 0)[..., None]


def _fingerprint(folder: Path, texts: list[str], settings: dict) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for name in ("config.json", "model.safetensors", "pytorch_model.bin"):
        if (folder / name).exists():
            h.update((folder / name).read_bytes())
    for text in texts:
        h.update(text.encode() + b"\0")
    return h.hexdigest()[:20]


def teacher_outputs(source: str, texts: list[str], labels: list[str], cache_dir: Path, *, backend: str = "auto",
                    max_length: int = 64, slot_labels: list[str] | None = None, batch_size: int = 64,
                    log=None) -> dict[str, np.ndarray]:
    """{"logits": (N, C) in the student's label order[, "slots": (N, max_length, T) word-level slot logits
    in the student's tag order, for a joint teacher and `slot_labels`]}."""
    log = log or logger.info
    folder = resolve(source)
    key = _fingerprint(folder, texts, {"max_length": max_length, "labels": labels, "slots": slot_labels or [],
                                       "backend": backend, "version": 2})
    path = Path(cache_dir) / f"teacher-{key}.npz"
    if path.exists():
        log(f"teacher outputs: cached {path}")
        with np.load(path) as cached:
            return dict(cached)
    _, run, teacher_labels, teacher_tags, tokenizer = load_teacher(source, backend)
    columns = label_order(teacher_labels, labels)
    tag_columns = label_order(teacher_tags, slot_labels, "slot tag") if slot_labels and teacher_tags else None
    logits, slots = [], []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            chunk = texts[start:start + batch_size]
            enc = tokenizer(chunk, max_length=max_length)
            intent, slot_logits, _ = run(*(torch.from_numpy(a) for a in enc.arrays().values()))
            logits.append(intent[:, columns].float().numpy())
            if tag_columns is not None:
                positions = torch.from_numpy(labelled.word_positions(enc.word_ids, chunk, max_length))
                slots.append(word_slots(slot_logits[..., tag_columns].float(), positions).half().numpy())
            if (start // batch_size) % 50 == 0:
                log(f"teacher outputs: {min(start + batch_size, len(texts))}/{len(texts)}")
    result = {"logits": np.concatenate(logits)}
    if slots:
        result["slots"] = np.concatenate(slots)
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **result)
    return result
