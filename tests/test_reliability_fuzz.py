"""Text fuzzing: any input gives a prediction or a clear ValueError (errors.* subclass it), in linear time.

Every fuzzed input is counted into benchmarks/reliability.md by the summary test at the end of the file.
"""
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_electra.errors import EdgeElectraError
from edge_electra.runtime.predictor import Prediction, Predictor
from edge_electra.runtime.tokenizer import Tokenizer

from conftest import TEXTS

settings.register_profile("reliability", max_examples=150, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
RELIABILITY = settings.get_profile("reliability")
FUZZED = {"tokenizer": 0, "predictor": 0, "edge cases": 0}

# Characters that break naive text handling, mixed into arbitrary Unicode (surrogates included).
NASTY = ["\x00", "\x07", "\x1b", "\x7f", "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u202e", "\u202d",
         "\u0600", "\u05d0\u05d1", "\u0627\u0644", "\ud800", "\udfff", "\U0001f469\u200d\U0001f4bb", "\u0301",
         "\n", "\t", "\u3000", "\u00a0", "\ufffd", "\U0010ffff"]
TEXT = st.lists(st.one_of(st.text(alphabet=st.characters(), max_size=40), st.sampled_from(NASTY),
                          st.sampled_from(TEXTS)), max_size=8).map("".join)
ANY_INPUT = st.one_of(TEXT, st.binary(max_size=30), st.sampled_from(["", " ", "\t\n", "\u3000 \u00a0"]),
                      st.integers(), st.none())


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train(TEXTS * 3, vocab_size=200, max_length=64)


@pytest.fixture(scope="module")
def predictors(tiny_bundle):
    return {task: Predictor.load(tiny_bundle(task), threads=1) for task in ("sequence", "joint")}


def is_valid_text(x) -> bool:
    return isinstance(x, str) and bool(x.strip()) and not any(0xD800 <= ord(c) <= 0xDFFF for c in x)


def check_encoding(tokenizer, texts, max_length):
    try:
        encoded = tokenizer(texts, max_length=max_length, buckets=[16, 32, 64])
    except EdgeElectraError as e:
        assert str(e).startswith("input "), e
        assert not all(isinstance(t, str) and is_valid_text(t or "x") for t in texts)
        return
    assert all(isinstance(t, str) for t in texts)
    assert encoded.input_ids.shape[0] == len(texts) and encoded.input_ids.shape[1] in (16, 32, 64)
    assert encoded.input_ids.dtype == np.int64 and encoded.input_ids.max() < tokenizer.vocab_size
    lengths = encoded.attention_mask.sum(1)
    assert (lengths >= 2).all() and (lengths <= max_length).all()   # [CLS] ... [SEP], never over the limit
    assert (encoded.input_ids[:, 0] == tokenizer.cls_id).all()


@RELIABILITY
@given(texts=st.lists(st.one_of(TEXT, st.binary(max_size=20)), min_size=1, max_size=4),
       max_length=st.integers(4, 64))
def test_tokenizer_encodes_or_names_the_bad_input(tokenizer, texts, max_length):
    FUZZED["tokenizer"] += 1
    check_encoding(tokenizer, texts, max_length)


def check_prediction(predictor, text):
    # Text is readable when something of it is left once the tokenizer has normalised it.
    readable = is_valid_text(text) and bool(predictor.tokenizer.tokenize(text))
    try:
        prediction = predictor(text)
    except EdgeElectraError as e:
        assert not readable, f"{text!r} was refused: {e}"
        assert "input 0" in str(e)
        return
    assert readable
    assert isinstance(prediction, Prediction)
    assert 0.0 <= prediction.score <= 1.0 + 1e-6
    assert prediction.label in predictor.labels and prediction.index == predictor.labels.index(prediction.label)
    if predictor.task == "joint":
        assert [w for w, _ in prediction.slots] == text.split()
        assert all(tag is None or tag in predictor.tags for _, tag in prediction.slots)


@RELIABILITY
@given(text=ANY_INPUT, task=st.sampled_from(["sequence", "joint"]))
def test_predictor_gives_a_prediction_or_a_clear_value_error(predictors, text, task):
    FUZZED["predictor"] += 1
    check_prediction(predictors[task], text)


EDGE_CASES = ["", " ", "\u200d", "\u200d\u200d \u200b", "\u202eturn on the lights\u202c", "\u05e9\u05dc\u05d5\u05dd",
              "\ud800", "turn on \udc00 the lights", "\x00\x01\x02", b"turn on the lights", bytearray(b"x"),
              "a" * 1_000_000, "turn on the lights " * 60_000, ("\u200d" * 999_999) + "a"]


@pytest.mark.parametrize("text", EDGE_CASES, ids=lambda t: f"{type(t).__name__}{len(t)}:{ascii(t[:12])}")
@pytest.mark.parametrize("task", ["sequence", "joint"])
def test_edge_cases(predictors, tokenizer, text, task):
    FUZZED["edge cases"] += 1
    start = time.perf_counter()
    check_prediction(predictors[task], text)
    check_encoding(tokenizer, [text], 64)
    assert time.perf_counter() - start < 30   # no hang, even at 1 MB (about 2 s here)


def test_long_inputs_are_truncated_and_flagged(predictors):
    for task, predictor in predictors.items():
        p = predictor("turn on the lights " * 10_000)
        assert p.truncated and len(p.slots or [None] * 40_000) == 40_000
        assert not predictor("turn on the lights").truncated


def best_time(predictor, text, repeats=3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predictor(text)
        times.append(time.perf_counter() - start)
    return min(times)


@pytest.mark.parametrize("task", ["sequence", "joint"])
def test_time_grows_linearly_with_input_length(predictors, task):
    """1 MB takes about 10x as long as 100 KB: no quadratic step in tokenization or slot alignment."""
    words = " ".join(TEXTS) + " "
    small = (words * (100_000 // len(words) + 1))[:100_000]
    large = (words * (1_000_000 // len(words) + 1))[:1_000_000]
    predictors[task](small)   # warm the word cache
    ratio = best_time(predictors[task], large, 2) / best_time(predictors[task], small)
    assert 3 < ratio < 30, ratio   # linear is 10; quadratic would be ~100


def test_fuzz_counts_add_up():
    """Runs last in this file: every fuzzed input above was checked (hypothesis ran its max_examples)."""
    assert FUZZED["tokenizer"] >= RELIABILITY.max_examples and FUZZED["predictor"] >= RELIABILITY.max_examples
    assert FUZZED["edge cases"] == 2 * len(EDGE_CASES)
    print(f"\nRELIABILITY fuzz: {FUZZED}")
