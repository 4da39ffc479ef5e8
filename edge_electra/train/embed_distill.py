"""Sentence-embedding distillation across vocabularies, an extra term for ELECTRA pre-training.

A sentence-embedding teacher (e.g. all-MiniLM-L6-v2, a BERT-layout folder) reads corpus sentences with its
own tokenizer; its mean-pooled last hidden states (its training objective's pooling) are computed once and
cached. The student reads the same sentences with its own vocabulary; a learned projection maps its [CLS]
state (what our sequence heads classify) to the teacher's width, and the loss is 1 − cosine similarity.
Optionally each word is distilled too: the teacher's last hidden states and the student's, each averaged over
the word's own pieces, meet through a second projection. Both tokenizers encode the same whitespace-separated
words, so word i is the same word on both sides whatever the vocabularies.
Batches are a pure function of the step, so a resumed run sees the same sentences without saving a stream.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_electra.atomic import atomic_file
from edge_electra.data import read_text_lines, split_words
from edge_electra.errors import ConfigError
from edge_electra.runtime.tokenizer import Tokenizer
from edge_electra.train.checkpoint import load_pretrained, resolve
from edge_electra.train.model import mean_pooled
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


def word_pooling(word_ids: list[list[int | None]], words: int, width: int) -> torch.Tensor:
    """(rows, words, width): row b, word w averages the positions of that word's pieces (zeros for a word
    with no piece: one truncated away, or one the normalizer reduced to nothing)."""
    pool = torch.zeros(len(word_ids), words, width)
    for row, ids in enumerate(word_ids):
        for position, word in enumerate(ids):
            if word is not None and word < words:
                pool[row, word, position] = 1.0
    return pool / pool.sum(-1, keepdim=True).clamp_min(1.0)


@dataclass
class TeacherTargets:
    """The teacher's view of each sentence: its mean-pooled embedding, and one vector per word (the mean of
    the word's pieces' last hidden states; zeros for a word it saw no piece of)."""
    sentences: np.ndarray           # (N, D) fp16
    words: np.ndarray | None        # (total words, D) fp16, sentence after sentence; None when not asked for
    offsets: np.ndarray | None      # (N + 1,) int64: sentence i's words are words[offsets[i]:offsets[i + 1]]

    def words_of(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, most words, D) word vectors of these sentences, zero-padded, and their (rows, most words) mask."""
        counts = self.offsets[rows + 1] - self.offsets[rows]
        vectors = torch.zeros(len(rows), max(int(counts.max()), 1), self.words.shape[1])
        for b, (i, n) in enumerate(zip(rows, counts)):
            vectors[b, :n] = torch.from_numpy(self.words[self.offsets[i]:self.offsets[i] + n].astype(np.float32))
        return vectors, vectors.abs().sum(-1) > 0


def teacher_targets(source: str, texts: list[str], cache_dir: str | Path, max_length: int = 64,
                    batch_size: int = 128, progress=None, words: bool = True) -> TeacherTargets:
    """The teacher's sentence and (with `words`) word vectors of `texts`, both computed once and cached under
    `cache_dir`. The word vectors are 20-odd times the sentences' size (0.8 GB for 100 000 sentences), so a
    run that does not distil words leaves them on disk."""
    folder = resolve(source)
    path = Path(cache_dir) / f"targets-{_fingerprint(folder, texts, {'max_length': max_length})}.npz"
    if path.exists():
        log.info(f"teacher targets: cached {path}")
        with np.load(path) as cached:
            return TeacherTargets(cached["sentences"], cached["words"] if words else None,
                                  cached["offsets"] if words else None)
    teacher, _ = load_pretrained(folder, task="discriminator", labels=[], slot_labels=[])
    encoder = teacher.encoder.eval()
    tokenizer = Tokenizer.from_pretrained(folder, max_length=max_length)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths batch with little padding
    sentences = np.zeros((len(texts), teacher.config.hidden_size), dtype=np.float16)
    per_sentence: list[np.ndarray | None] = [None] * len(texts)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            enc = tokenizer([texts[i] for i in rows], max_length=max_length)
            ids, mask, types = (torch.from_numpy(a) for a in (enc.input_ids, enc.attention_mask, enc.token_type_ids))
            hidden = encoder(ids, mask, types)
            sentences[rows] = mean_pooled(hidden, mask).half().numpy()
            counts = [len(split_words(texts[i])) for i in rows]
            per_word = (word_pooling(enc.word_ids, max(counts), hidden.shape[1]) @ hidden).half().numpy()
            for b, (i, n) in enumerate(zip(rows, counts)):
                per_sentence[i] = per_word[b, :n]
            if progress is not None and (start // batch_size) % 20 == 0:
                progress(min(start + batch_size, len(texts)), len(texts))
    offsets = np.concatenate([[0], np.cumsum([len(w) for w in per_sentence])]).astype(np.int64)
    word_vectors = np.concatenate(per_sentence)
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, sentences=sentences, words=word_vectors, offsets=offsets)
    return TeacherTargets(sentences, word_vectors if words else None, offsets if words else None)


