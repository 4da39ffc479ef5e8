"""Run the bench on a device over SSH: copy the bundles and a torch-free copy of edge_electra, run, fetch the JSON.

The device needs Python with numpy, tokenizers, click and its backend's runtime; the bench installs nothing there.
`edge-electra device setup` makes such a Python in DEVICE_VENV, which is used by default when it exists (else
`python3`). Everything goes under one temporary folder on the device, removed afterwards.

Three parts: `Remote`, the transport (argv for ssh and scp, never a local shell; `--` before every destination,
and hosts or users that would read as options refused); the staging of what is sent (`stage_bundle`,
`runtime_copy`), which never follows a link; and `run_remote`, the bench itself.
"""
from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from edge_electra.errors import BundleError, ConfigError

log = logging.getLogger(__name__)

PACKAGE = Path(__file__).resolve().parents[2]
# A module that imports torch at the top level is useless on a device without it; leave it behind.
TORCH_IMPORT = re.compile(r"^(import torch|from torch)\b", re.MULTILINE)
# user@host[:port]. Neither part may begin with "-": ssh and scp would read it as an option (-oProxyCommand=...).
# The venv `edge-electra device setup` creates on the device, relative to the device user's home.
DEVICE_VENV = "~/.edge-electra/venv"
REMOTE_SPEC = re.compile(r"(?:(?P<user>[^-@:\s][^@:\s]*)@)?(?P<host>[A-Za-z0-9_.][A-Za-z0-9_.-]*)(?::(?P<port>\d+))?")


@dataclass
class Remote:
    user: str | None
    host: str
    port: int | None = None
    key: str | None = None
    # Split as a shell would: "python3 -X dev", or a quoted path with spaces. None: DEVICE_VENV's python where it
    # exists, else python3, chosen on the device.
    python: str | None = None
    options: list[str] = field(default_factory=list)

    def __post_init__(self):
        for part, value in (("user", self.user), ("host", self.host)):
            if value is not None and (not value or value.startswith("-")):
                raise ConfigError(f"--remote: the {part} {value!r} would be read as an ssh option")
        if self.python is None:
            self.python_argv = None
            return
        try:
            self.python_argv = shlex.split(self.python)
        except ValueError as e:
            raise ConfigError(f"--remote-python {self.python!r}: {e}") from None
        if not self.python_argv:
            raise ConfigError("--remote-python is empty")

    @classmethod
    def parse(cls, spec: str, **kwargs) -> "Remote":
        match = REMOTE_SPEC.fullmatch(spec)
        if not match:
            raise ConfigError(f"--remote {spec!r}: expected user@host or user@host:port (host: letters, digits, "
                              "'.', '_' and '-', not first)")
        port = match["port"]
        return cls(match["user"], match["host"], int(port) if port else None, **kwargs)

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def _common(self, port_flag: str) -> list[str]:
        args = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=20"]
        if self.port:
            args += [port_flag, str(self.port)]
        if self.key:
            args += ["-i", self.key]
        for option in self.options:
            args += ["-o", option]
        return args

    def _ssh_argv(self, command: str) -> list[str]:
        return ["ssh", *self._common("-p"), "--", self.destination, command]

    def ssh(self, command: str, timeout: float = 3600) -> str:
        """Run `command` (one shell command line, quoted by the caller) on the device; its stdout."""
        return _call(self._ssh_argv(command), timeout)

    def ssh_streaming(self, command: str) -> None:
        """Run `command`, logging each line it writes to stderr (its progress) as it comes."""
        args = self._ssh_argv(command)
        _require(args[0])
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        tail = collections.deque(maxlen=20)
        for line in proc.stderr:
            tail.append(line.rstrip())
            log.info("  [%s] %s", self.host, line.rstrip())
        if proc.wait() != 0:
            raise ConfigError(f"the bench failed on {self.host} (exit {proc.returncode}): " + " | ".join(tail)[-800:])

    def put(self, local: list[Path], remote_dir: str) -> None:
        _call(["scp", "-q", "-r", *self._common("-P"), "--", *map(str, local), f"{self.destination}:{remote_dir}/"],
              3600)

    def get(self, remote_path: str, local: Path) -> None:
        _call(["scp", "-q", *self._common("-P"), "--", f"{self.destination}:{remote_path}", str(local)], 600)


def _require(program: str) -> None:
    if shutil.which(program) is None:
        raise ConfigError(f"`{program}` is not installed here; install the OpenSSH client to use --remote")


def _call(args: list[str], timeout: float) -> str:
    _require(args[0])
    try:
        done = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise ConfigError(f"{args[0]} timed out after {timeout:.0f} s") from e
    if done.returncode != 0:
        raise ConfigError(f"{' '.join(map(shlex.quote, args[:1] + args[-2:]))} failed "
                          f"(exit {done.returncode}): {done.stderr.strip()[-800:]}")
    return done.stdout


