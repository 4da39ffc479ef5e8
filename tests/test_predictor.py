"""The Predictor: same answers as the raw model, padding, truncation, slots, OOS, errors, threads, no torch."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from edge_electra import Prediction, Predictor
from edge_electra.build.package import write_manifest
from edge_electra.runtime.bundle import MANIFEST, Bundle
from edge_electra.errors import BundleError, ConfigError, DataError

from conftest import LABELS, SLOT_LABELS, TEXTS, without_torch_env


def raw_logits(bundle_path, texts, output="logits"):
    """The ONNX model run directly, one unpadded utterance at a time (the reference)."""
    import onnxruntime as ort
    bundle = Bundle.load(bundle_path)
    session = ort.InferenceSession(str(bundle.file("model.onnx")))
    tok = bundle.tokenizer()
    rows = []
    for text in texts:
        feeds = tok([text], max_length=64).arrays()
        rows.append(dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))[output][0])
    return rows


def test_sequence_matches_unpadded_model(tiny_bundle):
    path = tiny_bundle("sequence")
    p = Predictor.load(path, threads=1)
    probs = p.predict_proba(TEXTS)
    assert probs.shape == (len(TEXTS), len(LABELS))
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    expected = np.stack([np.exp(r - r.max()) / np.exp(r - r.max()).sum() for r in raw_logits(path, TEXTS)])
    # Bucket padding and batching (more texts than max_batch 8: split in chunks) must not change results.
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    single = p(TEXTS[0])
    assert isinstance(single, Prediction)
    assert single.index == int(expected[0].argmax()) and single.label == LABELS[single.index]
    assert single.score == pytest.approx(float(expected[0].max()), abs=1e-5)
    assert not single.truncated and not single.abstained and single.slots is None
    assert [q.label for q in p.predict_batch(TEXTS)] == [LABELS[i] for i in expected.argmax(1)]


def test_buffers_are_reused_per_shape(tiny_bundle):
    p = Predictor.load(tiny_bundle("sequence"))
    first = p.feeds(p.encode(["play some jazz"]))
    again = p.feeds(p.encode(["turn on the lights"]))
    assert first["input_ids"] is again["input_ids"] and first["input_ids"].shape == (1, 16)
    longer = p.feeds(p.encode(["play " * 20]))
    assert longer["input_ids"].shape == (1, 32) and longer["input_ids"] is not first["input_ids"]


def test_long_input_is_truncated_and_flagged(tiny_bundle):
    p = Predictor.load(tiny_bundle("sequence"))
    long_text = " ".join(["play some jazz"] * 40)
    short, long = p.predict_batch(["play some jazz", long_text])
    assert long.truncated and not short.truncated
    assert p.encode([long_text]).input_ids.shape[1] == 64


def test_out_of_scope_threshold_abstains(tiny_bundle):
    path = tiny_bundle("sequence")
    scores = [q.score for q in Predictor.load(path).predict_batch(TEXTS)]
    threshold = float(np.median(scores))
    p = Predictor.load(path, oos_threshold=threshold)
    for pred, score in zip(p.predict_batch(TEXTS), scores):
        assert pred.abstained == (score < threshold)
        if pred.abstained:
            assert pred.label == "oos" and pred.index == LABELS.index("oos")
    # Without an out-of-scope label in the bundle the label is the generic "out_of_scope".
    p.labels, p.oos_label, p.oos_threshold = ["a", "b", "c", "d"], "out_of_scope", 1.01
    pred = p("hi")
    assert (pred.label, pred.index, pred.abstained) == ("out_of_scope", -1, True)


@pytest.mark.parametrize("task", ["token", "joint"])
def test_slots_align_to_whitespace_words(tiny_bundle, task):
    path = tiny_bundle(task)
    p = Predictor.load(path)
    text = "lights, please: turn on the kitchen lamp!"
    pred = p(text)
    words = text.split()
    assert [w for w, _ in pred.slots] == words
    assert all(tag in SLOT_LABELS for _, tag in pred.slots)
    # Each word's tag is read at its first word-piece: the tokenizer encodes the whitespace words (splitting
    # punctuation off inside them), and its word ids count those words.
    word_ids = Bundle.load(path).tokenizer()([text], max_length=64).word_ids[0]
    starts = [word_ids.index(w) for w in range(len(words))]
    assert starts == sorted(starts) and len(word_ids) - 2 > len(words)   # "lights," is two pieces or more
    logits = raw_logits(path, [text], "slot_logits" if task == "joint" else "logits")[0]
    assert [tag for _, tag in pred.slots] == [SLOT_LABELS[int(logits[i].argmax())] for i in starts]
    if task == "token":
        assert pred.label is None and 0 < pred.score <= 1
    else:
        assert pred.label in LABELS


def test_truncated_words_get_no_tag(tiny_bundle):
    p = Predictor.load(tiny_bundle("joint"))
    pred = p(" ".join(["kitchen"] * 100))
    assert pred.truncated
    tags = [t for _, t in pred.slots]
    assert len(tags) == 100 and tags[-1] is None and tags[0] is not None


@pytest.mark.parametrize("bad, message", [("", "empty"), ("   \n", "whitespace"), (b"play jazz", "decode"),
                                          (None, "not str"), (3, "not str"),
                                          # Text the tokenizer normalises to nothing is empty too.
                                          ("\u200b\u200b", "empty once normalised"),
                                          ("\x00\x01", "empty once normalised"), ("\ufeff", "empty once normalised"),
                                          ("\u200d \x1c\x0b", "empty once normalised")])
def test_bad_inputs_raise_clear_errors(tiny_bundle, bad, message):
    p = Predictor.load(tiny_bundle("sequence"))
    with pytest.raises(DataError, match=message):
        p(bad)
    with pytest.raises(DataError, match=message):
        p.predict_batch(["fine", bad])
    with pytest.raises(DataError, match="list of strings"):
        p.predict_batch("a single string")


def test_text_that_normalises_to_nothing_is_named_by_its_index(tiny_bundle):
    p = Predictor.load(tiny_bundle("joint"))
    assert p.shapes.max_batch == 8
    with pytest.raises(DataError, match="input 9 is empty once normalised"):
        p.predict_batch(["play some jazz"] * 9 + ["\ufeff\u200b"])   # in the second chunk of 8
    assert p("\u200bplay\x1csome jazz").label in LABELS   # some text left: a prediction


def test_threads_out_of_bounds_are_refused_before_the_runtime_sees_them(tiny_bundle):
    for threads in (10**6, 5000, -1, "4"):
        with pytest.raises(ConfigError, match=r"threads is .* from 0 to 256"):
            Predictor.load(tiny_bundle("sequence"), threads=threads)


def test_version_mismatch_is_a_bundle_error(tiny_bundle):
    path = tiny_bundle("sequence", versions={"onnxruntime": "0.9.0"})
    with pytest.raises(BundleError, match=r"onnxruntime 0\.9\.0.*recompile"):
        Predictor.load(path)


def test_label_count_mismatch_names_the_manifest(tiny_bundle, tmp_path):
    path = tiny_bundle("sequence")
    copy = tmp_path / "bundle"
    copy.mkdir()
    for f in path.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["labels"] = manifest["labels"] + ["extra"]
    write_manifest(copy / MANIFEST, manifest)
    with pytest.raises(BundleError, match=f"{MANIFEST}.*5 labels.*has 4"):
        Predictor.load(copy)
    # The same check holds when the manifest's output shape is dynamic: it fires on the first run.
    manifest["outputs"][0]["shape"][-1] = [1, 100]
    write_manifest(copy / MANIFEST, manifest)
    p = Predictor.load(copy)
    with pytest.raises(BundleError, match="5 labels.*has 4"):
        p("play some jazz")


def test_fixed_batch_profile_pads_rows(tiny_bundle):
    path = tiny_bundle("sequence", inputs=[{"name": n, "dtype": "int64", "shape": [4, [1, 64]]}
                                           for n in ("input_ids", "attention_mask", "token_type_ids")])
    p = Predictor.load(path)
    assert p.shapes.fixed_batch == 4 and p.shapes.max_batch == 8
    p.shapes.max_batch = 4
    feeds = p.feeds(p.encode(TEXTS[:3]))
    assert feeds["input_ids"].shape[0] == 4 and not feeds["attention_mask"][3].any()
    reference = Predictor.load(tiny_bundle("sequence")).predict_proba(TEXTS)
    np.testing.assert_allclose(p.predict_proba(TEXTS), reference, atol=1e-5)


def test_shape_range_without_buckets_pads_to_its_minimum(tiny_bundle):
    path = tiny_bundle("sequence", tokenizer={"max_length": 64},
                       inputs=[{"name": n, "dtype": "int64", "shape": [[1, 8], [24, 40]]}
                               for n in ("input_ids", "attention_mask", "token_type_ids")])
    p = Predictor.load(path)
    assert (p.shapes.buckets, p.shapes.min_length, p.shapes.max_length) == (None, 24, 40)
    assert p.feeds(p.encode(["play some jazz"]))["input_ids"].shape == (1, 24)
    assert p(" ".join(["play some jazz"] * 20)).truncated
    reference = Predictor.load(tiny_bundle("sequence")).predict_proba(TEXTS)
    np.testing.assert_allclose(p.predict_proba(TEXTS), reference, atol=1e-5)


def test_concurrent_callers_get_their_own_answers(tiny_bundle):
    p = Predictor.load(tiny_bundle("joint"))
    texts = TEXTS + [" ".join(["play some jazz"] * 12)]
    expected = [(q.label, q.slots) for q in (p(t) for t in texts)]
    failures = []

    def worker(offset):
        for i in range(30):
            k = (i + offset) % len(texts)
            got = p(texts[k])
            if (got.label, got.slots) != expected[k]:
                failures.append((k, got))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


DEVICE_SCRIPT = """
import json, sys
from edge_electra import Predictor
p = Predictor.load(sys.argv[1], threads=1)
pred = p("turn on the kitchen lights")
blocked = []
for name in ("torch", "tomli_w", "onnx", "transformers", "safetensors"):
    try:
        __import__(name)
    except ImportError:
        blocked.append(name)
