"""Sentence-embedding distillation across vocabularies, an extra term for ELECTRA pre-training.

A sentence-embedding teacher (e.g. all-MiniLM-L6-v2, a BERT-layout folder) reads corpus sentences with its
own tokenizer; its mean-pooled last hidden states (its training objective's pooling) are computed once and
cached. The student reads the same sentences with its own vocabulary; a learned projection maps its [CLS]
state (what our sequence heads classify) to the teacher's width, and the loss is 1 − cosine similarity.
Batches are a pure function of the step, so a resumed run sees the same sentences without saving a stream.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_electra.atomic import atomic_file
from edge_electra.data import read_text_lines
from edge_electra.errors import ConfigError
from edge_electra.runtime.tokenizer import Tokenizer
from edge_electra.train.checkpoint import load_pretrained, resolve
from edge_electra.train.teacher import _fingerprint

log = logging.getLogger(__name__)


def corpus_sentences(paths: list[str], count: int, seed: int = 0, max_words: int = 40) -> list[str]:
    """Up to `count` distinct sentences, taken in turn from each file's shuffled lines, so that small files
    (labelled-set utterances) are used whole and a large one (dialogues) fills the rest."""
    per_file = []
    for i, path in enumerate(paths):
        lines = list(dict.fromkeys(t for t in read_text_lines([path]) if 2 <= len(t.split()) <= max_words))
        random.Random(f"{seed}-{i}").shuffle(lines)
        per_file.append(lines)
    chosen, seen = [], set()
    for row in range(max(map(len, per_file), default=0)):
        for lines in per_file:
            if row < len(lines) and lines[row].lower() not in seen:
                seen.add(lines[row].lower())
                chosen.append(lines[row])
                if len(chosen) == count:
                    return chosen
    return chosen


def mean_pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask[..., None].to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def teacher_embeddings(source: str, texts: list[str], cache_dir: str | Path, max_length: int = 64,
                       batch_size: int = 128, progress=None) -> np.ndarray:
    """(len(texts), teacher width) fp16 mean-pooled embeddings, computed once and cached under `cache_dir`."""
    folder = resolve(source)
    path = Path(cache_dir) / f"embeddings-{_fingerprint(folder, texts, {'max_length': max_length})}.npy"
    if path.exists():
        log.info(f"teacher embeddings: cached {path}")
        return np.load(path)
    teacher, _ = load_pretrained(folder, task="discriminator", labels=[], slot_labels=[])
    encoder = teacher.encoder.eval()
    tokenizer = Tokenizer.from_pretrained(folder, max_length=max_length)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths batch with little padding
    result = np.zeros((len(texts), teacher.config.hidden_size), dtype=np.float16)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            enc = tokenizer([texts[i] for i in rows], max_length=max_length).arrays()
            ids, mask, types = (torch.from_numpy(enc[k]) for k in ("input_ids", "attention_mask", "token_type_ids"))
            result[rows] = mean_pooled(encoder(ids, mask, types), mask).half().numpy()
            if progress is not None and (start // batch_size) % 20 == 0:
                progress(min(start + batch_size, len(texts)), len(texts))
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, result)
    return result


class EmbeddingDistillation(nn.Module):
    """The projection from the student's [CLS] state to the teacher's embedding, and the cosine loss."""

    def __init__(self, student_width: int, teacher_width: int):
        super().__init__()
        self.project = nn.Linear(student_width, teacher_width)

    def forward(self, encoder: nn.Module, input_ids, attention_mask, targets) -> torch.Tensor:
        cls = encoder(input_ids, attention_mask)[:, 0]
        return (1 - F.cosine_similarity(self.project(cls).float(), targets.float(), dim=-1)).mean()


class SentenceBatches:
    """Batch number `step` of an endless, seeded walk over the sentences: the same on every resume."""

    def __init__(self, texts: list[str], targets: np.ndarray, tokenizer: Tokenizer, batch_size: int,
                 max_length: int, seed: int = 0):
        if len(texts) < batch_size:
            raise ConfigError(f"embedding distillation needs at least {batch_size} sentences, got {len(texts)}")
        self.texts, self.targets, self.tokenizer = texts, torch.from_numpy(targets), tokenizer
        self.batch_size, self.max_length, self.seed = batch_size, max_length, seed
        self.per_pass = len(texts) // batch_size

    def __call__(self, step: int):
        walk, index = divmod(step, self.per_pass)
        order = np.random.default_rng([self.seed, walk]).permutation(len(self.texts))
        rows = order[index * self.batch_size:(index + 1) * self.batch_size]
        enc = self.tokenizer([self.texts[i] for i in rows], max_length=self.max_length).arrays()
        return (torch.from_numpy(enc["input_ids"]), torch.from_numpy(enc["attention_mask"]),
                self.targets[torch.from_numpy(rows)])


def build(cfg, student_width: int, tokenizer: Tokenizer, out: Path):
    """(EmbeddingDistillation, SentenceBatches) for a PretrainConfig with `embed_teacher` set."""
    texts = corpus_sentences(cfg.corpus, cfg.embed_sentences, cfg.seed)
    log.info(f"embedding distillation: {len(texts):,} corpus sentences, teacher {cfg.embed_teacher}")
    targets = teacher_embeddings(cfg.embed_teacher, texts, cfg.embed_cache or out / "teacher_cache",
                                 progress=lambda done, total: log.info(f"teacher embeddings: {done:,}/{total:,}"))
    batches = SentenceBatches(texts, targets, tokenizer, cfg.embed_batch_size, cfg.embed_max_length, cfg.seed)
    return EmbeddingDistillation(student_width, targets.shape[1]), batches
