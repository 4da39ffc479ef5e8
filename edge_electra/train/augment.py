"""Utterances made from the training set for the teacher to label (TinyBERT's data augmentation).

Each copy of an utterance changes some of its words: a word may be masked ([MASK]) or replaced; and a copy may
first be recombined with another utterance of the same intent (with slot tags: one slot value swapped for another
value of the same slot type; without: the start of one utterance joined to the end of the other). Which words are
replaced is chosen the same way whatever replaces them (each with chance `replace`, at least one a copy); a
replacer says with what: one of the word's nearest neighbours in the teacher's word-embedding space
(`NeighbourReplacer`), or a whole word sampled, in context, from a `pretrain` generator's masked-LM softmax with
the chosen words masked (`GeneratorReplacer`). The copies carry no labels: the teacher's outputs on them are what
the student learns from.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from edge_electra import data as data_io
from edge_electra.data import split_words
from edge_electra.errors import CheckpointError
from edge_electra.runtime.tokenizer import Tokenizer, load_tokenizer, word_starts
from edge_electra.train.checkpoint import load_pretrained
from edge_electra.train.model import Electra

MASK = "[MASK]"


@dataclass
class AugmentSettings:
    copies: int = 1                    # augmented utterances per training utterance
    replace: float = 0.3               # chance a word is replaced
    mask: float = 0.1                  # chance a word is masked
    recombine: float = 0.3             # chance a copy is recombined with another utterance first
    neighbours: int = 8                # candidates per word


class Replacer(Protocol):
    def replaceable(self, word: str) -> bool:
        """Whether this replacer has something to put in place of `word`."""

    def __call__(self, copies: list[list[str]], chosen: list[list[int]], rng: np.random.Generator) -> list[list[str]]:
        """The copies with their `chosen` words (indices, one list a copy) replaced."""


def read_vocab(folder: str | Path) -> list[str]:
    return (Path(folder) / "vocab.txt").read_text(encoding="utf-8").splitlines()


def whole_word_ids(vocab: list[str]) -> list[int]:
    """The ids of the vocabulary's whole words: no special tokens, no '##' pieces, no punctuation or digits."""
    return [i for i, token in enumerate(vocab) if token.isalpha() and not token.startswith("[")]


def word_neighbours(embeddings: torch.Tensor, vocab: list[str], words: set[str], k: int = 8,
                    chunk: int = 1024) -> dict[str, list[str]]:
    """For each of `words` that is a whole-word entry of `vocab`, its k nearest whole words by cosine."""
    whole = whole_word_ids(vocab)
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


@dataclass
class NeighbourReplacer:
    """Each chosen word becomes one of its embedding neighbours (word_neighbours), uniformly."""
    neighbours: dict[str, list[str]]

    def replaceable(self, word: str) -> bool:
        return bool(self.neighbours.get(word.lower()))

    def __call__(self, copies, chosen, rng):
        replaced = [list(words) for words in copies]
        for words, picked in zip(replaced, chosen):
            for i in picked:
                near = self.neighbours[words[i].lower()]
                words[i] = near[rng.integers(len(near))]
        return replaced


def load_generator(folder: str | Path) -> tuple[Electra, Tokenizer, list[str]]:
    """The masked LM, tokenizer and vocabulary of a generator folder `pretrain` wrote (OUT/generator)."""
    path = Path(folder)
    if not (path / "config.json").is_file() or not (path / "vocab.txt").is_file():
        raise CheckpointError(f"augment generator {folder}: not a folder with config.json and vocab.txt; give the "
                              "generator/ folder a pretrain run wrote")
    model, _ = load_pretrained(path)
    if model.config.task != "generator":
        raise CheckpointError(f"augment generator {folder} holds a {model.config.task} model, not a pretrain "
                              "generator (a masked LM); give the generator/ folder beside the discriminator")
    tokenizer, vocab = load_tokenizer(path), read_vocab(path)
    if not len(vocab) == tokenizer.vocab_size == model.config.vocab_size:
        raise CheckpointError(f"augment generator {folder}: its vocab.txt ({len(vocab)} tokens), tokenizer "
                              f"({tokenizer.vocab_size}) and model ({model.config.vocab_size}) disagree")
    return model.eval(), tokenizer, vocab


