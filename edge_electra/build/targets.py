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
from edge_electra.backends import backend_names, get_backend
from edge_electra.errors import ConfigError
from edge_electra.resources import resource_dir

# Every precision compile knows how to build; each backend says which of them it builds.
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
    # The device's CPU architecture as platform.machine() names it on Linux (aarch64, x86_64); "" for any.
    # compile says a bundle is cross-compiled when it differs from the build machine's.
    arch: str = ""

    def __post_init__(self):
        validate(self)

    @property
    def options(self):
        """The [runtime] table as the backend's typed options."""
        return get_backend(self.backend).parse_options(self.runtime, f"target {self.name!r}: runtime")


def validate(p: TargetProfile) -> None:
    where = f"target {p.name!r}"
    if p.backend not in backend_names():
        raise ConfigError(f"{where}: unknown backend {p.backend!r}; choose one of {backend_names()}")
    allowed = get_backend(p.backend).precisions
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
    get_backend(p.backend).parse_options(p.runtime, f"{where}: runtime")   # names each wrong key or value


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
    return get_backend(profile.backend).runs_here(profile.options)


def table(profiles: list[TargetProfile], check: bool = False) -> str:
    header = ["target", "backend", "precisions", "batch", "seq buckets", "shapes", "runtime"]
    if check:
        header.append("runs here")
    rows = []
    for p in profiles:
        row = [p.name, p.backend, ",".join(p.precisions), f"{p.batch.min}-{p.batch.max}",
               ",".join(map(str, p.buckets)), "fixed" if p.fixed_shapes else "dynamic",
               get_backend(p.backend).runs_on(p.options)]
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
