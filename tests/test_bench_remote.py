"""`edge-electra bench --remote` against a real sshd on loopback, with a throwaway key and config."""
from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_electra.tools.bench.cli import command
from edge_electra.tools.bench.remote import Remote, runtime_copy
from edge_electra.errors import ConfigError

from conftest import write_dataset

SSHD = shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd",) if Path(p).exists()), None)


def test_remote_spec_parsing():
    r = Remote.parse("pi@raspberrypi.local:2222", key="/k")
    assert (r.user, r.host, r.port, r.key) == ("pi", "raspberrypi.local", 2222, "/k")
    assert Remote.parse("jetson").destination == "jetson"
    with pytest.raises(ConfigError, match="user@host"):
        Remote.parse("a@b@c")


def test_runtime_copy_leaves_torch_modules_behind(tmp_path):
    package = runtime_copy(tmp_path)
    assert (package / "runtime" / "predictor.py").is_file() and (package / "tools" / "bench" / "cli.py").is_file()
    assert not (package / "train" / "model.py").exists()  # imports torch at the top
    for py in package.rglob("*.py"):
        assert "\nimport torch" not in "\n" + py.read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def sshd(tmp_path):
    """(user, port, private key, ssh options) of an sshd on 127.0.0.1 that accepts only a fresh key."""
    if SSHD is None or shutil.which("ssh") is None or shutil.which("scp") is None:
        pytest.skip("sshd/ssh/scp not installed (apt-get install openssh-server openssh-client)")
    root = os.geteuid() == 0
    if root:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation folder
    keys = tmp_path / "ssh"
    keys.mkdir()
    for name, kind in (("host", "ed25519"), ("client", "ed25519")):
        subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(keys / name)], check=True)
    (keys / "authorized_keys").write_text((keys / "client.pub").read_text())
    port = _free_port()
    config = keys / "sshd_config"
    config.write_text("\n".join([
        "ListenAddress 127.0.0.1", f"Port {port}", f"HostKey {keys / 'host'}", "UsePAM no", "StrictModes no",
        f"AuthorizedKeysFile {keys / 'authorized_keys'}", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "PubkeyAuthentication yes", f"PidFile {keys / 'sshd.pid'}",
        f"PermitRootLogin {'yes' if root else 'no'}", "Subsystem sftp internal-sftp", ""]))
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 10
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"sshd exited: {proc.stderr.read()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    options = [f"UserKnownHostsFile={keys / 'known_hosts'}", "StrictHostKeyChecking=accept-new"]
    yield getpass.getuser(), port, keys / "client", options
    proc.terminate()
    proc.wait(timeout=10)


def test_bench_runs_on_the_device_and_renders_here(tiny_bundle, sshd, tmp_path):
    user, port, key, options = sshd
    bundle = tiny_bundle("sequence")
    data = write_dataset(tmp_path / "utterances.jsonl")
    out = tmp_path / "out"
    args = [str(bundle), "--remote", f"{user}@127.0.0.1:{port}", "--ssh-key", str(key),
            "--remote-python", sys.executable, "--data", str(data), "--runs", "3", "--warmup", "1",
            "--batch-sizes", "1", "--seq-lens", "8", "--out", str(out)]
    for option in options:
        args += ["--ssh-option", option]
    result = CliRunner().invoke(command, args)
    assert result.exit_code == 0, result.output
    bench = json.loads((out / "bench.json").read_text())
    assert bench["bundles"][0]["name"] == bundle.name
    # Measured over there: paths are in the device's temporary folder, which is gone afterwards.
    remote_path = Path(bench["bundles"][0]["path"])
    assert remote_path.name == bundle.name and "edge-electra-bench." in str(remote_path)
    assert not remote_path.exists()
    assert bench["bundles"][0]["cold_start"]["peak_rss_mb"] > 0
    assert "intent_accuracy" in bench["bundles"][0]["accuracy"]
    assert {r["source"] for r in bench["results"]} == {"synthetic", "data"}
    assert (out / "bench.csv").exists() and (out / "bench.png").exists()
    assert "p50 ms" in result.output and "[127.0.0.1] [1/4] end_to_end synthetic b=1 s=8" in result.output


def test_a_failing_device_run_says_why(tiny_bundle, sshd, tmp_path):
    user, port, key, options = sshd
    args = [str(tiny_bundle("sequence")), "--remote", f"{user}@127.0.0.1:{port}", "--ssh-key", str(key),
            "--remote-python", "/nonexistent/python3", "--out", str(tmp_path / "out")]
    for option in options:
        args += ["--ssh-option", option]
    result = CliRunner().invoke(command, args)
    assert isinstance(result.exception, ConfigError)
    assert "failed on 127.0.0.1" in str(result.exception) and "/nonexistent/python3" in str(result.exception)


def test_unreachable_device_is_a_clear_error(tiny_bundle, sshd, tmp_path):
    user, port, _, options = sshd
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    args = [str(tiny_bundle("sequence")), "--remote", f"{user}@127.0.0.1:{port}", "--ssh-key", str(stranger),
            "--out", str(tmp_path / "out")]
    for option in options:
        args += ["--ssh-option", option]
    result = CliRunner().invoke(command, args)
    assert result.exit_code != 0
    assert isinstance(result.exception, ConfigError) and "Permission denied" in str(result.exception)
    assert not (tmp_path / "out").exists()
