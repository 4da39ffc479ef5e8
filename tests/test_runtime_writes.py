"""Loading a bundle never writes; writers clean up after killed writers, by exact name, never a live writer's files.

A loader looping beside a writer looping on the same bundle always gets a complete bundle, and the writer
never fails; a bundle on a read-only disk with leftovers beside it loads; bundle names holding glob
characters touch nothing of other bundles.
"""
from __future__ import annotations

import builtins
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge_electra.build.package import write_bundle
from edge_electra.errors import BundleError
from edge_electra.runtime.bundle import Bundle, Manifest, TensorSpec
from edge_electra.runtime.predictor import Predictor
from edge_electra.runtime.tokenizer import Tokenizer

SECONDS = 3.0


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train(["turn on the lights", "play some music"], vocab_size=50)


def manifest(labels=("lights", "music")) -> Manifest:
    return Manifest(task="sequence", labels=list(labels), backend="onnx-mobile", precision="fp32",
                    inputs=[TensorSpec("input_ids", "int64", [[1, 8], [1, 64]])],
                    outputs=[TensorSpec("logits", "float32", [[1, 8], len(labels)])], tokenizer={"max_length": 64})


def small_bundle(path: Path, tokenizer, labels=("lights", "music")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    model = path.parent / f"{path.name}-model.bin"
    model.write_bytes(os.urandom(2048))
    return write_bundle(path, manifest(labels), {"model.onnx": model}, tokenizer)


def dead_pid() -> int:
    """The pid of a process that has exited (what a killed writer's names carry)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def tree(folder: Path) -> dict[str, tuple]:
    return {str(p.relative_to(folder)): (p.is_dir(), p.stat().st_mtime_ns, p.is_file() and p.stat().st_size)
            for p in sorted(folder.rglob("*"))}


WRITER = """
import json, sys, time
from pathlib import Path
from edge_electra.build.package import write_bundle
from edge_electra.runtime.bundle import Bundle
source, dest, seconds = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
bundle = Bundle.load(source)
tokenizer, writes, deadline = bundle.tokenizer(), 0, time.time() + seconds
while time.time() < deadline:
    bundle.manifest.created = f"write {writes}"
    write_bundle(dest, bundle.manifest, {"model.onnx": source / "model.onnx"}, tokenizer)
    writes += 1
print(json.dumps({"writes": writes}))
"""

LOADER = """
import json, sys, time
from edge_electra.runtime.bundle import Bundle
from edge_electra.runtime.predictor import Predictor
dest, seconds = sys.argv[1], float(sys.argv[2])
loads, predictions, seen, deadline = 0, 0, set(), time.time() + seconds
while time.time() < deadline:
    seen.add(Bundle.load(dest).manifest.created)
    loads += 1
    if loads % 5 == 0:
        assert Predictor.load(dest, threads=1)("turn on the lights").label
        predictions += 1
print(json.dumps({"loads": loads, "predictions": predictions, "versions": len(seen)}))
"""


def test_a_loader_beside_a_writer_always_gets_a_complete_bundle_and_the_writer_never_fails(tiny_bundle, tmp_path):
    source = tiny_bundle("sequence")
    dest = tmp_path / "live" / "bundle"
    write_bundle(dest, Bundle.load(source).manifest, {"model.onnx": source / "model.onnx"},
                 Bundle.load(source).tokenizer())
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(source), str(dest), str(SECONDS)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    loader = subprocess.Popen([sys.executable, "-c", LOADER, str(dest), str(SECONDS)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wrote, loaded = writer.communicate(timeout=120), loader.communicate(timeout=120)
    assert writer.returncode == 0, wrote[1]
    assert loader.returncode == 0, loaded[1]
    writes, loads = json.loads(wrote[0]), json.loads(loaded[0])
    assert writes["writes"] >= 5 and loads["loads"] >= 5 and loads["predictions"] >= 1, (writes, loads)
    assert loads["versions"] >= 2, loads   # the loader did run while the bundle was being replaced
    Predictor.load(dest, threads=1)("turn on the lights")
    assert sorted(p.name for p in dest.parent.iterdir()) == ["bundle"]


class ReadOnlyDisk:
    """Every way Python writes, removes or renames a file raises EROFS, as on a read-only mount (root too)."""

    CALLS = [(os, "replace"), (os, "rename"), (os, "unlink"), (os, "remove"), (os, "rmdir"), (os, "mkdir"),
             (os, "makedirs"), (shutil, "rmtree"), (shutil, "move")]

    def __init__(self, monkeypatch):
        self.monkeypatch = monkeypatch

    def __enter__(self):
        def refuse(*args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system", str(args[0]) if args else "")
        real_open = builtins.open

        def read_only_open(file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+"):
                refuse(file)
            return real_open(file, mode, *args, **kwargs)
        for module, name in self.CALLS:
            self.monkeypatch.setattr(module, name, refuse)
        self.monkeypatch.setattr(builtins, "open", read_only_open)
        return self

    def __exit__(self, *exc):
        self.monkeypatch.undo()


def test_a_read_only_bundle_with_leftovers_beside_it_loads(tiny_bundle, tmp_path, monkeypatch):
    device = tmp_path / "device"
    bundle = shutil.copytree(tiny_bundle("sequence"), device / "bundle")
    dead = dead_pid()
    staging = device / f".bundle.{dead}-k1ll3d.tmp"    # a killed writer's staging folder, half written
    staging.mkdir()
    (staging / "model.onnx").write_bytes(b"half")
    (device / f".bundle.{dead}-f1le.tmp").write_bytes(b"")   # a killed atomic_file's temporary
    shutil.copytree(bundle, device / f".bundle.old-{dead}")   # a swap cut between its renames (older naming)
    before = tree(device)
    for folder in (device, bundle, staging):
        folder.chmod(0o555)
    try:
        with ReadOnlyDisk(monkeypatch):
            assert Bundle.load(bundle).manifest.labels
            assert Predictor.load(bundle, threads=1)("turn on the lights").label
    finally:
        for folder in (device, bundle, staging):
            folder.chmod(0o755)
    assert tree(device) == before


def test_names_with_glob_characters_touch_nothing_of_other_bundles(tmp_path, tokenizer):
    folder = tmp_path / "w"
    small_bundle(folder / "b", tokenizer)
    dead = dead_pid()
    others = [folder / f".b.{dead}-abc.tmp", folder / f".b.old-{dead}"]   # bundle b's leftovers
    for leftover in others:
        shutil.copytree(folder / "b", leftover)
    with pytest.raises(BundleError, match="not found"):
        Bundle.load(folder / "*")
    for name in ("*", "?", "[b]", "b*"):
        small_bundle(folder / name, tokenizer)
        assert Bundle.load(folder / name).manifest.labels == ["lights", "music"]
    assert all(leftover.is_dir() for leftover in others)
    assert Bundle.load(folder / "b")


def test_writers_clean_up_after_dead_writers_only(tmp_path, tokenizer):
    dest = small_bundle(tmp_path / "b", tokenizer, labels=("old", "labels"))
    dead = dead_pid()
    aside = tmp_path / f".b.{dead}-sw4p.old"
    os.replace(dest, aside)   # a writer killed between the two renames of a swap
    (tmp_path / f".b.{dead}-st4g.tmp").mkdir()
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as running:
        live = tmp_path / f".b.{running.pid}-l1ve.tmp"   # a running writer's staging folder
        live.mkdir()
        with pytest.raises(BundleError, match="not found"):
            Bundle.load(dest)   # loading repairs nothing
        assert aside.is_dir()
        # The next writer puts the old bundle back first, so even a write that fails leaves it in place.
        with pytest.raises(FileNotFoundError):
            write_bundle(dest, manifest(), {"model.onnx": tmp_path / "missing.onnx"}, tokenizer)
        assert Bundle.load(dest).manifest.labels == ["old", "labels"]
        small_bundle(dest, tokenizer)
        running.kill()
    assert Bundle.load(dest).manifest.labels == ["lights", "music"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".b.")) == [live.name]



def test_where_folders_cannot_be_exchanged_two_renames_under_the_lock_do(tmp_path, tokenizer, monkeypatch):
    from edge_electra import atomic
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)   # a system without RENAME_EXCHANGE
    small_bundle(tmp_path / "b", tokenizer, labels=("old", "labels"))
    small_bundle(tmp_path / "b", tokenizer)
    assert Bundle.load(tmp_path / "b").manifest.labels == ["lights", "music"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
