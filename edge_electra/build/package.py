"""Writing bundles (the build side; edge_electra.runtime.bundle only reads them)."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from edge_electra import dataclass_io
from edge_electra.atomic import atomic_dir
from edge_electra.errors import BundleError
from edge_electra.runtime.bundle import MANIFEST, TOKENIZER, Manifest, library_versions, manifest_checksum, sha256


def write_manifest(path: Path, raw: dict) -> None:
    raw = {**raw, "checksum": manifest_checksum(raw)}
    path.write_text(json.dumps(raw, indent=2) + "\n")


def write_bundle(dest: str | Path, manifest: Manifest, files: dict[str, str | Path], tokenizer) -> Path:
    """Copy `files` (bundle name → source path) and the tokenizer into `dest`, atomically.

    The manifest's `files` are filled with each file's sha256. A failure at any point leaves `dest` as it was
    before; readers loading `dest` meanwhile see the old bundle or the new one (see atomic.atomic_dir).
    """
    dest = Path(dest)
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
