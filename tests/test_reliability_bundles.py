"""Damaged bundles of every backend that runs here, and proof that loading one runs no code from it.

Real bundles (the tiny_bundle .onnx one, and compile_bundle's x86-avx2-cpu .ort, x86-vnni-cpu OpenVINO and
torch-reference ones): every file the manifest lists is truncated to half, has one bit flipped in its middle,
or is deleted, and the manifest itself is cut, garbled, deleted, or names a newer format or a label count the
model does not have. Each must be a BundleError from `Bundle.load`, `Predictor.load` and `edge-electra info`
that names the file and says what is wrong, never a runtime library's traceback. Bit flips across the
manifest are caught by its checksum even where they leave valid JSON.
Then pickles, Python files and Python expressions planted in a bundle must never run while it loads and predicts.

Every damage tried is counted in CORRUPTED; the last test checks the count and prints it.
"""
from __future__ import annotations

import builtins
import collections
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from edge_electra.build.package import write_manifest  # noqa: E402
from edge_electra.runtime.bundle import FORMAT_VERSION, MANIFEST, Bundle, sha256  # noqa: E402
from edge_electra.train.checkpoint import save_pretrained  # noqa: E402
from edge_electra.cli import main  # noqa: E402
from edge_electra.build.compile import compile_bundle  # noqa: E402
from edge_electra.errors import BundleError  # noqa: E402
from edge_electra.runtime.predictor import Predictor  # noqa: E402

from conftest import LABELS, TEXTS, tiny_model  # noqa: E402

