"""The built-in assistant dataset: size, label sets, tag alignment, clean splits, determinism, file round trip."""
import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from edge_electra.tools import builtin_data
from edge_electra.data import load_folder


@pytest.fixture(scope="module")
def data():
    return builtin_data.splits(seed=0)


def test_covers_many_intents_and_out_of_scope(data):
    rows = [e for d in data.values() for e in d.examples]
    per_intent = Counter(e.label for e in rows)
    assert len(rows) >= 1500
    assert len(per_intent) - 1 >= 24 and per_intent["oos"] >= 100
    assert min(per_intent.values()) >= 40
    assert data["train"].out_of_scope_label == "oos"


def test_every_split_is_stratified_with_oos(data):
    for name, dataset in data.items():
        present = {e.label for e in dataset.examples}
        assert present == set(dataset.labels), f"{name} misses intents {set(dataset.labels) - present}"
        share = Counter(dataset.label_ids())[dataset.labels.index("oos")] / len(dataset)
        assert 0.05 < share < 0.15, name


def test_splits_share_no_text(data):
    texts = {name: set(d.texts) for name, d in data.items()}
    assert all(len(texts[n]) == len(data[n]) for n in data)
    assert not texts["train"] & texts["validation"]
    assert not texts["train"] & texts["test"]
    assert not texts["validation"] & texts["test"]


def test_tags_align_with_words_and_label_maps_agree(data):
    for dataset in data.values():
        assert dataset.slot_labels[0] == "O"
        assert dataset.labels == data["train"].labels and dataset.slot_labels == data["train"].slot_labels
        for e in dataset.examples:
            assert len(e.tags) == len(e.text.split()), e.text
            assert set(e.tags) <= set(dataset.slot_labels)
            for prev, tag in zip(["O", *e.tags], e.tags):
                if tag.startswith("I-"):
                    assert prev[2:] == tag[2:], f"{tag} after {prev} in {e.text!r}"
    tagged = [e for e in data["train"].examples if set(e.tags) != {"O"}]
    assert {"B-room", "B-temperature", "B-duration", "B-artist", "B-contact", "B-item", "B-time"} <= set(
        data["train"].slot_labels)
    assert len(tagged) > len(data["train"]) // 3


def test_slot_values_come_back_from_tags(data):
    e = next(e for e in data["train"].examples if e.label == "call_contact" and "B-contact" in e.tags)
    words = e.text.split()
    contact = " ".join(w for w, t in zip(words, e.tags) if t.endswith("-contact"))
    assert contact in builtin_data.SLOT_VALUES["contact"]


def test_same_seed_same_splits_other_seed_other_assignment(data):
    again = builtin_data.splits(seed=0)
    assert {n: d.texts for n, d in again.items()} == {n: d.texts for n, d in data.items()}
    other = builtin_data.splits(seed=1)
    assert set(other["test"].texts) != set(data["test"].texts)
    assert sorted(t for d in other.values() for t in d.texts) == sorted(t for d in data.values() for t in d.texts)


def test_content_is_independent_of_python_hash_seed(tmp_path):
    code = "from edge_electra.tools import builtin_data as b; print(b.splits(3)['test'].texts[:20])"
    outputs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": s}).stdout for s in ("1", "2")}
    assert len(outputs) == 1


def test_write_round_trips_through_load_folder(tmp_path, data):
    folder = builtin_data.write(tmp_path / "builtin")
    meta = json.loads((folder / "labels.json").read_text())
    assert meta == {"labels": data["train"].labels, "tags": data["train"].slot_labels}
    loaded = load_folder(folder)
    for name, dataset in data.items():
        assert loaded[name].labels == dataset.labels
        assert loaded[name].slot_labels == dataset.slot_labels
        assert [(e.text, e.label, e.tags) for e in loaded[name].examples] == \
               [(e.text, e.label, e.tags) for e in dataset.examples]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folder left behind"


def test_corpus_is_large_and_holds_no_labelled_text(data):
    sentences = builtin_data.corpus()
    labelled = {t for d in data.values() for t in d.texts}
    assert len(sentences) >= 3000
    assert len(set(sentences)) == len(sentences)
    assert not labelled & set(sentences)
    assert len({w for s in sentences for w in s.split()}) > 500
