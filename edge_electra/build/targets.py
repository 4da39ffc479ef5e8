"""Device profiles: one declarative TOML file per class of device, in targets/.

    from edge_electra.build.targets import load_target
    profile = load_target("android-arm64")          # a name from targets/, or a path to a .toml file

A profile says which backend builds for the device, which precisions it may use (in order of
preference), the shapes it must serve, its threads and runtime options, and how much accuracy a
smaller or faster variant may lose. Adding a device means writing one file; `validate` explains
every mistake it finds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from edge_electra import dataclass_io
from edge_electra.errors import ConfigError
from edge_electra.resources import resource_dir

# What each backend can build, and the runtime options its profile may set.
BACKEND_PRECISIONS = {
    "onnx-mobile": ("fp32", "fp16", "int8-dynamic", "int8-static"),
    "openvino": ("fp32", "fp16", "int8-static"),
    "tensorrt": ("fp32", "fp16", "bf16", "int8-static"),
    "torch": ("fp32",),
}
BACKEND_RUNTIME_KEYS = {
    # execution_providers: ORT names in order of preference; CPUExecutionProvider is always the fallback.
    # provider_options: {provider: {option: value}}; optimization_level: ORT graph level baked into the
    # .ort file ("basic" keeps standard ONNX ops that NNAPI/CoreML can take); target_platform: "arm" or
    # "amd64" (which int8 kernels the .ort file is optimized for).
    "onnx-mobile": {"execution_providers", "provider_options", "optimization_level", "target_platform"},
    # device: CPU, GPU, NPU, AUTO...; performance_hint: LATENCY or THROUGHPUT; cache: compiled-model cache.
    "openvino": {"device", "performance_hint", "cache"},
    # workspace_mb: builder memory pool; optimization_level: builder level 0-5; timing_cache: reuse tactics.
    "tensorrt": {"workspace_mb", "optimization_level", "timing_cache"},
    "torch": {"device"},
}
PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8-dynamic", "int8-static")


@dataclass
class Range:
    """A dynamic dimension: the smallest, the most common (tuned for) and the largest size."""
    min: int
    opt: int
    max: int


@dataclass
class TargetProfile:
    name: str
    description: str
    backend: str
    # Precisions this device may run, most preferred first; `--precision auto` tries each.
    precisions: list[str]
    batch: Range = field(default_factory=lambda: Range(1, 1, 8))
    seq: Range = field(default_factory=lambda: Range(8, 64, 128))
    # Sequence lengths inputs are padded to; with fixed_shapes, one model is built per bucket.
    buckets: list[int] = field(default_factory=lambda: [32, 64, 128])
    fixed_shapes: bool = False
    # Intra-op threads; 0 lets the runtime choose.
    threads: int = 0
    runtime: dict[str, Any] = field(default_factory=dict)
    # Largest accuracy drop (percentage points) a variant may cost against FP32.
    accuracy_budget: float = 0.5
    # What was checked where, e.g. "compile + run + parity on x86-64 AVX2 (onnxruntime 1.32 CPU)".
    verified: list[str] = field(default_factory=list)

    def __post_init__(self):
        validate(self)

    @property
    def execution_providers(self) -> list[str]:
        return list(self.runtime.get("execution_providers", []))


def validate(p: TargetProfile) -> None:
    where = f"target {p.name!r}"
    if p.backend not in BACKEND_PRECISIONS:
        raise ConfigError(f"{where}: unknown backend {p.backend!r}; choose one of {sorted(BACKEND_PRECISIONS)}")
    allowed = BACKEND_PRECISIONS[p.backend]
    if not p.precisions:
        raise ConfigError(f"{where}: 'precisions' is empty; list at least one of {list(allowed)}")
    for precision in p.precisions:
        if precision not in allowed:
            raise ConfigError(f"{where}: backend {p.backend} cannot build precision {precision!r}; "
                              f"it builds {list(allowed)}")
    if len(set(p.precisions)) != len(p.precisions):
        raise ConfigError(f"{where}: 'precisions' lists a precision twice: {p.precisions}")
    for dim, r in (("batch", p.batch), ("seq", p.seq)):
        if not 1 <= r.min <= r.opt <= r.max:
            raise ConfigError(f"{where}: {dim} needs 1 <= min <= opt <= max, got min={r.min} opt={r.opt} max={r.max}")
    if not p.buckets or sorted(set(p.buckets)) != p.buckets:
        raise ConfigError(f"{where}: 'buckets' must be a non-empty, strictly increasing list, got {p.buckets}")
    outside = [b for b in p.buckets if not p.seq.min <= b <= p.seq.max]
    if outside:
        raise ConfigError(f"{where}: buckets {outside} fall outside seq [{p.seq.min}, {p.seq.max}]")
    if p.threads < 0:
        raise ConfigError(f"{where}: threads must be >= 0 (0 = runtime default), got {p.threads}")
    if not 0 <= p.accuracy_budget <= 100:
        raise ConfigError(f"{where}: accuracy_budget is in percentage points (0-100), got {p.accuracy_budget}")
    unknown = sorted(set(p.runtime) - BACKEND_RUNTIME_KEYS[p.backend])
    if unknown:
        raise ConfigError(f"{where}: unknown runtime option(s) {unknown} for backend {p.backend}; "
                          f"allowed: {sorted(BACKEND_RUNTIME_KEYS[p.backend])}")
    eps = p.runtime.get("execution_providers", [])
    if not isinstance(eps, list) or not all(isinstance(e, str) and e.endswith("ExecutionProvider") for e in eps):
        raise ConfigError(f"{where}: runtime.execution_providers must list ONNX Runtime provider names such "
                          f"as 'XnnpackExecutionProvider', got {eps!r}")


def targets_dir() -> Path:
    return resource_dir("targets")


def target_names() -> list[str]:
    return sorted(f.stem for f in targets_dir().glob("*.toml"))


def load_target(name_or_path: str | Path) -> TargetProfile:
    """A profile by name (targets/NAME.toml) or from a .toml file anywhere."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = targets_dir() / f"{name_or_path}.toml"
        if not path.is_file():
            raise ConfigError(f"unknown target {str(name_or_path)!r}; known targets: {target_names()} "
                              "(or pass the path to a .toml profile)")
    elif not path.is_file():
        raise ConfigError(f"target profile {path} not found")
    return dataclass_io.load(TargetProfile, path)


