"""`edge-electra device setup|check USER@HOST`: prepare a device over SSH, and say whether a bundle runs there.

setup makes a venv on the device (DEVICE_VENV by default) holding only the torch-free run-time: a wheel of this
project installed without its dependencies, numpy, tokenizers, click and the backend's runtime, from PyPI or,
for a device without network, from wheels copied over or already there. check runs one probe on the device, in
that venv: versions, the backend's library, then the bundle itself loaded and asked to predict.
"""
from __future__ import annotations

import json
import logging
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import click

from edge_electra.errors import ConfigError
from edge_electra.tools.bench.remote import DEVICE_VENV, Remote, device_path, device_tempdir, stage_bundle

log = logging.getLogger(__name__)

PROJECT = Path(__file__).resolve().parents[2]
# What a device needs besides its backend's runtime: the project's core dependencies (pyproject.toml).
CORE_PACKAGES = ("numpy", "tokenizers", "click")
BACKENDS = ("onnx-mobile", "openvino")
# Machines each `target_platform` of a manifest's runtime section is built for.
PLATFORM_MACHINES = {"arm": ("aarch64", "arm64", "armv7l", "armv8l"), "amd64": ("x86_64", "amd64")}
STATUS = {True: "ok  ", False: "FAIL", None: "note"}   # a check passed, failed, or is only noted

# Runs on the device, in the venv's python: argv = bundle folder, JSON file of texts, backend library.
PROBE = r"""
import json, platform, sys
from importlib import metadata
bundle, texts_file, library = sys.argv[1:4]
def version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
out = {"python": platform.python_version(), "machine": platform.machine(),
       "edge-electra": version("edge-electra"), "library_version": version(library)}
try:
    __import__(library)
except Exception as e:
    out["import_error"] = f"{type(e).__name__}: {e}"
try:
    from edge_electra.tools.bench.sysinfo import emulation
    out["emulation"] = emulation()
except Exception as e:
    out["emulation"] = f"unknown ({type(e).__name__}: {e})"
try:
    from edge_electra.runtime.predictor import Predictor
    texts = json.load(open(texts_file))
    predictions = Predictor.load(bundle).predict_batch(texts, probabilities=True)
    out["predictions"] = [{"label": p.label, "score": p.score, "slots": p.slots,
                           "probabilities": None if p.probabilities is None else p.probabilities.tolist()}
                          for p in predictions]
except Exception as e:
    out["load_error"] = f"{type(e).__name__}: {e}"
print(json.dumps(out))
"""


def required_python() -> tuple[int, int]:
    """The oldest Python the project runs on, from its requires-python (">=3.11")."""
    spec = metadata.metadata("edge-electra").get("Requires-Python") or ">=3.11"
    found = re.search(r">=\s*(\d+)\.(\d+)", spec)
    return (int(found[1]), int(found[2])) if found else (3, 11)


def backend_library(backend: str) -> str:
    from edge_electra.backends import get_backend
    return get_backend(backend).library


def build_project_wheel(dest: Path) -> Path:
    """A wheel of this checkout, built here with `pip wheel --no-deps` from a copy of its sources (the build
    writes build/ and *.egg-info, which must not land in the checkout)."""
    if not (PROJECT / "pyproject.toml").is_file():
        raise ConfigError(f"{PROJECT} is not a source checkout (no pyproject.toml): put an edge_electra wheel "
                          "in --wheels")
    with tempfile.TemporaryDirectory(prefix="edge-electra-wheel.") as tmp:
        source = Path(tmp) / "src"
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        for name in ("pyproject.toml", "README.md", "edge_electra", "targets", "calibration"):
            if (PROJECT / name).is_dir():
                shutil.copytree(PROJECT / name, source / name, ignore=ignore)
            elif (PROJECT / name).is_file():
                source.mkdir(exist_ok=True)
                shutil.copyfile(PROJECT / name, source / name)
        done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                               "-w", str(dest), str(source)], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise ConfigError(f"could not build the project's wheel: {done.stderr.strip()[-600:]}")
    return next(dest.glob("edge_electra-*.whl"))


@dataclass
class SetupPlan:
    backend: str = "onnx-mobile"
    venv: str = DEVICE_VENV
    python: str = "python3"                # the device's Python that makes the venv
    wheels: Path | None = None             # a folder of wheels here, copied over for an offline install
    remote_wheels: str | None = None       # a folder of wheels already on the device


def check_python(remote, python: str) -> str:
    """The device's Python version, refused when it is too old or lacks the venv module."""
    argv = " ".join(map(shlex.quote, shlex.split(python)))
    out = remote.ssh(f"{argv} -c 'import platform, venv, ensurepip; print(platform.python_version())' 2>&1 "
                     "|| true", timeout=300).strip()
    match = re.fullmatch(r"(\d+)\.(\d+)\.\d+\S*", out.splitlines()[-1] if out else "")
    if not match:
        raise ConfigError(f"{python} on {remote.host} cannot make a venv ({out[-300:] or 'no output'}); "
                          "install Python with its venv module (Debian: apt install python3-venv)")
    if (int(match[1]), int(match[2])) < required_python():
        raise ConfigError(f"{python} on {remote.host} is Python {match[0]}; edge-electra needs "
                          f"{'.'.join(map(str, required_python()))} or newer")
    return match[0]


