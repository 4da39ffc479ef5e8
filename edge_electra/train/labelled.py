"""Labelled utterances as padded tensors: intent ids, and slot tags aligned to each word's first piece."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edge_electra import data as data_io
from edge_electra.data import split_words
from edge_electra.errors import DataError
from edge_electra.runtime.tokenizer import Tokenizer, word_starts

IGNORE = -100


def word_positions(word_ids: list[list[int | None]], texts: list[str], width: int) -> np.ndarray:
    """(N, width): the position of each whitespace word's first piece, -1 past the last word or for a word
    without pieces. The same words in another tokenizer's encoding line up by index (slot distillation)."""
    positions = np.full((len(texts), width), -1, dtype=np.int64)
    for row, (ids, text) in enumerate(zip(word_ids, texts)):
        for word, position in enumerate(word_starts(ids, min(len(split_words(text)), width))):
            if position is not None:
                positions[row, word] = position
    return positions


def encode(tokenizer: Tokenizer, texts: list[str], max_length: int, label_ids: list[int] | None = None,
           tags: list[list[str] | None] | None = None, slot_labels: list[str] | None = None) -> dict[str, torch.Tensor]:
    """input_ids/attention_mask/token_type_ids (N, S) plus `labels` (N,) and, with slot labels, `slot_labels`
    (N, S) and `word_positions` (N, S) (see word_positions).

    A missing label is IGNORE, so unlabelled rows add no hard-label loss. Slot tags sit on each word's
    first piece (word_starts, as the Predictor reads them); other pieces, special tokens, padding and words
    without pieces are IGNORE.
    """
    enc = tokenizer(texts, max_length=max_length)
    batch = {name: torch.from_numpy(array) for name, array in enc.arrays().items()}
    batch["labels"] = torch.tensor(label_ids if label_ids is not None else [IGNORE] * len(texts))
    if slot_labels:
        index = {tag: i for i, tag in enumerate(slot_labels)}
        positions = word_positions(enc.word_ids, texts, enc.input_ids.shape[1])
        slots = np.full(enc.input_ids.shape, IGNORE, dtype=np.int64)
        for row, row_tags in enumerate(tags or [None] * len(texts)):
            for word, tag in enumerate(row_tags or []):
                if word < positions.shape[1] and positions[row, word] >= 0:
                    slots[row, positions[row, word]] = index[tag]
        batch["slot_labels"] = torch.from_numpy(slots)
        batch["word_positions"] = torch.from_numpy(positions)
    return batch


def take(batch: dict[str, torch.Tensor], rows) -> dict[str, torch.Tensor]:
    """The given rows, trimmed to their longest sequence."""
    picked = {name: t[rows] for name, t in batch.items()}
    width = int(picked["attention_mask"].sum(1).max())
    return {name: (t[:, :width] if t.ndim == 2 else t) for name, t in picked.items()}


def load_splits(data: str, validation: str | None = None, test: str | None = None,
                seed: int = 0) -> dict[str, data_io.Dataset]:
    """train/validation[/test] from a dataset folder or a training file; without a validation split, 10% of
    train (seeded) is held out as one."""
    path = Path(data)
    splits = data_io.load_folder(path) if path.is_dir() and (path / "train.jsonl").exists() else {
        "train": data_io.load(path)}
    train = splits["train"]
    for name, given in (("validation", validation), ("test", test)):
        if given:
            splits[name] = data_io.load(given, train.labels, train.slot_labels)
    if "validation" not in splits:
        order = np.random.default_rng(seed).permutation(len(train))
        held = max(1, len(train) // 10)
        pick = lambda rows: data_io.Dataset([train.examples[i] for i in rows], train.labels, train.slot_labels)
        splits["validation"], splits["train"] = pick(order[:held]), pick(order[held:])
        if not len(splits["train"]):
            raise DataError(f"{path} holds {len(train)} row(s): too few to hold out a validation split and "
                            "train on the rest; add rows, or pass --validation")
    return splits
