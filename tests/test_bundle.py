"""Bundles: round trip, every kind of damage caught with a message naming the file, atomic writes."""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from edge_electra.build.package import write_bundle, write_manifest
from edge_electra.runtime.bundle import FORMAT_VERSION, MAX_MANIFEST_BYTES, Bundle, Manifest, TensorSpec, sha256
from edge_electra.errors import BundleError
from edge_electra.runtime.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train(["turn on the lights", "play some music", "what time is it"], vocab_size=60)


def manifest(**changes):
    fields = dict(task="sequence", labels=["lights", "music", "time"], backend="onnx-mobile", precision="fp32",
                  inputs=[TensorSpec("input_ids", "int64", [[1, 8], [1, 128]])],
                  outputs=[TensorSpec("logits", "float32", [[1, 8], 3])], tokenizer={"max_length": 128})
    return Manifest(**{**fields, **changes})


@pytest.fixture
def bundle(tmp_path, tokenizer):
    (tmp_path / "model.onnx").write_bytes(os.urandom(4096))
    return write_bundle(tmp_path / "b", manifest(), {"model.onnx": tmp_path / "model.onnx"}, tokenizer)


def test_round_trip(bundle, tokenizer):
    loaded = Bundle.load(bundle)
    assert loaded.manifest.labels == ["lights", "music", "time"]
    assert loaded.manifest.inputs[0].shape == [[1, 8], [1, 128]]
    assert set(loaded.manifest.files) == {"model.onnx", "tokenizer.json"}
    assert loaded.manifest.format_version == FORMAT_VERSION
    assert "tokenizers" in loaded.manifest.versions
    assert loaded.tokenizer().tokenize("turn on the lights") == tokenizer.tokenize("turn on the lights")
    assert "onnx-mobile" in loaded.summary()


@pytest.mark.parametrize("damage,message", [
    (lambda b: (b / "model.onnx").unlink(), "model.onnx is missing"),
    (lambda b: (b / "model.onnx").write_bytes((b / "model.onnx").read_bytes()[:100]), "model.onnx is corrupt"),
    (lambda b: (b / "tokenizer.json").write_text("{}"), "tokenizer.json is corrupt"),
    (lambda b: (b / "manifest.json").unlink(), "manifest.json is missing"),
    (lambda b: (b / "manifest.json").write_text((b / "manifest.json").read_text()[:50]), "malformed"),
    (lambda b: (b / "manifest.json").write_text("[]"), "malformed"),
])
def test_damage_is_caught(bundle, damage, message):
    damage(bundle)
    with pytest.raises(BundleError, match=message):
        Bundle.load(bundle)