def setup_device(remote, plan: SetupPlan) -> list[str]:
    """Make the venv on the device and install the run-time there; what was done, one line per step."""
    version = check_python(remote, plan.python)
    done = [f"found Python {version} ({plan.python}) on {remote.destination}"]
    packages = [*CORE_PACKAGES, backend_library(plan.backend)]
    venv = device_path(plan.venv)
    with tempfile.TemporaryDirectory(prefix="edge-electra-setup.") as tmp:
        uploads = [build_project_wheel(Path(tmp) / "dist")]
        if plan.wheels is not None:
            local = sorted(Path(plan.wheels).glob("*.whl"))
            if not local:
                raise ConfigError(f"--wheels {plan.wheels}: no .whl files there")
            (Path(tmp) / "wheels").mkdir()
            for wheel in local:
                shutil.copyfile(wheel, Path(tmp) / "wheels" / wheel.name)
            uploads.append(Path(tmp) / "wheels")
        with device_tempdir(remote, "edge-electra-setup") as workdir:
            remote.put(uploads, workdir)
            done.append(f"copied {uploads[0].name}" + (f" and {len(local)} wheels from {plan.wheels}"
                                                       if plan.wheels is not None else "") + f" to {workdir}")
            python = " ".join(map(shlex.quote, shlex.split(plan.python)))
            remote.ssh(f"[ -x {venv}/bin/python ] || {python} -m venv {venv}", timeout=900)
            done.append(f"venv {plan.venv} ready")
            if plan.remote_wheels or plan.wheels is not None:
                found = device_path(plan.remote_wheels) if plan.remote_wheels else shlex.quote(f"{workdir}/wheels")
                source = f"--no-index --find-links {found}"
                origin = f"offline from {plan.remote_wheels or 'the copied wheels'}"
            else:
                source, origin = "", "from the package index"
            pip = f"{venv}/bin/python -m pip install -q --disable-pip-version-check"
            log.info("installing %s on %s (%s); this can take minutes", " ".join(packages), remote.host, origin)
            remote.ssh(f"{pip} {source} {' '.join(packages)} && {pip} --no-deps --force-reinstall "
                       f"{shlex.quote(workdir + '/' + uploads[0].name)}", timeout=3600)
            done.append(f"installed {', '.join(packages)} {origin}, and {uploads[0].name} without dependencies")
            versions = remote.ssh(f"{venv}/bin/python -c {shlex.quote(_versions_script(packages))}", timeout=600)
            done.append("the venv holds " + versions.strip())
    return done


def _versions_script(packages: list[str]) -> str:
    names = ["edge-electra", *packages]
    return ("from importlib.metadata import version; "
            f"print(', '.join(f'{{n}} {{version(n)}}' for n in {names!r}))")


def run_probe(remote, bundle: Path, texts: list[str], venv: str = DEVICE_VENV) -> dict:
    """Load `bundle` on the device in `venv` and predict `texts` there: the probe's report (PROBE), with
    "venv": False when the venv is missing. Predictions come back as {"label", "score", "slots", "probabilities"}."""
    from edge_electra.runtime.bundle import Bundle
    library = backend_library(Bundle.load(bundle).manifest.backend) or "numpy"
    python = device_path(venv + "/bin/python")
    with tempfile.TemporaryDirectory(prefix="edge-electra-check.") as tmp:
        staging = Path(tmp) / "check"
        stage_bundle(bundle, staging / "bundle")
        (staging / "texts.json").write_text(json.dumps(texts))
        with device_tempdir(remote, "edge-electra-check") as workdir:
            remote.put([staging], workdir)
            args = " ".join(shlex.quote(f"{workdir}/check/{name}") for name in ("bundle", "texts.json"))
            out = remote.ssh(f"if [ -x {python} ]; then {python} -c {shlex.quote(PROBE)} {args} "
                             f"{shlex.quote(library)}; else echo '{{\"venv\": false}}'; fi", timeout=1800)
    return json.loads(out.strip().splitlines()[-1])


