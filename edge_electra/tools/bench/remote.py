"""Run the bench on a device over SSH: copy the bundles and a torch-free copy of edge_electra, run, fetch the JSON.

The device needs Python with numpy, tokenizers, click and its backend's runtime; nothing is installed there.
Everything goes under one temporary folder on the device, removed afterwards.
"""
from __future__ import annotations

import collections
import contextlib
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from edge_electra.errors import ConfigError

PACKAGE = Path(__file__).resolve().parents[2]
# A module that imports torch at the top level is useless on a device without it; leave it behind.
TORCH_IMPORT = re.compile(r"^(import torch|from torch)\b", re.MULTILINE)


@dataclass
class Remote:
    user: str | None
    host: str
    port: int | None = None
    key: str | None = None
    python: str = "python3"
    options: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, spec: str, **kwargs) -> "Remote":
        match = re.fullmatch(r"(?:([^@\s]+)@)?([^@:\s]+)(?::(\d+))?", spec)
        if not match:
            raise ConfigError(f"--remote {spec!r}: expected user@host or user@host:port")
        user, host, port = match.groups()
        return cls(user, host, int(port) if port else None, **kwargs)

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

    def ssh(self, command: str, timeout: float = 3600) -> str:
        return _call(["ssh", *self._common("-p"), self.destination, command], timeout)

    def ssh_streaming(self, command: str, say) -> None:
        """Run `command`, passing each line it writes to stderr (its progress) to `say` as it comes."""
        args = ["ssh", *self._common("-p"), self.destination, command]
        _require(args[0])
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        tail = collections.deque(maxlen=20)
        for line in proc.stderr:
            tail.append(line.rstrip())
            say(f"  [{self.host}] {line.rstrip()}")
        if proc.wait() != 0:
            raise ConfigError(f"the bench failed on {self.host} (exit {proc.returncode}): " + " | ".join(tail)[-800:])

    def put(self, local: list[Path], remote_dir: str) -> None:
        _call(["scp", "-q", "-r", *self._common("-P"), *map(str, local), f"{self.destination}:{remote_dir}/"], 3600)

    def get(self, remote_path: str, local: Path) -> None:
        _call(["scp", "-q", *self._common("-P"), f"{self.destination}:{remote_path}", str(local)], 600)


def _require(program: str) -> None:
    if shutil.which(program) is None:
        raise ConfigError(f"`{program}` is not installed here; install the OpenSSH client to use --remote")


def _call(args: list[str], timeout: float) -> str:
    _require(args[0])
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise ConfigError(f"{args[0]} timed out after {timeout:.0f} s") from e
    if done.returncode != 0:
        raise ConfigError(f"{' '.join(map(shlex.quote, args[:1] + args[-2:]))} failed "
                          f"(exit {done.returncode}): {done.stderr.strip()[-800:]}")
    return done.stdout


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


def run_remote(remote: Remote, bundles: list[Path], bench_args: list[str], data: Path | None, say) -> Path:
    """Run `edge-electra bench` on the device with `bench_args`; return the fetched bench.json (a local path)."""
    workdir = remote.ssh("mktemp -d -t edge-electra-bench.XXXXXX").strip()
    if not workdir.startswith("/"):
        raise ConfigError(f"could not make a temporary folder on {remote.host} (got {workdir!r})")
    try:
        with tempfile.TemporaryDirectory(prefix="edge-electra-remote.") as tmp:
            staging = Path(tmp)
            # bundle{i}/<its folder name>: the device reports each bundle under the name it has here.
            names = [f"bundle{i}/{Path(b).resolve().name}" for i, b in enumerate(bundles)]
            for name, bundle in zip(names, bundles):
                shutil.copytree(bundle, staging / name)
            runtime_copy(staging / "runtime")
            uploads = [staging / "runtime", *(staging / n.split("/")[0] for n in names)]
            if data is not None:
                shutil.copyfile(data, staging / f"data{Path(data).suffix}")
                uploads.append(staging / f"data{Path(data).suffix}")
            say(f"copying {len(bundles)} bundle(s) and the runtime to {remote.destination}:{workdir}")
            remote.put(uploads, workdir)
        args = [*bench_args, "--out", f"{workdir}/out", "--json-only"]
        if data is not None:
            args += ["--data", f"{workdir}/data{Path(data).suffix}"]
        command = (f"cd {shlex.quote(workdir)} && PYTHONPATH={shlex.quote(workdir + '/runtime')} "
                   f"{remote.python} -c 'from edge_electra.tools.bench.cli import command; command()' "
                   + " ".join(shlex.quote(a) for a in [*(f"{workdir}/{n}" for n in names), *args]))
        say(f"running the bench on {remote.host} with {remote.python}")
        remote.ssh_streaming(command, say)
        local = Path(tempfile.mkdtemp(prefix="edge-electra-remote-result.")) / "bench.json"
        remote.get(f"{workdir}/out/bench.json", local)
        return local
    finally:
        # A failed clean-up must not hide the error that got us here; the folder is in the device's tmp.
        with contextlib.suppress(ConfigError):
            remote.ssh(f"rm -rf {shlex.quote(workdir)}", timeout=120)
