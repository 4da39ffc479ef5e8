"""Utterances made from the training set for the teacher to label (TinyBERT's data augmentation).

Each copy of an utterance changes some of its words: a word may be replaced by one of its nearest
neighbours in the teacher's word-embedding space, or masked ([MASK]); and a copy may be recombined
with another utterance of the same intent (with slot tags: one slot value swapped for another value of
the same slot type; without: the start of one utterance joined to the end of the other). The copies
carry no labels: the teacher's outputs on them are what the student learns from.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edge_electra import data as data_io
from edge_electra.data import split_words

MASK = "[MASK]"


@dataclass
class AugmentSettings:
    copies: int = 1                    # augmented utterances per training utterance
    replace: float = 0.3               # chance a word is replaced by an embedding neighbour
    mask: float = 0.1                  # chance a word is masked
    recombine: float = 0.3             # chance a copy is recombined with another utterance first
    neighbours: int = 8                # candidates per word


def read_vocab(folder: str | Path) -> list[str]:
    return (Path(folder) / "vocab.txt").read_text(encoding="utf-8").splitlines()


def word_neighbours(embeddings: torch.Tensor, vocab: list[str], words: set[str], k: int = 8,
                    chunk: int = 1024) -> dict[str, list[str]]:
    """For each of `words` that is a whole-word entry of `vocab`, its k nearest whole words by cosine."""
    whole = [i for i, token in enumerate(vocab) if token.isalpha() and not token.startswith("[")]
    unit = F.normalize(embeddings.detach().float()[whole], dim=-1)
    position = {vocab[i]: n for n, i in enumerate(whole)}
    asked = [w for w in sorted(words) if w in position]
    found = {}
    for start in range(0, len(asked), chunk):
        rows = torch.tensor([position[w] for w in asked[start:start + chunk]])
        sims = unit[rows] @ unit.T
        sims[torch.arange(len(rows)), rows] = -2.0     # not itself
        top = sims.topk(min(k, len(whole) - 1), dim=-1).indices
        for word, near in zip(asked[start:start + chunk], top.tolist()):
            found[word] = [vocab[whole[n]] for n in near]
    return found


def _slot_spans(tags: list[str]) -> list[tuple[str, int, int]]:
    spans, start = [], None
    for i, tag in enumerate([*tags, "O"]):
        if start is not None and not tag.startswith("I-"):
            spans.append((tags[start][2:], start, i))
            start = None
        if tag.startswith("B-"):
            start = i
    return spans


def _recombine(words: list[str], tags: list[str] | None, partner: data_io.Example, rng) -> list[str]:
    other = split_words(partner.text)
    if tags is None or partner.tags is None:
        cut, other_cut = rng.integers(1, len(words) + 1), rng.integers(0, len(other))
        return words[:cut] + other[other_cut:]
    values: dict[str, list[list[str]]] = {}
    for kind, a, b in _slot_spans(partner.tags):
        values.setdefault(kind, []).append(other[a:b])
    mine = [span for span in _slot_spans(tags) if span[0] in values]
    if not mine:
        return words
    kind, a, b = mine[rng.integers(len(mine))]
    choices = values[kind]
    return words[:a] + choices[rng.integers(len(choices))] + words[b:]


def augment(dataset: data_io.Dataset, neighbours: dict[str, list[str]], settings: AugmentSettings,
            seed: int = 0) -> list[str]:
    """`settings.copies` changed copies of each utterance (a copy that came out unchanged is left out)."""
    rng = np.random.default_rng(seed)
    by_label: dict[str | None, list[data_io.Example]] = {}
    for example in dataset.examples:
        by_label.setdefault(example.label, []).append(example)
    made = []
    for _ in range(settings.copies):
        for example in dataset.examples:
            words = split_words(example.text)
            if not words:
                continue
            if rng.random() < settings.recombine:
                partners = by_label[example.label]
                words = _recombine(words, example.tags, partners[rng.integers(len(partners))], rng)
            changed = []
            for word in words:
                draw, near = rng.random(), neighbours.get(word.lower())
                if draw < settings.mask:
                    changed.append(MASK)
                elif draw < settings.mask + settings.replace and near:
                    changed.append(near[rng.integers(len(near))])
                else:
                    changed.append(word)
            text = " ".join(changed)
            if text != example.text:
                made.append(text)
    return made


def augmented_texts(dataset: data_io.Dataset, teacher_folder: str | Path, word_embeddings: torch.Tensor,
                    settings: AugmentSettings, seed: int = 0) -> list[str]:
    """augment() with neighbours from the teacher's word embeddings and vocabulary."""
    words = {w.lower() for text in dataset.texts for w in split_words(text)}
    near = word_neighbours(word_embeddings, read_vocab(teacher_folder), words, settings.neighbours)
    return augment(dataset, near, settings, seed)