def _cosine_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 1 - F.cosine_similarity(predicted.float(), target.float(), dim=-1)


class EmbeddingDistillation(nn.Module):
    """Projections from the student's states to the teacher's width, and the cosine losses: [CLS] against
    the sentence embedding, and (with `words`) each word's mean piece state against the teacher's."""

    def __init__(self, student_width: int, teacher_width: int, words: bool = False):
        super().__init__()
        self.project = nn.Linear(student_width, teacher_width)
        self.project_words = nn.Linear(student_width, teacher_width) if words else None

    def forward(self, encoder: nn.Module, input_ids, attention_mask, targets, pool=None, word_targets=None,
                word_mask=None) -> dict[str, torch.Tensor]:
        hidden = encoder(input_ids, attention_mask)
        losses = {"embed": _cosine_loss(self.project(hidden[:, 0]), targets).mean()}
        if self.project_words is not None:
            per_word = _cosine_loss(self.project_words(pool @ hidden), word_targets) * word_mask
            losses["embed_word"] = per_word.sum() / word_mask.sum().clamp_min(1)
        return losses


class SentenceBatches:
    """Batch number `step` of an endless, seeded walk over the sentences: the same on every resume."""

    def __init__(self, texts: list[str], targets: TeacherTargets, tokenizer: Tokenizer, batch_size: int,
                 max_length: int, seed: int = 0, words: bool = False):
        if len(texts) < batch_size:
            raise ConfigError(f"embedding distillation needs at least {batch_size} sentences, got {len(texts)}")
        self.texts, self.targets, self.tokenizer = texts, targets, tokenizer
        self.batch_size, self.max_length, self.seed, self.words = batch_size, max_length, seed, words
        self.per_pass = len(texts) // batch_size

    def __call__(self, step: int) -> tuple[torch.Tensor, ...]:
        """(input ids, attention mask, sentence targets[, word pooling, word targets, word mask])."""
        walk, index = divmod(step, self.per_pass)
        order = np.random.default_rng([self.seed, walk]).permutation(len(self.texts))
        rows = order[index * self.batch_size:(index + 1) * self.batch_size]
        enc = self.tokenizer([self.texts[i] for i in rows], max_length=self.max_length)
        batch = (torch.from_numpy(enc.input_ids), torch.from_numpy(enc.attention_mask),
                 torch.from_numpy(self.targets.sentences[rows]))
        if not self.words:
            return batch
        word_targets, taught = self.targets.words_of(rows)
        pool = word_pooling(enc.word_ids, word_targets.shape[1], enc.input_ids.shape[1])
        return (*batch, pool, word_targets, taught & (pool.sum(-1) > 0))


def build(cfg, student_width: int, tokenizer: Tokenizer, out: Path):
    """(EmbeddingDistillation, SentenceBatches) for a PretrainConfig with `embed_teacher` set."""
    texts = corpus_sentences(cfg.corpus, cfg.embed_sentences, cfg.seed)
    log.info(f"embedding distillation: {len(texts):,} corpus sentences, teacher {cfg.embed_teacher}")
    words = cfg.embed_word_weight > 0
    targets = teacher_targets(cfg.embed_teacher, texts, cfg.embed_cache or out / "teacher_cache",
                              progress=lambda done, total: log.info(f"teacher targets: {done:,}/{total:,}"),
                              words=words)
    batches = SentenceBatches(texts, targets, tokenizer, cfg.embed_batch_size, cfg.embed_max_length, cfg.seed,
                              words)
    return EmbeddingDistillation(student_width, targets.sentences.shape[1], words), batches
