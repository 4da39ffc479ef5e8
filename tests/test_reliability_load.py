"""Load: 8 threads hammering one Predictor get exactly the sequential answers; memory stays flat over 100k predictions.

The memory test makes its 100,000 predictions alternately as one `predictor(text)` call and one
`predict_batch` of seven texts (12,500 of each): single calls of the tiny model take about 0.5 ms on this
shared 2-core machine, so 100,000 of them (50 s) would not fit beside the kill tests in the time the
reliability files may take; the mix still runs both entry points 12,500 times each, over every bucket.
"""
from __future__ import annotations

import gc
import os
import threading
import time

import numpy as np
import pytest

from edge_electra.runtime.predictor import Prediction, Predictor

from conftest import TEXTS

THREADS = 8
HAMMER_CALLS = 10_000
PREDICTIONS = 100_000
WARM_UP = 5_000
RSS_GROWTH_LIMIT = 4 << 20   # bytes
COUNTS = {"calls hammered": 0, "predictions under the memory watch": 0}

# Utterances of every bucket (16, 32, 64 tokens) and past the 64-token limit, with punctuation and non-ASCII.
POOL = TEXTS + [
    "Turn ON the lights, please!", "play jazz", "  what's the weather in São Paulo?  ", "lights",
    "play some jazz " * 5, "turn on the kitchen lights and play some music by the beatles " * 2,
    "will it rain tomorrow in paris or in london or in berlin " * 3, "tell me a joke " * 30,
    "\u00e9t\u00e9 \u00e0 paris \u2014 m\u00e9t\u00e9o ?", "\U0001f600 play music \U0001f3b5",
]


def signature(prediction: Prediction):
    return (prediction.label, prediction.index, prediction.truncated, prediction.abstained, prediction.slots)


def same(got: Prediction, expected: Prediction) -> bool:
    if signature(got) != signature(expected) or abs(got.score - expected.score) > 1e-6:
        return False
    if expected.probabilities is None:
        return got.probabilities is None
    return got.probabilities is not None and np.allclose(got.probabilities, expected.probabilities, rtol=0, atol=1e-6)


def jobs() -> list[tuple[str, list[str]]]:
    """Calls of both kinds: one text through __call__, or 1-3 texts through predict_batch with probabilities."""
    n = len(POOL)
    out = []
    for i in range(4 * n):
        if i % 3:
            out.append(("call", [POOL[i % n]]))
        else:
            out.append(("batch", [POOL[(i + 5 * k) % n] for k in range(1 + i % 4 // 2 + i % 2)]))
    return out


def run(predictor: Predictor, job) -> list[Prediction]:
    kind, texts = job
    return [predictor(texts[0])] if kind == "call" else predictor.predict_batch(texts, probabilities=True)


def test_threads_hammering_one_predictor_get_the_sequential_answers(tiny_bundle):
    predictor = Predictor.load(tiny_bundle("joint"), threads=1)   # intents and slots: the most shared state
    work = jobs()
    expected = [run(predictor, job) for job in work]
    assert len({len(predictor.encode(texts).input_ids[0]) for _, texts in work}) == 3   # all three buckets
    assert any(p.truncated for ps in expected for p in ps)
    per_thread = HAMMER_CALLS // THREADS
    barrier = threading.Barrier(THREADS)
    failures, errors, done = [], [], [0] * THREADS

    def hammer(thread: int):
        barrier.wait()
        try:
            for k in range(per_thread):
                j = (thread * 7919 + k * 31) % len(work)   # threads walk the jobs in different orders
                got = run(predictor, work[j])
                done[thread] += 1
                if len(got) != len(expected[j]) or not all(map(same, got, expected[j])):
                    failures.append((thread, j, got))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=hammer, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    COUNTS["calls hammered"] += sum(done)
    assert errors == [] and failures[:3] == []
    assert sum(done) == HAMMER_CALLS


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads RSS from /proc")
def test_memory_stays_flat_over_100k_predictions(tiny_bundle):
    predictor = Predictor.load(tiny_bundle("sequence"), threads=1)
    n = len(POOL)

    def predict(count: int, offset: int) -> int:
        made = 0
        for i in range(offset, offset + count // 8):
            assert predictor(POOL[i % n]).label is not None
            batch = [POOL[(i * 3 + k) % n] for k in range(7)]
            assert len(predictor.predict_batch(batch)) == 7
            made += 8
        return made

    predict(WARM_UP, 0)   # every bucket's buffers, ORT's arena and the tokenizer's caches are now in place
    gc.collect()
    start, samples, made = rss_bytes(), [], 0
    began = time.perf_counter()
    for round_ in range(10):
        made += predict(PREDICTIONS // 10, round_ * PREDICTIONS // 80)
        gc.collect()
        samples.append(rss_bytes() - start)
    COUNTS["predictions under the memory watch"] += made
    growth = max(samples)
    print(f"\nRSS {start / 2**20:.1f} MB; growth per 10k predictions (MB): "
          f"{[round(s / 2**20, 2) for s in samples]}; {made} predictions in {time.perf_counter() - began:.1f} s")
    assert made == PREDICTIONS
    assert growth < RSS_GROWTH_LIMIT, f"RSS grew {growth / 2**20:.1f} MB over {made} predictions"
    # No steady climb either: the second half adds (almost) nothing to the first.
    assert samples[-1] - samples[4] < RSS_GROWTH_LIMIT / 4


def test_load_counts_add_up():
    """Runs last in this file."""
    assert COUNTS == {"calls hammered": HAMMER_CALLS, "predictions under the memory watch": PREDICTIONS}
    print(f"\nRELIABILITY load: {COUNTS['calls hammered']} calls hammered by {THREADS} threads on one Predictor; "
          f"{COUNTS['predictions under the memory watch']} predictions with flat RSS")
