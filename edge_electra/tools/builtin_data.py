"""A smart-home assistant dataset written for this project: intents, BIO slot tags and an out-of-scope class.

Each intent is some twenty phrasing templates, kept in builtin_data.toml with the slot values. In a template
`(a|b|)` picks one alternative (maybe none) and `{room}` is a slot filled from `SLOT_VALUES`
(`{temperature:temperature_change}`: slot `temperature`, values from another list); every word of a filled slot
gets its B-/I- tag, every other word "O".
Generation is seeded by the intent's name, so the utterances are the same on every machine and Python run;
`splits(seed)` only changes which utterance lands in which split.
"""
from __future__ import annotations

import json
import random
import re
import tomllib
from pathlib import Path

from edge_electra.atomic import atomic_dir
from edge_electra.data import Dataset, Example

OUT_OF_SCOPE = "oos"
PER_INTENT = 100
OUT_OF_SCOPE_COUNT = 250
SPLIT_FRACTIONS = {"validation": 0.15, "test": 0.15}


with Path(__file__).with_name("builtin_data.toml").open("rb") as _file:
    _DATA = tomllib.load(_file)
SLOT_VALUES: dict[str, list[str]] = _DATA["slots"]
# name → (wrapper set, templates): wrappers add politeness and filler around a whole utterance.
INTENTS: dict[str, tuple[str, list[str]]] = {name: (intent["wrappers"], intent["templates"])
                                             for name, intent in _DATA["intents"].items()}
WRAPPERS: dict[str, tuple[list[str], list[str]]] = {kind: (w["prefixes"], w["suffixes"])
                                                    for kind, w in _DATA["wrappers"].items()}
OUT_OF_SCOPE_TEMPLATES: list[str] = _DATA["out_of_scope"]["templates"]


def _pick_alternatives(template: str, rng: random.Random) -> str:
    return re.sub(r"\(([^()]*)\)", lambda m: rng.choice(m.group(1).split("|")), template)


def _fill(template: str, rng: random.Random) -> tuple[list[str], list[str]]:
    """Words and their BIO tags for one random filling of `template`."""
    words, tags = [], []
    for word in _pick_alternatives(template, rng).split():
        slot = re.fullmatch(r"\{(\w+)(?::(\w+))?\}", word)
        if slot is None:
            words.append(word)
            tags.append("O")
            continue
        name, pool = slot.group(1), slot.group(2) or slot.group(1)
        value = rng.choice(SLOT_VALUES[pool]).split()
        words += value
        tags += [f"B-{name}"] + [f"I-{name}"] * (len(value) - 1)
    return words, tags


def _typo(words: list[str], tags: list[str], rng: random.Random) -> list[str]:
    """Swap two letters in one untagged word, as a hurried typist would; word count is unchanged."""
    candidates = [i for i, (w, t) in enumerate(zip(words, tags)) if t == "O" and len(w) >= 4 and w.isalpha()]
    if not candidates:
        return words
    i = rng.choice(candidates)
    j = rng.randrange(1, len(words[i]) - 2)
    w = words[i]
    return words[:i] + [w[:j] + w[j + 1] + w[j] + w[j + 2:]] + words[i + 1:]


def _distinct(draw, count: int) -> list[Example]:
    """Up to `count` examples from `draw()` with distinct texts (fewer if the templates allow fewer)."""
    seen, examples = set(), []
    for _ in range(count * 40):
        if len(examples) == count:
            break
        example = draw()
        if example.text not in seen:
            seen.add(example.text)
            examples.append(example)
    return examples


def _utterances(intent: str, count: int, seed: str) -> list[Example]:
    kind, templates = INTENTS[intent]
    prefixes, suffixes = WRAPPERS[kind]
    rng = random.Random(f"{seed}:{intent}")

    def draw() -> Example:
        words, tags = _fill(rng.choice(templates), rng)
        prefix, suffix = rng.choice(prefixes).split(), rng.choice(suffixes).split()
        if set(suffix) & set(prefix + words):  # no "please ... please"
            suffix = []
        words, tags = prefix + words + suffix, ["O"] * len(prefix) + tags + ["O"] * len(suffix)
        if rng.random() < 0.05:
            words = _typo(words, tags, rng)
        return Example(" ".join(words), intent, tags)
    return _distinct(draw, count)


def _out_of_scope(count: int, seed: str) -> list[Example]:
    rng = random.Random(f"{seed}:{OUT_OF_SCOPE}")

    def draw() -> Example:
        words = _pick_alternatives(rng.choice(OUT_OF_SCOPE_TEMPLATES), rng).split()
        return Example(" ".join(words), OUT_OF_SCOPE, ["O"] * len(words))
    return _distinct(draw, count)


def examples() -> list[Example]:
    """Every labelled utterance, each text once (the first intent to produce a text keeps it)."""
    rows = [e for intent in INTENTS for e in _utterances(intent, PER_INTENT, "builtin")]
    rows += _out_of_scope(OUT_OF_SCOPE_COUNT, "builtin")
    unique: dict[str, Example] = {}
    for e in rows:
        unique.setdefault(e.text, e)
    return list(unique.values())


def labels() -> list[str]:
    return sorted([*INTENTS, OUT_OF_SCOPE])


def slot_labels(rows: list[Example]) -> list[str]:
    return ["O"] + sorted({t for e in rows for t in e.tags} - {"O"})


def splits(seed: int = 0) -> dict[str, Dataset]:
    """Train/validation/test, stratified by intent; a text is in one split only."""
    rows = examples()
    rng = random.Random(seed)
    parts = {"train": [], "validation": [], "test": []}
    for intent in labels():
        group = [e for e in rows if e.label == intent]
        rng.shuffle(group)
        n_val, n_test = (max(1, round(f * len(group))) for f in SPLIT_FRACTIONS.values())
        parts["validation"] += group[:n_val]
        parts["test"] += group[n_val:n_val + n_test]
        parts["train"] += group[n_val + n_test:]
    tags = slot_labels(rows)
    for part in parts.values():
        rng.shuffle(part)
    return {name: Dataset(part, labels(), tags, name=f"builtin-{name}") for name, part in parts.items()}


def write(folder: str | Path, seed: int = 0) -> Path:
    """Write the splits as JSONL plus labels.json, the layout `data.load_folder` reads."""
    folder = Path(folder)
    data = splits(seed)
    with atomic_dir(folder) as tmp:
        for name, dataset in data.items():
            lines = [json.dumps({"text": e.text, "label": e.label, "tags": e.tags}) for e in dataset.examples]
            (tmp / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        meta = {"labels": data["train"].labels, "tags": data["train"].slot_labels}
        (tmp / "labels.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return folder


def corpus(size: int = 6000) -> list[str]:
    """Unlabelled assistant-style sentences for tokenizer training and pre-training.

    Drawn from the same templates with another seed, minus every labelled text, so no validation or
    test utterance is seen verbatim before evaluation.
    """
    labelled = {e.text for e in examples()}
    per_intent = size // (len(INTENTS) + 1)
    rows = [e for intent in INTENTS for e in _utterances(intent, per_intent, "corpus")]
    rows += _out_of_scope(per_intent, "corpus")
    return [e.text for e in rows if e.text not in labelled]