def test_bit_flip_is_caught(bundle):
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[1000] ^= 0x01
    (bundle / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.onnx is corrupt"):
        Bundle.load(bundle)


def test_a_manifest_edited_after_writing_is_refused(bundle):
    raw = json.loads((bundle / "manifest.json").read_text())
    raw["labels"][0] = raw["labels"][0].upper()   # still valid JSON and a valid manifest
    (bundle / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="manifest.json is corrupt: its checksum does not match"):
        Bundle.load(bundle)


def test_newer_format_is_refused(bundle):
    raw = json.loads((bundle / "manifest.json").read_text())
    raw["format_version"] = FORMAT_VERSION + 1
    write_manifest(bundle / "manifest.json", raw)
    with pytest.raises(BundleError, match="newer than this edge-electra reads"):
        Bundle.load(bundle)


def test_manifest_cannot_point_outside(bundle):
    raw = json.loads((bundle / "manifest.json").read_text())
    raw["files"]["../escape"] = "0" * 64
    write_manifest(bundle / "manifest.json", raw)
    with pytest.raises(BundleError, match="outside the bundle"):
        Bundle.load(bundle)


def test_a_listed_file_linked_outside_the_bundle_is_refused(bundle, tmp_path):
    # The hash matches (it is the same bytes), so only the link check keeps a runtime from reading outside.
    outside = tmp_path / "outside.onnx"
    os.replace(bundle / "model.onnx", outside)
    os.symlink(outside, bundle / "model.onnx")
    with pytest.raises(BundleError, match="outside the bundle"):
        Bundle.load(bundle)


def test_failed_rewrite_keeps_the_old_bundle(bundle, tmp_path, tokenizer):
    before = (bundle / "manifest.json").read_text()
    with pytest.raises(FileNotFoundError):
        write_bundle(bundle, manifest(), {"model.onnx": tmp_path / "does-not-exist.onnx"}, tokenizer)
    assert (bundle / "manifest.json").read_text() == before
    Bundle.load(bundle)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_killed_writer_leaves_no_partial_bundle(tmp_path):
    """SIGKILL a writer in the middle of copying a large file: no bundle, or a complete one."""
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(64 << 20))
    script = textwrap.dedent(f"""
        import sys
        from edge_electra.build.package import write_bundle
        from edge_electra.runtime.bundle import Manifest
        from edge_electra.runtime.tokenizer import Tokenizer
        tok = Tokenizer.train(["a b c"], vocab_size=30)
        m = Manifest(task="sequence", labels=["a"], backend="onnx-mobile", precision="fp32", inputs=[], outputs=[],
                     tokenizer={{}})
        print("start", flush=True)
        write_bundle({str(tmp_path / "out")!r}, m, {{"model.onnx": {str(big)!r}}}, tok)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "start"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if (tmp_path / "out").exists():
        Bundle.load(tmp_path / "out")
    else:
        with pytest.raises(BundleError, match="not found"):
            Bundle.load(tmp_path / "out")


def edited(change):
    """Damage: the manifest changed by `change(raw)`, its checksum renewed (a hand edit, or a hostile one)."""
    def damage(bundle):
        raw = json.loads((bundle / "manifest.json").read_text())
        change(raw)
        write_manifest(bundle / "manifest.json", raw)
    return damage


def nested(bundle):
    (bundle / "manifest.json").write_text('{"format_version": 1, "labels": ' + "[" * 200_000 + "]" * 200_000 + "}")


def padded_to_300_mb(bundle):
    """Valid JSON, its checksum still matching: 300 MB of trailing whitespace."""
    with open(bundle / "manifest.json", "a") as f:
        for _ in range(300):
            f.write(" " * (1 << 20))


def input_shape(shape):
    return lambda raw: raw["inputs"][0].update(shape=shape)


# The manifest values of issue 12's table, each refused at load with a BundleError saying what is wrong.
BAD_VALUES = {
    "threads 10^6": (edited(lambda raw: raw["runtime"].update(threads=10**6)),
                     r"runtime.threads is 1000000; .*0 to 256"),
    "threads 5000": (edited(lambda raw: raw["runtime"].update(threads=5000)), r"runtime.threads is 5000"),
    "max_batch <= 0": (edited(lambda raw: raw["runtime"].update(max_batch=0)), r"runtime.max_batch is 0; .*1 to 4096"),
    "batch dimension 10^9": (edited(input_shape([[1, 10**9], [1, 128]])),
                             r"input 'input_ids' dimension 0 \(its maximum\) is 1000000000"),
    "a string for a number": (edited(input_shape([[1, 8], "128"])), r"input 'input_ids' dimension 1 is '128'"),
    "negative buckets": (edited(lambda raw: raw["tokenizer"].update(buckets=[-16, 32])), r"a tokenizer bucket is -16"),
    "nested 200k deep": (nested, r"malformed: nested too deeply"),
    "300 MB": (padded_to_300_mb, rf"malformed: over {MAX_MANIFEST_BYTES} bytes"),
}


@pytest.mark.parametrize("case", BAD_VALUES)
def test_manifest_values_out_of_bounds_are_refused(bundle, case):
    damage, message = BAD_VALUES[case]
    damage(bundle)
    try:
        with pytest.raises(BundleError, match=r"manifest.json is malformed: " + message.removeprefix("malformed: ")):
            Bundle.load(bundle)
    finally:
        (bundle / "manifest.json").unlink()   # 300 MB need not outlive the test


def test_files_the_manifest_does_not_list_are_refused(bundle):
    (bundle / "notes.txt").write_text("not listed")
    with pytest.raises(BundleError, match=r"holds notes.txt, which manifest.json does not list"):
        Bundle.load(bundle)


def test_an_unlisted_external_data_file_is_refused(tiny_bundle, tmp_path):
    """ONNX Runtime reads model.onnx.data beside model.onnx: reversed weights there must not load."""
    onnx = pytest.importorskip("onnx")
    from edge_electra.runtime.predictor import Predictor
    bundle = shutil.copytree(tiny_bundle("sequence"), tmp_path / "b")
    expected = Predictor.load(bundle).predict_proba(["turn on the lights", "play some jazz"])
    onnx.save_model(onnx.load(str(bundle / "model.onnx")), str(bundle / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=0)
    data = bundle / "model.onnx.data"
    weights = data.read_bytes()
    data.write_bytes(weights[::-1])
    edited(lambda raw: raw["files"].update({"model.onnx": sha256(bundle / "model.onnx")}))(bundle)
    for load in (Bundle.load, Predictor.load):
        with pytest.raises(BundleError, match=r"holds model.onnx.data, which manifest.json does not list"):
            load(bundle)
    # Listed and hashed, external data is a bundle file like any other.
    data.write_bytes(weights)
    edited(lambda raw: raw["files"].update({"model.onnx.data": sha256(data)}))(bundle)
    np.testing.assert_allclose(Predictor.load(bundle).predict_proba(["turn on the lights", "play some jazz"]),
                               expected, atol=1e-6)