def all_targets() -> list[TargetProfile]:
    return [load_target(name) for name in target_names()]


def runs_here(profile: TargetProfile) -> str:
    """Whether this machine can build and run the profile's backend, and on what."""
    from edge_electra.backends import get_backend
    ok, why = get_backend(profile.backend).available()
    if not ok:
        return f"no: {why.split(' (')[0]}"
    if profile.backend == "onnx-mobile" and profile.execution_providers:
        import onnxruntime as ort
        present = [e for e in profile.execution_providers if e in ort.get_available_providers()]
        return "yes (" + (", ".join(e.removesuffix("ExecutionProvider") for e in present) or "CPU fallback") + ")"
    if profile.backend == "openvino":
        import openvino as ov
        device = profile.runtime.get("device", "CPU")
        devices = ov.Core().available_devices
        return "yes" if device.split(":")[0] in devices or device == "AUTO" else f"CPU only (no {device} here)"
    return "yes"


def table(profiles: list[TargetProfile], check: bool = False) -> str:
    header = ["target", "backend", "precisions", "batch", "seq buckets", "shapes", "runtime"]
    if check:
        header.append("runs here")
    rows = []
    for p in profiles:
        runtime = p.runtime.get("device") or ", ".join(
            e.removesuffix("ExecutionProvider") for e in p.execution_providers) or "CUDA GPU"
        row = [p.name, p.backend, ",".join(p.precisions), f"{p.batch.min}-{p.batch.max}",
               ",".join(map(str, p.buckets)), "fixed" if p.fixed_shapes else "dynamic", runtime]
        if check:
            row.append(runs_here(p))
        rows.append(row)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows])


@click.command("targets")
@click.option("--check", is_flag=True, help="Also say whether each target builds and runs on this machine.")
@click.option("--show", metavar="NAME", help="Print one profile in full (TOML).")
def targets_command(check, show):
    """List the device profiles in targets/."""
    if show:
        import tomli_w
        click.echo(tomli_w.dumps(dataclass_io.to_dict(load_target(show))), nl=False)
        return
    profiles = all_targets()
    click.echo(table(profiles, check))
    for p in profiles:
        click.echo(f"\n{p.name}: {p.description}")
        for line in p.verified:
            click.echo(f"  verified: {line}")