def judge(report: dict, bundle: Path, venv: str) -> list[tuple[str, bool | None, str]]:
    """(what, passed, detail) for each fact of a probe report; passed None: noted, does not decide."""
    from edge_electra.runtime.bundle import Bundle
    manifest = Bundle.load(bundle).manifest
    if report.get("venv") is False:
        return [("venv", False, f"no {venv} on the device: run `edge-electra device setup` first")]
    need = required_python()
    python = tuple(int(x) for x in report["python"].split(".")[:2])
    library = backend_library(manifest.backend)
    built, installed = manifest.versions.get(library), report.get("library_version")
    here = metadata.version("edge-electra")
    checks = [("python", python >= need, f"{report['python']} (needs {'.'.join(map(str, need))}+)"),
              ("venv", True, venv),
              ("edge-electra", report.get("edge-electra") is not None,
               f"{report.get('edge-electra') or 'not installed'} there, {here} here")]
    checks.append((library, installed is not None and "import_error" not in report,
                   report.get("import_error") or installed or f"not installed (device setup --backend "
                                                                  f"{manifest.backend})"))
    if built and installed:
        # The Predictor refuses another major version (check_backend_version); a minor difference is noted.
        same = True if built == installed else None if built.split(".")[0] == installed.split(".")[0] else False
        checks.append(("backend version", same, f"bundle built with {library} {built}, device has {installed}"))
    platform = manifest.runtime.get("target_platform")
    machine = report["machine"]
    if platform in PLATFORM_MACHINES:
        fits = machine.lower() in PLATFORM_MACHINES[platform]
        checks.append(("architecture", True if fits else None,
                       f"{machine}, bundle built for {platform}" + ("" if fits else ": it may run, not as tuned")))
    if report.get("emulation"):
        checks.append(("emulated", None, f"{report['emulation']}: numerics are real, times are not"))
    predictions = report.get("predictions")
    checks.append(("predict", bool(predictions),
                   report.get("load_error") or (f"{predictions[0]['label']!r} ({predictions[0]['score']:.3f})"
                                                if predictions else "no prediction")))
    return checks


def remote_options(command):
    """USER@HOST and the SSH options setup and check share."""
    for decorator in reversed([
        click.argument("destination", metavar="USER@HOST[:PORT]"),
        click.option("--port", type=int, default=None, help="SSH port (overrides :PORT)."),
        click.option("--ssh-key", type=click.Path(exists=True, dir_okay=False), default=None, help="SSH private key."),
        click.option("--ssh-option", multiple=True, metavar="KEY=VALUE", help="Extra `ssh -o` option (repeatable)."),
        click.option("--venv", default=DEVICE_VENV, show_default=True,
                     help="The venv on the device (~/ is the device user's home)."),
    ]):
        command = decorator(command)
    return command


def _remote(destination: str, port: int | None, ssh_key: str | None, ssh_option):
    remote = Remote.parse(destination, key=ssh_key, options=list(ssh_option))
    if port is not None:
        remote.port = port
    return remote


@click.group()
def command():
    """Prepare a device over SSH (setup) and check that a bundle runs there (check)."""


@command.command()
@remote_options
@click.option("--backend", type=click.Choice(BACKENDS), default="onnx-mobile", show_default=True,
              help="The runtime to install (the target's backend).")
@click.option("--python", "python", default="python3", show_default=True, help="The device's Python making the venv.")
@click.option("--wheels", type=click.Path(exists=True, file_okay=False), default=None,
              help="A folder of wheels here for the device's platform: copied over, installed offline.")
@click.option("--remote-wheels", default=None, metavar="DIR", help="A folder of wheels on the device: installed "
              "offline from there.")
def setup(destination, port, ssh_key, ssh_option, venv, backend, python, wheels, remote_wheels):
    """Make a venv on USER@HOST with edge-electra's torch-free run-time and the backend's runtime."""
    if wheels and remote_wheels:
        raise ConfigError("give --wheels or --remote-wheels, not both")
    plan = SetupPlan(backend, venv, python, Path(wheels) if wheels else None, remote_wheels)
    for line in setup_device(_remote(destination, port, ssh_key, ssh_option), plan):
        click.echo(line)
    click.echo(f"ready: bench --remote {destination} uses {venv}/bin/python")


@command.command()
@remote_options
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--text", default="turn on the lights in the kitchen", show_default=True, help="The text to predict.")
@click.option("--texts", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Predict these instead (one a line, or JSONL/CSV with a 'text' field).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Write the device's report (versions, machine, every prediction) to this JSON file.")
def check(destination, port, ssh_key, ssh_option, venv, bundle, text, texts, json_out):
    """Say whether BUNDLE runs on USER@HOST, and why not: exit 0 when it does, 2 when it does not."""
    from edge_electra.data import read_text_lines
    utterances = list(read_text_lines([texts])) if texts else [text]
    report = run_probe(_remote(destination, port, ssh_key, ssh_option), Path(bundle), utterances, venv)
    if json_out:
        Path(json_out).write_text(json.dumps({**report, "texts": utterances}, indent=1) + "\n")
    checks = judge(report, Path(bundle), venv)
    for what, passed, detail in checks:
        click.echo(f"{STATUS[passed]} {what}: {detail}")
    failed = [what for what, passed, _ in checks if passed is False]
    if failed:
        click.echo(f"{bundle} does not run on {destination}: {', '.join(failed)}")
        click.get_current_context().exit(2)
    click.echo(f"{bundle} runs on {destination}")
