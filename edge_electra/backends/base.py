"""The one small interface every backend implements (compile → bundle files, load → runner), and the facts
each backend declares about itself, so that nothing else in the package has to name a backend.

A backend module keeps its two sides apart: the device side (its runner and `load`) imports nothing from
edge_electra.build, train or tools; the build side (`compile`) imports build code inside the method only.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from edge_electra import dataclass_io
from edge_electra.errors import BundleError, ConfigError

if TYPE_CHECKING:
    from edge_electra.runtime.bundle import Bundle


class Runner(Protocol):
    """Runs a loaded model. Inputs and outputs are numpy arrays keyed by the manifest's tensor names."""

    input_names: list[str]
    output_names: list[str]
    # Where the model actually runs (an execution provider, an OpenVINO device, a GPU), which can differ
    # from what the bundle asked for when that is missing on this machine.
    device: str

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@dataclass
class NoOptions:
    """The runtime options of a backend that has none."""


class Backend(ABC):
    name: str = ""
    # Precisions `compile` can build for this backend (names from edge_electra.build.targets.PRECISIONS).
    precisions: tuple[str, ...] = ("fp32",)
    # The typed schema of a profile's [runtime] table; a bundle's manifest keeps these keys in its runtime.
    options: type = NoOptions
    # The distribution whose version the model files depend on: a bundle built with another major
    # version of it is refused at load.
    library: str = ""
    # Build-side distributions whose versions the manifest records too.
    build_libraries: tuple[str, ...] = ()
    # Modules the runner imports (lazily), and the pip extra that installs them.
    requires: tuple[str, ...] = ()
    extra: str = ""
    # The Q/DQ recipe: StaticQuantConfig fields for the model this backend builds from at int8-static.
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
        """Whether this machine can build and run the backend, and why not."""
        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if missing:
            return False, f"{' and '.join(missing)} not installed (pip install 'edge-electra[{self.extra}]')"
        return True, ""

    # ---- options -------------------------------------------------------------------------------
    def parse_options(self, runtime: dict, where: str, strict: bool = True):
        """The typed options from a profile's runtime table (strict: unknown keys are refused), or from a
        manifest's runtime, which also holds what compile recorded beside them."""
        if not isinstance(runtime, dict):
            raise ConfigError(f"{where} must be a table/object, got {type(runtime).__name__}")
        if not strict:
            names = {f.name for f in dataclasses.fields(self.options)}
            runtime = {k: v for k, v in runtime.items() if k in names}
        source = f"{where} (backend {self.name})"
        try:
            return dataclass_io.from_dict(self.options, runtime, source=source)
        except ConfigError as e:
            if str(e).startswith(source):
                raise
            raise ConfigError(f"{source}: {e}") from e   # the options' own checks do not know the source

    def bundle_options(self, bundle: "Bundle"):
        """The options a bundle's manifest records, validated: a damaged value is a BundleError."""
        try:
            return self.parse_options(bundle.manifest.runtime, f"{bundle.path} manifest runtime", strict=False)
        except ConfigError as e:
            raise BundleError(f"{e}; recompile the bundle") from e

    # ---- what this machine offers --------------------------------------------------------------
    def runs_on(self, options) -> str:
        """What a profile with these options runs on, in a few words (the targets table)."""
        return self.name

    def runs_here(self, options) -> str:
        """Whether this machine can build and run a profile with these options, and on what."""
        ok, why = self.available()
        return "yes" if ok else f"no: {why.split(' (')[0]}"

    def devices(self) -> list[str]:
        """The devices this backend's library sees here (only called when it is available)."""
        return []


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


@dataclass
class Variant:
    """One model file of a bundle; a fixed-shape one names the sequence length and batch it takes."""
    file: str
    seq: int | None = None
    batch: int | None = None


def bundle_variants(bundle: "Bundle", defaults: tuple[str, ...]) -> list[Variant]:
    """The manifest's model variants, each checked to be a file the manifest lists; when it names none, the
    one dynamic-shape model: the first of `defaults` the bundle holds."""
    raw = bundle.manifest.runtime.get("variants")
    if not raw:
        held = [name for name in defaults if name in bundle.manifest.files]
        if not held:
            raise BundleError(f"{bundle.path} holds none of {list(defaults)} for the {bundle.manifest.backend} "
                              "backend; recompile the bundle")
        raw = [{"file": held[0]}]
    try:
        if not isinstance(raw, list):
            raise ConfigError(f"'variants' must be a list, got {type(raw).__name__}")
        variants = [dataclass_io.from_dict(Variant, v, source="variant") for v in raw]
    except ConfigError as e:
        raise BundleError(f"{bundle.path} manifest runtime: {e}; recompile the bundle") from e
    for v in variants:
        bundle.file(v.file)  # a clear BundleError if the manifest does not list it
    return variants


def variant_dicts(variants: list[Variant]) -> list[dict]:
    return [dataclass_io.to_dict(v) for v in variants]


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
