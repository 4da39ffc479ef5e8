"""Slot tags land on the words they belong to: one alignment (word_starts over the tokenizer's own word ids)
for training and the Predictor, whatever characters the tokenizer's normalizer drops.

The models here are stand-ins that tag pieces by their token, so no training is needed: a hand-written
WordPiece vocabulary, and runners that return fixed logits per piece position.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_electra.runtime.bundle import Bundle, Manifest, TensorSpec
from edge_electra.runtime.predictor import Predictor
from edge_electra.runtime.tokenizer import Tokenizer

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "turn", "on", "off", "the", "lights", "in", "kitchen",
         "please", ",", "##on", "##s", "light"]
INTENTS = ["lights_on", "lights_off"]
TAGS = ["O", "B-room", "B-misread"]
INPUTS = ["input_ids", "attention_mask", "token_type_ids"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    vocab = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    return Tokenizer.from_vocab(vocab, max_length=64)


def joint_predictor(tokenizer: Tokenizer, runner) -> Predictor:
    manifest = Manifest(
        task="joint", labels=INTENTS, slot_labels=TAGS, backend="onnx-mobile", precision="fp32",
        inputs=[TensorSpec(name, "int64", [[1, 8], [1, 64]]) for name in INPUTS],
        outputs=[TensorSpec("logits", "float32", [[1, 8], len(INTENTS)]),
                 TensorSpec("slot_logits", "float32", [[1, 8], [1, 64], len(TAGS)])],
        tokenizer={"max_length": 64})
    return Predictor(Bundle(Path("in-memory"), manifest), runner, tokenizer)


class Runner:
    input_names = INPUTS
    output_names = ["logits", "slot_logits"]

    def __init__(self, slot_logits):
        self.slot_logits = slot_logits

    def run(self, feeds):
        ids = feeds["input_ids"]
        return {"logits": self.intent_logits(ids), "slot_logits": self.slot_logits(ids)}

    @staticmethod
    def intent_logits(ids: np.ndarray) -> np.ndarray:
        """lights_on where the piece "on" appears (a word of its own), else lights_off."""
        on = (ids == VOCAB.index("on")).any(axis=1)
        return np.stack([on, ~on], axis=1).astype(np.float32) * 4


def one_hot(tags: np.ndarray) -> np.ndarray:
    return np.eye(len(TAGS), dtype=np.float32)[tags] * 6


def tags_kitchen(ids: np.ndarray) -> np.ndarray:
    """B-room on every "kitchen" piece, O elsewhere: what a model that learnt the room slot does."""
    return one_hot(np.where(ids == VOCAB.index("kitchen"), TAGS.index("B-room"), TAGS.index("O")))


def test_a_dropped_control_character_does_not_shift_the_tags(tokenizer):
    """The issue's example: "\\x1c" splits words for str.split() but the normalizer deletes it."""
    predictor = joint_predictor(tokenizer, Runner(tags_kitchen))
    text = "turn\x1con the lights in the kitchen"
    prediction = predictor(text)
    assert prediction.slots == [("turn", "O"), ("on", "O"), ("the", "O"), ("lights", "O"), ("in", "O"),
                                ("the", "O"), ("kitchen", "B-room")]
    assert prediction.label == "lights_on"   # the model saw "turn" and "on" as the words they are
    for dropped in ("\x1d", "\x1e", "\x1f", "\x0b", "\x0c", "\x85"):
        slots = predictor(text.replace("\x1c", dropped)).slots
        assert [tag for _, tag in slots] == ["O"] * 6 + ["B-room"], repr(dropped)


def test_words_the_tokenizer_reduces_to_nothing_get_no_tag_and_shift_nothing(tokenizer):
    predictor = joint_predictor(tokenizer, Runner(tags_kitchen))
    slots = predictor("lights \u200b in the \ufeff kitchen").slots
    assert slots == [("lights", "O"), ("\u200b", None), ("in", "O"), ("the", "O"), ("\ufeff", None),
                     ("kitchen", "B-room")]


TAGGED = [
    ("turn\x1con the lights in the kitchen", "O O O O O O B-room"),
    ("lights , please \u200b in the kitchen", "O O O O O O B-room"),
    ("turn on the\x0blights in the\x85kitchen", "O O O O O O B-room"),
    ("kitchen\x1flights\x0con , please", "B-room O O O O"),
    ("turnon lights \ufeff\u200b kitchens", "O O O B-room"),
]


def test_training_labels_the_pieces_the_predictor_reads(tokenizer):
    """Round trip: training's slot targets, echoed back by a runner as if the model had learnt them exactly,
    come out of the Predictor as the original tags. Every position training left unlabelled reads B-misread,
    so a Predictor that read any other piece than the one training labelled would say so."""
    pytest.importorskip("torch")
    from edge_electra.train.labelled import IGNORE, encode
    texts, tags = [t for t, _ in TAGGED], [tags.split() for _, tags in TAGGED]
    targets = encode(tokenizer, texts, 64, tags=tags, slot_labels=TAGS)["slot_labels"].numpy()
    learnt = {}
    for row, ids in enumerate(tokenizer(texts, max_length=64).input_ids):
        width = int((ids != tokenizer.pad_id).sum())
        learnt[tuple(ids[:width])] = np.where(targets[row, :width] == IGNORE, TAGS.index("B-misread"),
                                              targets[row, :width])

    def echo(ids: np.ndarray) -> np.ndarray:
        out = np.full(ids.shape, TAGS.index("B-misread"))
        for row, piece_ids in enumerate(ids):
            width = int((piece_ids != tokenizer.pad_id).sum())
            out[row, :width] = learnt[tuple(piece_ids[:width])]
        return one_hot(out)

    predictor = joint_predictor(tokenizer, Runner(echo))
    for prediction, text, row_tags in zip(predictor.predict_batch(texts), texts, tags):
        readable = [bool(tokenizer.tokenize(word)) for word in text.split()]
        assert prediction.slots == [(w, t if ok else None) for w, t, ok in zip(text.split(), row_tags, readable)]
