"""The bundle: a folder every backend writes and the Predictor loads.

    manifest.json   what the bundle is (task, labels, backend, precision, inputs, accuracy, versions)
                    and the sha256 of every other file
    tokenizer.json  the tokenizer it was trained with
    model files     whatever the backend needs (model.onnx, model.ort, model.xml/.bin, model.engine)

Bundles are written atomically by edge_electra.build.package and verified here on load. Loading only reads:
it parses JSON and hashes files, never writes, and never unpickles or runs anything from the bundle. Every
file in the folder must be listed in the manifest with its sha256, and every number a runtime sizes its
threads and buffers by must lie within the bounds below.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from edge_electra import dataclass_io
from edge_electra.atomic import folder_lock
from edge_electra.errors import BundleError, EdgeElectraError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
# Larger than any manifest edge-electra writes (a few KB), small enough to read and parse safely.
MAX_MANIFEST_BYTES = 1 << 20
# Sane bounds (inclusive) for the manifest's numbers; threads 0 leaves the choice to the runtime.
THREADS = (0, 256)
BATCH = (1, 4096)
SEQUENCE = (1, 8192)
LABELS = (1, 1 << 16)


@dataclass
class TensorSpec:
    name: str
    dtype: str
    # Each dimension is a fixed size, or [min, max] for a dynamic one.
    shape: list[Any]


@dataclass
class Manifest:
    task: str
    labels: list[str]
    backend: str
    precision: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    tokenizer: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)
    slot_labels: list[str] = field(default_factory=list)
    target: str = ""
    source: dict[str, Any] = field(default_factory=dict)
    accuracy: dict[str, Any] = field(default_factory=dict)
    runtime: dict[str, Any] = field(default_factory=dict)
    candidates: list[dict[str, Any]] = field(default_factory=list)
    # Where the candidates' latencies were measured (the build machine, or a device over SSH), and whether the
    # bundle was built on a machine of another CPU architecture than the target's.
    timed_on: dict[str, Any] = field(default_factory=dict)
    cross_compiled: bool = False
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    format_version: int = FORMAT_VERSION
    checksum: str = ""   # sha256 of the rest of the manifest (see manifest_checksum)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_checksum(raw: dict) -> str:
    """sha256 of a manifest's canonical JSON without its own checksum: a manifest damaged after it was
    written (a flipped bit that still parses, a changed label) no longer matches it."""
    body = {k: v for k, v in raw.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def library_versions(*names: str) -> dict[str, str]:
    versions = {"python": platform.python_version(), "edge-electra": _version("edge-electra")}
    for name in ("numpy", "tokenizers", *names):
        if (v := _version(name)) is not None:
            versions[name] = v
    return {k: v for k, v in versions.items() if v is not None}


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def check_count(value: Any, bounds: tuple[int, int], what: str, error: type[Exception] = BundleError) -> None:
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise error(f"{what} is {value!r:.60}; it must be a whole number from {low} to {high}")


def _check_dimension(dim: Any, bounds: tuple[int, int], what: str) -> None:
    if isinstance(dim, list) and len(dim) == 2:
        check_count(dim[0], bounds, f"{what} (its minimum)")
        check_count(dim[1], bounds, f"{what} (its maximum)")
        if dim[0] > dim[1]:
            raise BundleError(f"{what} is {dim}: its minimum exceeds its maximum")
    else:
        check_count(dim, bounds, what)


def check_values(m: Manifest) -> None:
    """The numbers runtimes size threads, batches and buffers by are whole numbers within sane bounds."""
    for kind, specs in (("input", m.inputs), ("output", m.outputs)):
        for spec in specs:
            last = len(spec.shape) - 1
            for i, dim in enumerate(spec.shape):
                bounds = BATCH if i == 0 else LABELS if kind == "output" and i == last else SEQUENCE
                _check_dimension(dim, bounds, f"{kind} {spec.name!r} dimension {i}")
    for key, bounds in (("threads", THREADS), ("max_batch", BATCH), ("max_seq", SEQUENCE)):
        if key in m.runtime:
            check_count(m.runtime[key], bounds, f"runtime.{key}")
    variants = m.runtime.get("variants", [])
    if not isinstance(variants, list) or not all(isinstance(v, dict) and isinstance(v.get("file"), str)
                                                 for v in variants):
        raise BundleError("runtime.variants must be a list of objects that each name a 'file'")
    for i, variant in enumerate(variants):
        for key, bounds in (("batch", BATCH), ("seq", SEQUENCE)):
            if key in variant:
                check_count(variant[key], bounds, f"runtime.variants[{i}].{key}")
    threshold = m.runtime.get("oos_threshold")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                  or not 0 <= threshold <= 1):
        raise BundleError(f"runtime.oos_threshold is {threshold!r:.60}; it must be a number from 0 to 1")
    if "max_length" in m.tokenizer:
        check_count(m.tokenizer["max_length"], SEQUENCE, "tokenizer.max_length")
    buckets = m.tokenizer.get("buckets") or []
    if not isinstance(buckets, list):
        raise BundleError(f"tokenizer.buckets is {buckets!r:.60}; it must be a list of sequence lengths")
    for bucket in buckets:
        check_count(bucket, SEQUENCE, "a tokenizer bucket")


def read_manifest(path: Path) -> dict:
    """The manifest's JSON object, its checksum checked. Size and nesting are capped before they cost memory
    or a RecursionError."""
    manifest_path = path / MANIFEST
    try:
        with open(manifest_path, "rb") as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):
        raise BundleError(f"{manifest_path} is missing: {path} is not a bundle, or an incomplete one") from None
    except OSError as e:
        raise BundleError(f"{manifest_path} cannot be read ({e.strerror})") from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{manifest_path} is malformed: over {MAX_MANIFEST_BYTES} bytes, far larger than any "
                          "manifest edge-electra writes; rebuild the bundle")
    try:
        raw = json.loads(data)
        checksum = manifest_checksum(raw) if isinstance(raw, dict) else None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{manifest_path} is malformed (not valid JSON: {e}); rebuild the bundle") from e
    except RecursionError:
        raise BundleError(f"{manifest_path} is malformed: nested too deeply to be a manifest; "
                          "rebuild the bundle") from None
    if not isinstance(raw, dict):
        raise BundleError(f"{manifest_path} is malformed: expected a JSON object")
    version = raw.get("format_version")
    if not isinstance(version, int):
        raise BundleError(f"{manifest_path} has no valid format_version")
    if version > FORMAT_VERSION:
        raise BundleError(f"{path} uses bundle format {version}, newer than this edge-electra reads "
                          f"({FORMAT_VERSION}); upgrade edge-electra or rebuild the bundle")
    if raw.get("checksum") != checksum:
        raise BundleError(f"{manifest_path} is corrupt: its checksum does not match its contents (damaged or "
                          "edited after the bundle was written); rebuild the bundle")
    return raw


@dataclass
class Bundle:
    path: Path
    manifest: Manifest

    @classmethod
    def load(cls, path: str | Path, verify: bool = True) -> "Bundle":
        """Read and check the bundle at `path`, writing nothing. The shared folder_lock keeps writers from
        swapping in a new bundle meanwhile, so this reads one complete bundle, the old or the new one."""
        path = Path(path)
        with folder_lock(path.parent, shared=True):
            if not path.is_dir():
                raise BundleError(f"bundle {path} not found (expected a folder with {MANIFEST})")
            raw = read_manifest(path)
            try:
                manifest = dataclass_io.from_dict(Manifest, raw, source=str(path / MANIFEST))
                check_values(manifest)
            except EdgeElectraError as e:
                raise BundleError(f"{path / MANIFEST} is malformed: {e}") from e
            bundle = cls(path, manifest)
            if verify:
                bundle.verify()
        return bundle

    def verify(self) -> None:
        """Every file is listed, present and intact; nothing unlisted lies in the folder (a runtime could
        read it unchecked: an ONNX model's external data, say)."""
        if TOKENIZER not in self.manifest.files:
            raise BundleError(f"{self.path / MANIFEST} does not list {TOKENIZER}")
        for name in self.manifest.files:
            if Path(name).name != name or name in ("", ".", ".."):
                raise BundleError(f"{self.path / MANIFEST} names a file outside the bundle: {name!r}")
        unlisted = sorted(set(os.listdir(self.path)) - {*self.manifest.files, MANIFEST})
        if unlisted:
            raise BundleError(f"{self.path} holds {', '.join(unlisted[:5])}{' ...' if len(unlisted) > 5 else ''}, "
                              f"which {MANIFEST} does not list: a runtime could read it unchecked; remove it, or "
                              "rebuild the bundle")
        for name, expected in self.manifest.files.items():
            file = self.path / name
            if file.is_symlink() and self.path.resolve() not in file.resolve().parents:
                raise BundleError(f"{file} is a link to {file.resolve()}, outside the bundle; a bundle holds "
                                  "its own files: copy the file in, or rebuild the bundle")
            if not file.is_file():
                raise BundleError(f"{file} is missing from the bundle")
            try:
                actual = sha256(file)
            except OSError as e:
                raise BundleError(f"{file} cannot be read ({e.strerror})") from None
            if actual != expected:
                raise BundleError(f"{file} is corrupt: its sha256 does not match the manifest "
                                  "(truncated, modified or half-copied); rebuild or re-copy the bundle")

    def file(self, name: str) -> Path:
        if name not in self.manifest.files:
            raise BundleError(f"{self.path} has no {name!r} (it holds {sorted(self.manifest.files)})")
        return self.path / name

    def tokenizer(self):
        from edge_electra.runtime.tokenizer import load_tokenizer
        return load_tokenizer(self.file(TOKENIZER), self.manifest.tokenizer.get("max_length", 128))

    def size_bytes(self) -> int:
        return sum((self.path / name).stat().st_size for name in self.manifest.files) + \
            (self.path / MANIFEST).stat().st_size

    def summary(self) -> str:
        m = self.manifest
        shapes = ", ".join(f"{t.name}{t.shape}" for t in m.inputs)
        lines = [
            f"bundle     {self.path}",
            f"format     {m.format_version}   created {m.created}",
            f"task       {m.task}   labels {len(m.labels)}" + (f"   slot tags {len(m.slot_labels)}" if m.slot_labels else ""),
            f"backend    {m.backend}   precision {m.precision}" + (f"   target {m.target}" if m.target else ""),
            f"inputs     {shapes}",
            f"tokenizer  max_length {m.tokenizer.get('max_length')}" +
            (f"   buckets {m.tokenizer['buckets']}" if m.tokenizer.get("buckets") else ""),
            f"size       {self.size_bytes() / 1e6:.2f} MB in {len(m.files)} files",
        ]
        if m.source:
            lines.append(f"source     {m.source.get('checkpoint', m.source)}")
        if m.accuracy:
            lines.append("accuracy   " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                    for k, v in m.accuracy.items() if not isinstance(v, (dict, list))))
        lines.append("versions   " + ", ".join(f"{k} {v}" for k, v in m.versions.items()))
        return "\n".join(lines)
