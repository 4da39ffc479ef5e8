"""The bundle: a folder every backend writes and the Predictor loads.

    manifest.json   what the bundle is (task, labels, backend, precision, inputs, accuracy, versions)
                    and the sha256 of every other file
    tokenizer.json  the tokenizer it was trained with
    model files     whatever the backend needs (model.onnx, model.ort, model.xml/.bin, model.engine)

Bundles are written atomically and verified on load. Loading reads JSON and hashes files only:
it never unpickles or runs anything from the bundle.
"""
from __future__ import annotations

import hashlib
import json
import platform
import shutil
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from edge_electra import dataclass_io
from edge_electra.atomic import atomic_dir, recover
from edge_electra.errors import BundleError, ConfigError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"


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


def write_manifest(path: Path, raw: dict) -> None:
    raw = {**raw, "checksum": manifest_checksum(raw)}
    path.write_text(json.dumps(raw, indent=2) + "\n")


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


def write_bundle(dest: str | Path, manifest: Manifest, files: dict[str, str | Path], tokenizer) -> Path:
    """Copy `files` (bundle name → source path) and the tokenizer into `dest`, atomically.

    The manifest's `files` are filled with each file's sha256. A failure at any point leaves
    `dest` as it was before.
    """
    dest = Path(dest)
    recover(dest)
    for name in files:
        if Path(name).name != name or name in (MANIFEST, TOKENIZER):
            raise BundleError(f"bundle file name {name!r} must be a plain file name other than "
                              f"{MANIFEST} and {TOKENIZER}")
    with atomic_dir(dest) as tmp:
        for name, src in files.items():
            shutil.copyfile(src, tmp / name)
        tokenizer.save(tmp / TOKENIZER)
        manifest.files = {name: sha256(tmp / name) for name in sorted([*files, TOKENIZER])}
        manifest.created = manifest.created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        manifest.versions = {**library_versions(), **manifest.versions}
        manifest.checksum = manifest_checksum(dataclass_io.to_dict(manifest))
        write_manifest(tmp / MANIFEST, dataclass_io.to_dict(manifest))
    return dest


@dataclass
class Bundle:
    path: Path
    manifest: Manifest

    @classmethod
    def load(cls, path: str | Path, verify: bool = True) -> "Bundle":
        path = Path(path)
        recover(path)
        if not path.is_dir():
            raise BundleError(f"bundle {path} not found (expected a folder with {MANIFEST})")
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise BundleError(f"{manifest_path} is missing: {path} is not a bundle, or an incomplete one")
        try:
            raw = json.loads(manifest_path.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BundleError(f"{manifest_path} is malformed (not valid JSON: {e}); rebuild the bundle") from e
        if not isinstance(raw, dict):
            raise BundleError(f"{manifest_path} is malformed: expected a JSON object")
        version = raw.get("format_version")
        if not isinstance(version, int):
            raise BundleError(f"{manifest_path} has no valid format_version")
        if version > FORMAT_VERSION:
            raise BundleError(f"{path} uses bundle format {version}, newer than this edge-electra reads "
                              f"({FORMAT_VERSION}); upgrade edge-electra or rebuild the bundle")
        if raw.get("checksum") != manifest_checksum(raw):
            raise BundleError(f"{manifest_path} is corrupt: its checksum does not match its contents (damaged or "
                              "edited after the bundle was written); rebuild the bundle")
        try:
            manifest = dataclass_io.from_dict(Manifest, raw, source=str(manifest_path))
        except ConfigError as e:
            raise BundleError(f"{manifest_path} is malformed: {e}") from e
        bundle = cls(path, manifest)
        if verify:
            bundle.verify()
        return bundle

    def verify(self) -> None:
        if TOKENIZER not in self.manifest.files:
            raise BundleError(f"{self.path / MANIFEST} does not list {TOKENIZER}")
        for name, expected in self.manifest.files.items():
            file = self.path / name
            if Path(name).name != name:
                raise BundleError(f"{self.path / MANIFEST} names a file outside the bundle: {name!r}")
            if not file.is_file():
                raise BundleError(f"{file} is missing from the bundle")
            if sha256(file) != expected:
                raise BundleError(f"{file} is corrupt: its sha256 does not match the manifest "
                                  "(truncated, modified or half-copied); rebuild or re-copy the bundle")

    def file(self, name: str) -> Path:
        if name not in self.manifest.files:
            raise BundleError(f"{self.path} has no {name!r} (it holds {sorted(self.manifest.files)})")
        return self.path / name

    def tokenizer(self):
        from edge_electra.runtime.tokenizer import Tokenizer
        return Tokenizer.from_file(self.file(TOKENIZER), self.manifest.tokenizer.get("max_length", 128))

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