# The files each bundle's manifest lists (asserted below, so the expected count of damages is exact).
FILES = {
    "onnx": {"model.onnx", "tokenizer.json"},
    "ort": {"model.ort", "required_operators.config", "report.json", "tokenizer.json"},
    "openvino": {"model.xml", "model.bin", "report.json", "tokenizer.json"},
    "torch": {"config.json", "model.safetensors", "report.json", "tokenizer.json"},
}
TARGETS = {"ort": "x86-avx2-cpu", "openvino": "x86-vnni-cpu", "torch": "torch-reference"}
CORRUPTED: collections.Counter = collections.Counter()


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    """OpenVINO's compiled-model cache goes to a temporary folder, not ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGE_ELECTRA_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def bundles(tiny_bundle, tmp_path_factory):
    """One real fp32 bundle per backend that runs here, built from a tiny random checkpoint (about 5 s)."""
    root = tmp_path_factory.mktemp("reliability-bundles")
    model, tokenizer = tiny_model()
    folder = save_pretrained(model, root / "ckpt", tokenizer=tokenizer)
    calibration = root / "calibration.txt"
    calibration.write_text("\n".join(TEXTS * 2) + "\n")
    built = {"onnx": tiny_bundle("sequence")}
    for name, target in TARGETS.items():
        built[name] = compile_bundle(folder, target, root / name, precision="fp32", calibration=calibration,
                                     threads=1)
    return built


def copy_of(bundle: Path, dest: Path) -> Path:
    shutil.copytree(bundle, dest)
    return dest


def truncate(path: Path) -> str:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return "truncated"


def flip_bit(path: Path) -> str:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    return "bit flip"


def delete(path: Path) -> str:
    path.unlink()
    return "deleted"


DAMAGES = {"truncate": truncate, "flip": flip_bit, "delete": delete}
# What the message must say, per damage (besides the file's name).
SAYS = {"truncate": r"is corrupt: its sha256 does not match the manifest \(truncated",
        "flip": r"is corrupt: its sha256 does not match the manifest",
        "delete": r"is missing from the bundle"}


def assert_refused(bundle: Path, pattern: str, name: str, predictor_only: bool = False,
                   first_run: bool = False) -> BundleError:
    """Predictor.load (or its first prediction), Bundle.load and `edge-electra info` all refuse `bundle`."""
    import re
    caught = []
    with pytest.raises(BundleError, match=pattern) as error:
        if first_run:
            Predictor.load(bundle, threads=1)("turn on the lights")
        else:
            Predictor.load(bundle, threads=1)
    caught.append(error.value)
    if not predictor_only:
        with pytest.raises(BundleError, match=pattern) as error:
            Bundle.load(bundle)
        caught.append(error.value)
        result = CliRunner().invoke(main, ["info", str(bundle)])
        assert result.exit_code == 2, result.output   # bad input: EdgeElectraError
        assert result.output.startswith("Error: ") and len(result.output.strip().splitlines()) == 1, result.output
        assert re.search(pattern, result.output) and name in result.output
    for e in caught:
        assert name in str(e), f"{e} does not name {name}"
        # Our own check, not a runtime library's error passed through.
        assert e.__cause__ is None or isinstance(e.__cause__, (json.JSONDecodeError, UnicodeDecodeError, ValueError))
    return caught[0]


def test_bundles_list_the_expected_files(bundles):
    for name, path in bundles.items():
        assert set(Bundle.load(path).manifest.files) == FILES[name], name
        Predictor.load(path, threads=1)("turn on the lights")   # the undamaged bundle loads and predicts


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("backend", FILES)
def test_every_listed_file_damaged_is_refused_with_its_name(bundles, tmp_path, backend, damage):
    for file in sorted(Bundle.load(bundles[backend]).manifest.files):
        bundle = copy_of(bundles[backend], tmp_path / f"{file}-{damage}")
        DAMAGES[damage](bundle / file)
        CORRUPTED[f"{damage} file"] += 1
        assert_refused(bundle, f"{file} {SAYS[damage]}", file)


def edit_manifest(bundle: Path, change) -> None:
    raw = json.loads((bundle / MANIFEST).read_text())
    change(raw)
    write_manifest(bundle / MANIFEST, raw)   # a deliberate edit, checksum renewed: the checks behind it


def more_labels(raw):
    raw["labels"] = raw["labels"] + ["extra"]


def dynamic_width_and_more_labels(raw):
    more_labels(raw)
    raw["outputs"][0]["shape"][-1] = [1, 100]


MANIFEST_DAMAGES = {
    "truncated": (truncate, "malformed \\(not valid JSON"),
    "garbled": (lambda p: p.write_bytes(b"\xff\xfe{not json"), "malformed \\(not valid JSON"),
    "not an object": (lambda p: p.write_text('["labels"]'), "malformed: expected a JSON object"),
    "deleted": (delete, "is missing: .* is not a bundle, or an incomplete one"),
    "no format version": (lambda p: edit_manifest(p.parent, lambda raw: raw.pop("format_version")),
                          "has no valid format_version"),
    "newer format": (lambda p: edit_manifest(p.parent, lambda raw: raw.update(format_version=FORMAT_VERSION + 1)),
                     f"uses bundle format {FORMAT_VERSION + 1}, newer than this edge-electra reads"),
    "wrong field type": (lambda p: edit_manifest(p.parent, lambda raw: raw.update(labels="lights_on")),
                         "malformed"),
    "lists a file outside": (lambda p: edit_manifest(p.parent, lambda raw: raw["files"].update({"../x": "0" * 64})),
                             "names a file outside the bundle"),
}


@pytest.mark.parametrize("damage", MANIFEST_DAMAGES)
@pytest.mark.parametrize("backend", FILES)
def test_damaged_manifest_is_refused(bundles, tmp_path, backend, damage):
    bundle = copy_of(bundles[backend], tmp_path / "bundle")
    apply, says = MANIFEST_DAMAGES[damage]
    apply(bundle / MANIFEST)
    CORRUPTED["manifest"] += 1
    assert_refused(bundle, says, MANIFEST if damage not in ("newer format",) else bundle.name)


def flip_at(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


MANIFEST_FLIPS = 24   # evenly spread over manifest.json, per bundle


@pytest.mark.parametrize("backend", FILES)
def test_every_bit_flip_in_the_manifest_is_refused(bundles, tmp_path, backend):
    """A flipped bit either breaks the JSON or changes a value (a label's spelling, an output name, a
    runtime setting) that the manifest's checksum no longer matches: refused, with our own error."""
    data = (bundles[backend] / MANIFEST).read_bytes()
    for offset in [k * len(data) // MANIFEST_FLIPS for k in range(MANIFEST_FLIPS)]:
        bundle = copy_of(bundles[backend], tmp_path / f"flip{offset}")
        flip_at(bundle / MANIFEST, offset)
        CORRUPTED["manifest bit flip"] += 1
        with pytest.raises(BundleError, match=r"manifest.json (is corrupt: its checksum|is malformed|has no valid)"):
            Predictor.load(bundle, threads=1)
        shutil.rmtree(bundle)


@pytest.mark.parametrize("backend", FILES)
def test_a_manifest_that_disagrees_with_the_model_is_refused_by_name(bundles, tmp_path, backend):
    """Edited with a renewed checksum (another build's manifest, a hand edit): the checks behind the checksum."""
    bundle = copy_of(bundles[backend], tmp_path / "output-name")
    edit_manifest(bundle, lambda raw: raw["outputs"][0].update(name="lowits"))
    CORRUPTED["manifest edit"] += 1
    with pytest.raises(BundleError, match=r"manifest.json names output\(s\) \['lowits'\] but the model's outputs "
                                          r"are \['logits'\].*recompile"):
        Predictor.load(bundle, threads=1)
    if backend == "openvino":   # a runtime option of the wrong type: the backend's schema names it
        bundle = copy_of(bundles[backend], tmp_path / "cache")
        edit_manifest(bundle, lambda raw: raw["runtime"].update(cache="yes"))
        CORRUPTED["manifest edit"] += 1
        with pytest.raises(BundleError, match=r"manifest runtime \(backend openvino\): 'cache' must be bool"):
            Predictor.load(bundle, threads=1)


@pytest.mark.parametrize("backend", ["ort", "openvino", "torch"])   # the .onnx bundle: test_predictor.py
def test_label_count_that_disagrees_with_the_model_is_refused(bundles, tmp_path, backend):
    static = copy_of(bundles[backend], tmp_path / "static")
    edit_manifest(static, more_labels)
    CORRUPTED["label count"] += 1
    assert_refused(static, f"{MANIFEST} lists {len(LABELS) + 1} labels but the model's 'logits' output has "
                           f"{len(LABELS)}.*recompile", MANIFEST, predictor_only=True)
    # With a dynamic width in the manifest, the backend's actual output is checked on the first run.
    dynamic = copy_of(bundles[backend], tmp_path / "dynamic")
    edit_manifest(dynamic, dynamic_width_and_more_labels)
    CORRUPTED["label count"] += 1
    assert_refused(dynamic, f"lists {len(LABELS) + 1} labels but the model's 'logits' output has {len(LABELS)}",
                   MANIFEST, predictor_only=True, first_run=True)


# ---- loading runs no code from the bundle ------------------------------------------------------------
class Payload:
    """Unpickling this creates the marker file: proof that something unpickled a bundle file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def plant_payloads(bundle: Path, marker: Path) -> list[str]:
    """Python files a careless loader might import and pickles, all listed in the manifest with valid hashes
    (unlisted files are refused outright), and Python expressions in the manifest's free-form fields. Each
    would create `marker` if run."""
    expression = f"__import__('builtins').open({str(marker)!r}, 'w')"
    scripts = ["sitecustomize.py", "usercustomize.py", "__init__.py", "__main__.py", "model.py", "edge_electra.py",
               "onnxruntime.py", "openvino.py", "numpy.py"]
    for name in scripts:
        (bundle / name).write_text(expression + "\n")
    pickles = ["payload.pkl", "state.pt", "model.pkl", "pytorch_model.bin"]
    for name in pickles[:-1]:
        (bundle / name).write_bytes(pickle.dumps(Payload(marker)))
    torch.save({"weights": Payload(marker)}, bundle / "pytorch_model.bin")
    raw = json.loads((bundle / MANIFEST).read_text())
    raw["files"].update({name: sha256(bundle / name) for name in scripts + pickles})
    raw["created"] = expression
    raw["source"]["note"] = raw["accuracy"]["note"] = expression
    write_manifest(bundle / MANIFEST, raw)
    return pickles


def forbid(name, calls: list):
    """Refuse the call: loading a bundle has no business unpickling or starting processes."""
    def refuse(*args, **kwargs):
        calls.append(f"{name}({args[:1]!r:.200})")
        raise AssertionError(f"{name} was called while loading a bundle")
    return refuse


def watch(name, real, calls: list, bundle: Path, marker: Path):
    """Let exec/eval/compile run (typing evaluates the library's own annotations with them) but record any
    call whose code came from the bundle: text naming the payload's marker, or code compiled from a bundle file."""
    def watched(source, *args, **kwargs):
        text = source.decode("utf-8", "replace") if isinstance(source, bytes) else source
        origin = text.co_filename if hasattr(text, "co_filename") else str(text)
        if str(marker) in origin or str(bundle) in origin or (args and str(bundle) in str(args[0])):
            calls.append(f"{name}({origin!r:.200})")
        return real(source, *args, **kwargs)
    return watched


def executable_mappings_under(folder: Path) -> list[str]:
    """Executable memory mappings of files inside `folder` (a shared library loaded from the bundle)."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        return []
    found = []
    for line in maps.read_text().splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and "x" in parts[1] and parts[5].startswith(str(folder)):
            found.append(line)
    return found


@pytest.mark.parametrize("backend", FILES)
def test_loading_and_predicting_runs_no_code_from_the_bundle(bundles, tmp_path, monkeypatch, backend):
    clean = bundles[backend]
    expected = Predictor.load(clean, threads=1)("turn on the lights")   # warm up: every lazy import done
    bundle = copy_of(clean, tmp_path / "bundle")
    marker = tmp_path / "marker"
    pickles = plant_payloads(bundle, marker)
    # Sanity: the payloads are live (unpickling one would create the marker).
    pickle.loads((bundle / "payload.pkl").read_bytes())
    assert marker.exists()
    marker.unlink()

    modules, path, calls = set(sys.modules), list(sys.path), []
    try:
        for target, attr in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load"),
                             (np, "load"), (os, "system"), (os, "popen"), (subprocess, "Popen")]:
            monkeypatch.setattr(target, attr, forbid(f"{target.__name__}.{attr}", calls))
        for attr in ("exec", "eval", "compile"):
            monkeypatch.setattr(builtins, attr, watch(attr, getattr(builtins, attr), calls, bundle, marker))
        monkeypatch.chdir(bundle)   # even with the bundle as the working folder (first on sys.path for `python -c`)
        predictor = Predictor.load(bundle, threads=1)
        got = predictor("turn on the lights")
        batch = predictor.predict_batch(TEXTS)
    finally:
        monkeypatch.undo()

    CORRUPTED["code payload"] += 1
    assert calls == []
    assert (got.label, got.index) == (expected.label, expected.index) and len(batch) == len(TEXTS)
    assert not marker.exists(), "a file from the bundle was run or unpickled"
    assert sys.path == path
    new = [m for m in set(sys.modules) - modules
           if str(getattr(sys.modules[m], "__file__", "") or "").startswith(str(bundle))]
    assert new == [], f"modules imported from the bundle: {new}"
    assert executable_mappings_under(bundle) == []
    assert set(pickles) <= set(predictor.bundle.manifest.files)   # listed, hashed, and still never opened as pickles


def test_corruption_counts_add_up(bundles):
    """Runs last in this file: every damage above was tried on every bundle."""
    files = sum(len(f) for f in FILES.values())
    expected = {"truncate file": files, "flip file": files, "delete file": files,
                "manifest": len(MANIFEST_DAMAGES) * len(FILES), "label count": 2 * 3, "code payload": len(FILES),
                "manifest bit flip": MANIFEST_FLIPS * len(FILES), "manifest edit": len(FILES) + 1}
    assert dict(CORRUPTED) == expected
    print(f"\nRELIABILITY bundles: {sum(CORRUPTED.values())} corruptions tried {dict(CORRUPTED)}")