print(json.dumps({"label": pred.label, "slots": pred.slots, "blocked": blocked,
                  "modules": sorted(name for name in sys.modules if name.startswith("edge_electra."))}))
"""
BUILD_SIDE = ("edge_electra.build", "edge_electra.train", "edge_electra.tools")


def test_predictor_and_cli_run_with_only_what_a_device_installs(tiny_bundle, tmp_path):
    """numpy, tokenizers, click and onnxruntime: torch, tomli_w, onnx and the rest cannot be imported. Loading
    and predicting import nothing of the build, training or tools side."""
    path = str(tiny_bundle("joint"))
    env = without_torch_env(tmp_path)
    done = subprocess.run([sys.executable, "-c", DEVICE_SCRIPT, path], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["blocked"] == ["torch", "tomli_w", "onnx", "transformers", "safetensors"]
    assert result["label"] in LABELS and len(result["slots"]) == 5
    assert "edge_electra.runtime.predictor" in result["modules"]
    assert [m for m in result["modules"] if m.startswith(BUILD_SIDE)] == []
    for argv in (["info", path], ["bench", path, "--help"]):
        done = subprocess.run([sys.executable, "-m", "edge_electra.cli", *argv], env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr


def test_device_side_source_imports_nothing_of_the_build_side():
    """Not even lazily, inside a function: runtime/ names no module of build/, train/ or tools/."""
    import ast
    from pathlib import Path
    import edge_electra.runtime
    for source in Path(edge_electra.runtime.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [n for n in names if n.startswith(BUILD_SIDE)], (source.name, names)