def stage_bundle(bundle: Path, dest: Path) -> None:
    """Copy `bundle` to `dest` without following a link: a link is copied as a (relative) link, and only when
    it points to a file inside the bundle; any other link, or anything but files and folders, is refused."""
    root = Path(bundle).resolve()
    if not root.is_dir():
        raise BundleError(f"bundle {bundle} not found")
    dest.mkdir(parents=True)
    for folder, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            source = Path(folder, name)
            copy = dest / source.relative_to(root)
            if source.is_symlink():
                target = source.resolve()
                if not (target.is_relative_to(root) and target.is_file()):
                    raise BundleError(f"bundle {bundle}: {source.relative_to(root)} is a link to "
                                      f"{os.readlink(source)}, which is not a file inside the bundle; a bundle "
                                      "may link only to its own files")
                copy.symlink_to(os.path.relpath(target, source.parent))
            elif source.is_dir():
                copy.mkdir()
            elif source.is_file():
                shutil.copyfile(source, copy)
            else:
                raise BundleError(f"bundle {bundle}: {source.relative_to(root)} is not a file or a folder")


def runtime_copy(dest: Path) -> Path:
    """The edge_electra package without its torch-only modules: what a device needs to predict and bench."""
    target = dest / "edge_electra"
    for source in PACKAGE.rglob("*"):
        if "__pycache__" in source.parts or not source.is_file():
            continue
        if source.suffix == ".py" and TORCH_IMPORT.search(source.read_text(encoding="utf-8")):
            continue
        copy = target / source.relative_to(PACKAGE)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, copy)
    return target


def device_path(path: str) -> str:
    """`path` as one shell word for the device's shell: a leading ~/ stays the device user's home."""
    if path == "~" or path.startswith("~/"):
        return '"$HOME"' + (shlex.quote(path[1:]) if path[1:] else "")
    return shlex.quote(path)


def python_word(remote: Remote) -> str:
    """The device's Python as shell words: --remote-python quoted word by word, or by default DEVICE_VENV's
    python when it is there and python3 otherwise (one shell test on the device, no extra round trip)."""
    if remote.python_argv is not None:
        return " ".join(map(shlex.quote, remote.python_argv))
    venv_python = device_path(DEVICE_VENV + "/bin/python")
    return f'"$(if [ -x {venv_python} ]; then echo {venv_python}; else echo python3; fi)"'


def remote_bench_command(remote: Remote, workdir: str, bench_argv: list[str]) -> str:
    """The device's shell command line: `edge-electra bench` from the uploaded runtime, every word quoted."""
    argv = ["-m", "edge_electra.cli", "bench", *bench_argv]
    return (f"cd {shlex.quote(workdir)} && PYTHONPATH={shlex.quote(workdir + '/runtime')} {python_word(remote)} "
            + " ".join(map(shlex.quote, argv)))


@contextlib.contextmanager
def device_tempdir(remote: Remote, prefix: str) -> Iterator[str]:
    """A temporary folder on the device (its absolute path), removed afterwards."""
    workdir = remote.ssh(f"mktemp -d -t {shlex.quote(prefix)}.XXXXXX").strip()
    if not workdir.startswith("/"):
        raise ConfigError(f"could not make a temporary folder on {remote.host} (got {workdir!r})")
    try:
        yield workdir
    finally:
        # A failed clean-up must not hide the error that got us here; the folder is in the device's tmp.
        with contextlib.suppress(ConfigError):
            remote.ssh(f"rm -rf {shlex.quote(workdir)}", timeout=120)


def run_remote(remote: Remote, bundles: list[Path], bench_args: list[str], data: Path | None) -> Path:
    """Run `edge-electra bench` on the device with `bench_args`; return the fetched bench.json (a local path)."""
    with tempfile.TemporaryDirectory(prefix="edge-electra-remote.") as tmp:
        staging = Path(tmp)
        # bundle{i}/<its folder name>: the device reports each bundle under the name it has here.
        names = [f"bundle{i}/{Path(b).resolve().name}" for i, b in enumerate(bundles)]
        for name, bundle in zip(names, bundles):
            stage_bundle(bundle, staging / name)   # refuses a hostile bundle before anything is sent
        runtime_copy(staging / "runtime")
        uploads = [staging / "runtime", *(staging / n.split("/")[0] for n in names)]
        if data is not None:
            uploads.append(staging / f"data{Path(data).suffix}")
            shutil.copyfile(data, uploads[-1])
        with device_tempdir(remote, "edge-electra-bench") as workdir:
            log.info("copying %d bundle(s) and the runtime to %s:%s", len(bundles), remote.destination, workdir)
            remote.put(uploads, workdir)
            return _bench_there(remote, workdir, names, bench_args, data)


def _bench_there(remote: Remote, workdir: str, names: list[str], bench_args: list[str], data: Path | None) -> Path:
    argv = [*(f"{workdir}/{n}" for n in names), *bench_args, "--out", f"{workdir}/out", "--json-only"]
    if data is not None:
        argv += ["--data", f"{workdir}/data{Path(data).suffix}"]
    log.info("running the bench on %s with %s", remote.host, remote.python or f"{DEVICE_VENV}/bin/python if present")
    remote.ssh_streaming(remote_bench_command(remote, workdir, argv))
    local = Path(tempfile.mkdtemp(prefix="edge-electra-remote-result.")) / "bench.json"
    remote.get(f"{workdir}/out/bench.json", local)
    # With --profile, the raw profiles the bench wrote beside it (a name from the device is only a file name).
    for summary in json.loads(local.read_text()).get("profiles", {}).values():
        if summary.get("raw"):
            name = Path(summary["raw"]).name
            remote.get(f"{workdir}/out/{name}", local.parent / name)
    return local
