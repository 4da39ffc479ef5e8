"""Slot span F1 as seqeval counts it (CoNLL style, default mode), on cases worked out by hand."""
import pytest

from edge_electra.metrics import slot_f1, spans


@pytest.mark.parametrize("tags, expected", [
    (["B-city", "I-city", "O", "B-date"], {("city", 0, 2), ("date", 3, 4)}),
    # An I- without a B- starts a span, after O or at the start of the sentence.
    (["I-city", "I-city", "O", "I-date"], {("city", 0, 2), ("date", 3, 4)}),
    # An I- of another type ends the span and starts its own; a B- always starts a new one.
    (["B-city", "I-date", "I-date"], {("city", 0, 1), ("date", 1, 3)}),
    (["B-city", "I-city", "B-city"], {("city", 0, 2), ("city", 2, 3)}),
    (["B-city", "B-date"], {("city", 0, 1), ("date", 1, 2)}),
    # None (a word cut off by truncation) ends a span like O.
    (["B-city", None, "I-city"], {("city", 0, 1), ("city", 2, 3)}),
    (["O", "O"], set()),
])
def test_spans_follow_seqeval(tags, expected):
    assert spans(tags) == expected


def test_span_f1_is_micro_over_exact_spans_and_sentences():
    # Two gold spans, one found exactly: precision 1, recall 1/2, F1 2/3.
    assert slot_f1([["B-per", "I-per", "O", "B-loc"]], [["B-per", "I-per", "O", "O"]]) == pytest.approx(2 / 3)
    # A partial match counts for nothing: the predicted span (0, 2) is not the gold (0, 3).
    assert slot_f1([["B-a", "I-a", "I-a"]], [["B-a", "I-a", "O"]]) == 0.0
    # seqeval reads "O I-per I-per" as one span, the same as "O B-per I-per".
    assert slot_f1([["O", "B-per", "I-per"]], [["O", "I-per", "I-per"]]) == 1.0
    # Counts are summed over sentences before dividing: gold 3 spans, predicted 3, 2 correct.
    gold = [["B-a", "O"], ["B-b", "I-b"], ["B-c"]]
    pred = [["B-a", "O"], ["B-b", "O"], ["B-c"]]
    assert slot_f1(gold, pred) == pytest.approx(2 / 3)
    # A span never runs across two sentences (seqeval separates them with O).
    assert slot_f1([["B-a"], ["I-a"]], [["B-a"], ["B-a"]]) == 1.0
    # Extra predicted spans cost precision: gold 1, predicted 3, 1 correct → P 1/3, R 1, F1 1/2.
    assert slot_f1([["B-a", "O", "O"]], [["B-a", "B-b", "I-c"]]) == pytest.approx(0.5)
    assert slot_f1([["O"]], [["O"]]) == 0.0
