"""Labelled utterances as padded tensors: intent ids, and slot tags aligned to each word's first piece."""
from __future__ import annotations

import numpy as np
import torch

from edge_electra.runtime.tokenizer import Tokenizer, word_starts

IGNORE = -100


def encode(tokenizer: Tokenizer, texts: list[str], max_length: int, label_ids: list[int] | None = None,
           tags: list[list[str] | None] | None = None, slot_labels: list[str] | None = None) -> dict[str, torch.Tensor]:
    """input_ids/attention_mask/token_type_ids (N, S) plus `labels` (N,) and `slot_labels` (N, S) when given.

    A missing label is IGNORE, so unlabelled rows add no hard-label loss. Slot tags sit on each word's
    first piece (word_starts, as the Predictor reads them); other pieces, special tokens, padding and words
    without pieces are IGNORE.
    """
    enc = tokenizer(texts, max_length=max_length)
    batch = {name: torch.from_numpy(array) for name, array in enc.arrays().items()}
    batch["labels"] = torch.tensor(label_ids if label_ids is not None else [IGNORE] * len(texts))
    if slot_labels:
        index = {tag: i for i, tag in enumerate(slot_labels)}
        slots = np.full(enc.input_ids.shape, IGNORE, dtype=np.int64)
        for row, row_tags in enumerate(tags or [None] * len(texts)):
            if row_tags is None:
                continue
            for position, tag in zip(word_starts(enc.word_ids[row], len(row_tags)), row_tags):
                if position is not None:
                    slots[row, position] = index[tag]
        batch["slot_labels"] = torch.from_numpy(slots)
    return batch


def take(batch: dict[str, torch.Tensor], rows) -> dict[str, torch.Tensor]:
    """The given rows, trimmed to their longest sequence."""
    picked = {name: t[rows] for name, t in batch.items()}
    width = int(picked["attention_mask"].sum(1).max())
    return {name: (t[:, :width] if t.ndim == 2 else t) for name, t in picked.items()}
