"""Calibration sets: stratified by label, matching lengths, rejected up front when too small."""
import collections
import json

import numpy as np
import pytest

from edge_electra import dataclass_io
from edge_electra.build.calibration import (CalibrationRecipe, calibration_feeds, default_texts, load_recipe,
                                      select_samples)
from edge_electra.data import Dataset, Example
from edge_electra.errors import ConfigError, DataError
from edge_electra.resources import resource_dir
from edge_electra.runtime.tokenizer import Tokenizer


def skewed_dataset():
    """Label a: 300 short items; label b: 100 long ones; label c: 20 of mixed length."""
    rng = np.random.default_rng(0)
    examples = [Example(" ".join(["word"] * int(rng.integers(2, 6))), "a") for _ in range(300)]
    examples += [Example(" ".join(["long"] * int(rng.integers(15, 30))), "b") for _ in range(100)]
    examples += [Example(" ".join(["mix"] * n), "c") for n in range(1, 21)]
    return Dataset(examples, ["a", "b", "c"])


def test_samples_are_stratified_by_label_and_follow_each_labels_lengths():
    data = skewed_dataset()
    picked = select_samples(data, 84, seed=1)
    assert len(picked) == 84
    assert collections.Counter(e.label for e in picked) == {"a": 60, "b": 20, "c": 4}
    for label in "abc":
        population = sorted(len(e.text.split()) for e in data.examples if e.label == label)
        sample = [len(e.text.split()) for e in picked if e.label == label]
        # Systematic sampling over sorted lengths: the sample's median sits near the population's.
        assert abs(np.median(sample) - np.median(population)) <= 0.15 * (population[-1] - population[0]) + 1
    assert len({id(e) for e in picked}) == len(picked)  # no duplicates
    assert [e.text for e in select_samples(data, 84, seed=1)] == [e.text for e in picked]
    assert [e.text for e in select_samples(data, 84, seed=2)] != [e.text for e in picked]


def test_a_set_smaller_than_asked_is_rejected_with_the_fix():
    with pytest.raises(DataError, match="420 examples but 500 were asked for.*at most 420"):
        select_samples(skewed_dataset(), 500)


def test_default_set_and_recipes():
    texts = default_texts()
    assert len(texts) >= 300 and len(set(texts)) == len(texts)
    assert len({len(t.split()) for t in texts}) >= 10  # varied lengths
    recipes = sorted(p.stem for p in resource_dir("calibration").glob("*.toml"))
    assert {"default", "entropy", "percentile"} <= set(recipes)
    for name in recipes:
        assert isinstance(load_recipe(name), CalibrationRecipe)
    assert load_recipe("entropy").method == "entropy"
    with pytest.raises(ConfigError, match="no calibration recipe"):
        load_recipe("nonexistent")
    with pytest.raises(ConfigError):
        CalibrationRecipe(num_samples=0)


def test_recipe_round_trips(tmp_path):
    recipe = CalibrationRecipe(num_samples=64, method="percentile", percentile=99.9, seed=3)
    dataclass_io.save(recipe, tmp_path / "r.toml")
    assert dataclass_io.load(CalibrationRecipe, tmp_path / "r.toml") == recipe


def test_feeds_share_one_shape_for_histogram_calibrators():
    texts = default_texts()[:37]
    tokenizer = Tokenizer.train(texts, vocab_size=200, max_length=32)
    feeds = calibration_feeds(texts, tokenizer, batch_size=8)
    assert len(feeds) == 5 and len({f["input_ids"].shape for f in feeds}) == 1
    assert set(feeds[0]) == {"input_ids", "attention_mask", "token_type_ids"}
    assert max(f["attention_mask"].sum(1).max() for f in feeds) == feeds[0]["input_ids"].shape[1]  # the longest
    with pytest.raises(DataError, match="empty"):
        calibration_feeds([], tokenizer)


def test_calibration_text_from_any_data_format(tmp_path):
    """--calibration takes plain text, JSONL, or the 'text' column of a CSV/TSV/JSON data file."""
    from edge_electra.data import read_text_lines
    texts = ["turn on, the lights", "play jazz"]
    (tmp_path / "a.txt").write_text("\n".join(texts) + "\n\n")
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    (tmp_path / "a.csv").write_text('label,text\nx,"turn on, the lights"\ny,play jazz\n')
    (tmp_path / "a.tsv").write_text("text\tlabel\nturn on, the lights\tx\nplay jazz\ty\n")
    (tmp_path / "a.json").write_text(json.dumps([{"text": t, "label": "x"} for t in texts]))
    for name in ("a.txt", "a.jsonl", "a.csv", "a.tsv", "a.json"):
        assert list(read_text_lines([tmp_path / name])) == texts, name
