"""Calibration data for static INT8: a sample of the user's utterances, or the project's general set.

Activation ranges are only as good as the sample they come from, so the sample follows the data:
each label gets its share, and within a label the picks spread evenly over the length distribution.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from edge_electra import dataclass_io
from edge_electra.data import Dataset, Example
from edge_electra.errors import ConfigError, DataError
from edge_electra.resources import resource_dir

DEFAULT_SET = "general.txt"


@dataclass
class CalibrationRecipe:
    num_samples: int = 200
    method: Literal["minmax", "entropy", "percentile"] = "minmax"
    percentile: float = 99.99
    seed: int = 0
    max_length: int = 128

    def __post_init__(self):
        if self.num_samples < 1:
            raise ConfigError(f"num_samples must be at least 1, got {self.num_samples}")
        if not 90.0 <= self.percentile <= 100.0:
            raise ConfigError(f"percentile must be between 90 and 100, got {self.percentile}")


def load_recipe(name_or_path: str | Path) -> CalibrationRecipe:
    """A recipe from a .toml file, or by name from the project's calibration/ folder."""
    path = Path(name_or_path)
    if not path.suffix:
        path = resource_dir("calibration") / f"{name_or_path}.toml"
        if not path.is_file():
            known = sorted(p.stem for p in path.parent.glob("*.toml"))
            raise ConfigError(f"no calibration recipe named {name_or_path!r}; choose one of {known} or pass a .toml")
    return dataclass_io.load(CalibrationRecipe, path)


def default_texts() -> list[str]:
    """The project's general-purpose set: varied assistant-style utterances, for users without data."""
    lines = (resource_dir("calibration") / DEFAULT_SET).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def select_samples(dataset: Dataset | list[Example], n: int, seed: int = 0) -> list[Example]:
    """`n` examples stratified by label, each label's picks spread evenly over its length distribution."""
    examples = list(dataset.examples if isinstance(dataset, Dataset) else dataset)
    if len(examples) < n:
        raise DataError(f"the calibration set has {len(examples)} examples but {n} were asked for; "
                        f"add more data, or ask for at most {len(examples)} samples (num_samples / --calibration-samples)")
    rng = random.Random(seed)
    by_label: dict[str | None, list[Example]] = {}
    for example in examples:
        by_label.setdefault(example.label, []).append(example)
    quotas = _shares(n, {label: len(items) for label, items in by_label.items()})
    picked = []
    for label, items in by_label.items():
        items = sorted(items, key=lambda e: (len(e.text.split()), e.text))
        step = len(items) / quotas[label] if quotas[label] else 0
        # Systematic sampling over the length-sorted items: one pick per equal-width slice.
        picked += [items[int((k + rng.random()) * step)] for k in range(quotas[label])]
    rng.shuffle(picked)
    return picked


def _shares(n: int, sizes: dict) -> dict:
    """Split `n` in proportion to `sizes` (largest remainder), never giving a label more than it has."""
    total = sum(sizes.values())
    exact = {k: n * size / total for k, size in sizes.items()}
    shares = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: exact[k] - shares[k], reverse=True)[:n - sum(shares.values())]:
        shares[k] += 1
    return shares


def calibration_feeds(texts: list[str], tokenizer, batch_size: int = 8,
                      buckets: list[int] | None = None, max_length: int | None = None
                      ) -> list[dict[str, np.ndarray]]:
    """Tokenized batches ready for the calibrator, all of one shape: padded to the set's longest item (or
    the smallest bucket that holds it), since ORT's histogram calibrators stack the batches."""
    if not texts:
        raise DataError("the calibration set is empty; pass a data file with text or use the default set")
    if len(texts) % batch_size:  # equal batch sizes too: top the last batch up from the start of the set
        texts = texts + texts[:batch_size - len(texts) % batch_size]
    if buckets is None:
        buckets = [tokenizer(texts, max_length=max_length).input_ids.shape[1]]
    return [tokenizer(texts[i:i + batch_size], max_length=max_length, buckets=buckets).arrays() for i in range(0, len(texts), batch_size)]