class GeneratorReplacer:
    """Puts the generator's mask token on every piece of the chosen words (and of the masked ones), runs it once
    per batch of copies, and fills each chosen word with a whole word sampled from the generator's softmax at
    the word's first piece, among its `k` likeliest whole words other than the original."""

    def __init__(self, folder: str | Path, k: int = 8, batch_size: int = 64, device: str | torch.device = "cpu"):
        self.model, self.tokenizer, vocab = load_generator(folder)
        self.model.to(device)
        whole = whole_word_ids(vocab)
        self.words = [vocab[i] for i in whole]
        self.column = {word: n for n, word in enumerate(self.words)}
        self.candidates = torch.tensor(whole, device=device)
        self.k, self.batch_size, self.device = min(k, len(whole) - 1), batch_size, device

    def replaceable(self, word: str) -> bool:
        return True

    def __call__(self, copies, chosen, rng):
        replaced = [list(words) for words in copies]
        todo = [n for n, picked in enumerate(chosen) if picked]
        for start in range(0, len(todo), self.batch_size):
            rows = todo[start:start + self.batch_size]
            places, logits = self._logits([copies[n] for n in rows], [chosen[n] for n in rows])
            for (row, i), scores in zip(places, logits):
                original = self.column.get(copies[rows[row]][i].lower())
                if original is not None:
                    scores[original] = -torch.inf
                top = scores.topk(self.k)
                p = torch.softmax(top.values.double(), -1).numpy()
                replaced[rows[row]][i] = self.words[top.indices[rng.choice(self.k, p=p / p.sum())]]
        return replaced

    def _logits(self, copies: list[list[str]], chosen: list[list[int]]) -> tuple[list[tuple[int, int]], torch.Tensor]:
        """(row, word index) of each chosen word the encoding kept, and the whole words' logits at its first piece."""
        encoded = self.tokenizer([" ".join(words) for words in copies], max_length=self.model.config.max_position)
        ids = torch.from_numpy(encoded.input_ids)
        places, positions = [], []
        for row, (word_ids, words, picked) in enumerate(zip(encoded.word_ids, copies, chosen)):
            hidden_words = set(picked) | {i for i, word in enumerate(words) if word == MASK}
            ids[row, [p for p, w in enumerate(word_ids) if w in hidden_words]] = self.tokenizer.mask_id
            starts = word_starts(word_ids, len(words))
            kept = [i for i in picked if starts[i] is not None]
            places += [(row, i) for i in kept]
            positions += [(row, starts[i]) for i in kept]
        at = torch.tensor(positions, dtype=torch.long).reshape(-1, 2)
        with torch.inference_mode():
            hidden = self.model.encoder(ids.to(self.device), torch.from_numpy(encoded.attention_mask).to(self.device),
                                        torch.from_numpy(encoded.token_type_ids).to(self.device))
            logits = self.model.head(hidden[at[:, 0], at[:, 1]])[:, self.candidates].float().cpu()
        return places, logits.clone()   # a normal tensor, which __call__ may change in place


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


def _mask_and_choose(words: list[str], settings: AugmentSettings, replacer: Replacer,
                     rng) -> tuple[list[str], list[int]]:
    """The words with the masked ones as MASK, and the indices of those to replace (at least one, if any can be)."""
    masked, chosen = [], []
    for i, word in enumerate(words):
        draw = rng.random()
        if draw < settings.mask:
            masked.append(MASK)
            continue
        if draw < settings.mask + settings.replace and replacer.replaceable(word):
            chosen.append(i)
        masked.append(word)
    if settings.replace > 0 and not chosen:
        left = [i for i, word in enumerate(words) if masked[i] != MASK and replacer.replaceable(word)]
        chosen = [left[rng.integers(len(left))]] if left else []
    return masked, chosen


def augment(dataset: data_io.Dataset, replacer: Replacer | dict[str, list[str]], settings: AugmentSettings,
            seed: int = 0) -> list[str]:
    """`settings.copies` changed copies of each utterance (a copy that came out unchanged is left out).
    `replacer`: a Replacer, or the embedding neighbours of a NeighbourReplacer."""
    if isinstance(replacer, dict):
        replacer = NeighbourReplacer(replacer)
    rng = np.random.default_rng(seed)
    by_label: dict[str | None, list[data_io.Example]] = {}
    for example in dataset.examples:
        by_label.setdefault(example.label, []).append(example)
    copies, chosen, sources = [], [], []
    for _ in range(settings.copies):
        for example in dataset.examples:
            words = split_words(example.text)
            if not words:
                continue
            if rng.random() < settings.recombine:
                partners = by_label[example.label]
                words = _recombine(words, example.tags, partners[rng.integers(len(partners))], rng)
            masked, picked = _mask_and_choose(words, settings, replacer, rng)
            copies.append(masked)
            chosen.append(picked)
            sources.append(example.text)
    texts = (" ".join(words) for words in replacer(copies, chosen, rng))
    return [text for text, source in zip(texts, sources) if text != source]


def augmented_texts(dataset: data_io.Dataset, teacher_folder: str | Path, word_embeddings: torch.Tensor,
                    settings: AugmentSettings, seed: int = 0, generator: str | Path | None = None,
                    device: str | torch.device = "cpu") -> list[str]:
    """augment() with the words of a pretrain `generator` folder, else with neighbours from the teacher's
    word embeddings and vocabulary."""
    if generator is not None:
        return augment(dataset, GeneratorReplacer(generator, settings.neighbours, device=device), settings, seed)
    words = {w.lower() for text in dataset.texts for w in split_words(text)}
    near = word_neighbours(word_embeddings, read_vocab(teacher_folder), words, settings.neighbours)
    return augment(dataset, near, settings, seed)
