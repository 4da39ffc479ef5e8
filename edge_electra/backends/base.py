"""The one small interface every backend implements: compile → bundle files, load → runner."""
from __future__ import annotations

import importlib.util
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from edge_electra.errors import ConfigError

if TYPE_CHECKING:
    from edge_electra.runtime.bundle import Bundle


class Runner(Protocol):
    """Runs a loaded model. Inputs and outputs are numpy arrays keyed by the manifest's tensor names."""

    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class Backend(ABC):
    name: str = ""
    # Extra that installs this backend's runtime, named in errors when it is missing.
    extra: str = ""
    # Modules the backend imports (lazily); `available` checks they are installed.
    requires: tuple[str, ...] = ()
    # StaticQuantConfig fields for the Q/DQ model this backend runs at int8-static (default: the config's).
    static_quant: dict[str, Any] = {}

    @abstractmethod
    def compile(self, request, workdir: Path):
        """Build this backend's model files from a compile request (see edge_electra.build.compile).

        Returns a CompiledModel: {bundle file name: path in workdir}, and manifest fields
        (precision, inputs, outputs, runtime options).
        """

    @abstractmethod
    def load(self, bundle: "Bundle", **options) -> Runner:
        """Open the bundle's model files for inference. Must not import torch."""

    def available(self) -> tuple[bool, str]:
        """Whether this machine can run the backend, and why not."""
        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if missing:
            return False, f"{' and '.join(missing)} not installed (pip install 'edge-electra[{self.extra}]')"
        return True, ""


@dataclass
class CompiledModel:
    """What a backend built: bundle file name → path in the work folder, and its manifest fields."""
    files: dict[str, Path]
    precision: str
    runtime: dict[str, Any] = field(default_factory=dict)
    # Findings worth keeping beside the model (op coverage per EP, builder settings); saved as report.json.
    report: dict[str, Any] = field(default_factory=dict)
    # The ONNX graph the model files were built from, when there is one (the gate names drifting layers in it).
    onnx: Path | None = None


def pick_fixed(variants: dict[int, Any], seq: int) -> Any:
    """The fixed-shape model built for sequence length `seq`."""
    if seq not in variants:
        raise ConfigError(f"this bundle holds fixed-shape models for sequence lengths {sorted(variants)}, got "
                          f"{seq}; pad inputs to one of them (the manifest's tokenizer buckets)")
    return variants[seq]


def run_in_chunks(run, feeds: dict[str, np.ndarray], fixed_batch: int) -> list[np.ndarray]:
    """Run a fixed-batch model on any batch: chunks of `fixed_batch`, the last padded by repeating a row."""
    batch = len(next(iter(feeds.values())))
    parts = []
    for start in range(0, batch, fixed_batch):
        chunk = {n: a[start:start + fixed_batch] for n, a in feeds.items()}
        short = fixed_batch - len(next(iter(chunk.values())))
        if short:
            chunk = {n: np.concatenate([a, np.repeat(a[-1:], short, axis=0)]) for n, a in chunk.items()}
        parts.append([out[:fixed_batch - short] for out in run(chunk)])
    return [np.concatenate(outs) for outs in zip(*parts)]


def user_cache_dir(name: str) -> Path:
    """A per-user cache folder (compiled-model blobs, timing caches): $EDGE_ELECTRA_CACHE or ~/.cache/edge-electra."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edge-electra"
    return Path(os.environ.get("EDGE_ELECTRA_CACHE") or default) / name


def check_feeds(input_names: list[str], feeds: dict) -> None:
    missing = [n for n in input_names if n not in feeds]
    if missing:
        raise ConfigError(f"the model needs input(s) {missing}; got {sorted(feeds)}")
