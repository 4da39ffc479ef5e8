"""`edge-electra bench --remote`: against stand-ins for ssh and scp that record their arguments (always run),
and against a real sshd on loopback with a throwaway key and config (where sshd is installed)."""
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
from edge_electra.errors import BundleError, ConfigError
from edge_electra.tools.bench.remote import Remote, runtime_copy, stage_bundle

from conftest import write_dataset

SSHD = shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd",) if Path(p).exists()), None)


def test_remote_spec_parsing():
    r = Remote.parse("pi@raspberrypi.local:2222", key="/k")
    assert (r.user, r.host, r.port, r.key) == ("pi", "raspberrypi.local", 2222, "/k")
    assert Remote.parse("jetson").destination == "jetson"
    with pytest.raises(ConfigError, match="user@host"):
        Remote.parse("a@b@c")


@pytest.mark.parametrize("spec", ["-oProxyCommand=touch /tmp/x", "-oProxyCommand=sh@host", "pi@-oProxyCommand=x",
                                  "--help", "-p2222", "pi@host:22 -oX=y"])
def test_a_host_or_user_that_ssh_would_read_as_an_option_is_refused(spec):
    with pytest.raises(ConfigError):
        Remote.parse(spec)
    with pytest.raises(ConfigError, match="ssh option"):
        Remote(user=None, host="-oProxyCommand=x")


def test_runtime_copy_leaves_torch_modules_behind(tmp_path):
    package = runtime_copy(tmp_path)
    assert (package / "runtime" / "predictor.py").is_file() and (package / "tools" / "bench" / "cli.py").is_file()
    assert not (package / "train" / "model.py").exists()  # imports torch at the top
    for py in package.rglob("*.py"):
        assert "\nimport torch" not in "\n" + py.read_text()


# Stand-ins for ssh and scp: each records its argv, reads its options as OpenSSH's getopt does, and then does
# the work on this machine: ssh runs the command line with `sh -c` (as the device's login shell would), scp
# copies, following links as `scp -r` does, and keeps the bytes of every file it uploads.
FAKE_OPENSSH = """#!{python}
import json, os, re, shutil, subprocess, sys
from pathlib import Path
program, args = os.path.basename(sys.argv[0]), sys.argv[1:]
log = Path(os.environ["FAKE_SSH_LOG"])
with log.open("a") as f:
    f.write(json.dumps({{"program": program, "argv": args}}) + "\\n")
i = 0
while i < len(args) and args[i].startswith("-"):
    if args[i] == "--":
        i += 1
        break
    i += 2 if args[i] in ("-o", "-p", "-P", "-i") else 1
operands = args[i:]
if program == "ssh":
    sys.exit(subprocess.run(["sh", "-c", " ".join(operands[1:])], stdin=subprocess.DEVNULL).returncode)
remote = lambda operand: re.match(r"^[^/]*:", operand)
*sources, target = operands
for source in sources:
    if remote(source):
        shutil.copyfile(source.split(":", 1)[1], target)
        continue
    dest = Path(target.split(":", 1)[1]) / Path(source).name
    if Path(source).is_dir():
        shutil.copytree(source, dest)
    else:
        shutil.copyfile(source, dest)
    files = [p for p in Path(source).rglob("*") if p.is_file()] if Path(source).is_dir() else [Path(source)]
    with open(str(log) + ".uploaded", "ab") as f:
        for path in files:
            f.write(path.read_bytes())
"""


@pytest.fixture
def fake_openssh(tmp_path, monkeypatch):
    """ssh and scp stand-ins first on PATH; returns a function giving the calls made so far."""
    folder = tmp_path / "fake-openssh"
    folder.mkdir()
    for name in ("ssh", "scp"):
        (folder / name).write_text(FAKE_OPENSSH.format(python=sys.executable))
        (folder / name).chmod(0o755)
    log = tmp_path / "openssh.log"
    monkeypatch.setenv("FAKE_SSH_LOG", str(log))
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")

    def calls() -> list[dict]:
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    calls.uploaded = lambda: (tmp_path / "openssh.log.uploaded").read_bytes() \
        if (tmp_path / "openssh.log.uploaded").exists() else b""
    return calls


def bench_remotely(bundle, out, *extra):
    return CliRunner().invoke(command, [str(bundle), "--remote", "pi@device.local:2222", "--out", str(out),
                                        "--runs", "2", "--warmup", "1", "--batch-sizes", "1", "--seq-lens", "8",
                                        "--no-cold-start", *extra])


def test_bench_over_the_fake_ssh_puts_the_destination_after_a_double_dash(tiny_bundle, fake_openssh, tmp_path):
    bundle = tiny_bundle("sequence")
    result = bench_remotely(bundle, tmp_path / "out", "--remote-python", sys.executable,
                            "--data", str(write_dataset(tmp_path / "utterances.jsonl")))
    assert result.exit_code == 0, result.output
    bench = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert bench["bundles"][0]["name"] == bundle.name and "intent_accuracy" in bench["bundles"][0]["accuracy"]
    assert {r["source"] for r in bench["results"]} == {"synthetic", "data"}
    calls = fake_openssh()
    assert [c["program"] for c in calls] == ["ssh", "scp", "ssh", "scp", "ssh"]   # mktemp, put, bench, get, rm
    for call in calls:
        operands = call["argv"][call["argv"].index("--") + 1:]
        assert not any(a.startswith("-") for a in operands), call
        assert any(a.startswith("pi@device.local") for a in operands[:1] + operands[-1:]), call


def test_remote_python_is_not_run_through_the_shell(tiny_bundle, fake_openssh, tmp_path):
    """--remote-python is split into words and each quoted: `$(...)` in it is text, not a command."""
    marker = tmp_path / "injected"
    result = bench_remotely(tiny_bundle("sequence"), tmp_path / "out",
                            "--remote-python", f"{sys.executable} $(touch {marker})")
    assert not marker.exists()
    assert isinstance(result.exception, ConfigError) and "failed on device.local" in str(result.exception)


def test_a_bundle_linking_outside_itself_is_refused_before_anything_is_sent(tiny_bundle, fake_openssh, tmp_path):
    secret = tmp_path / "elsewhere" / "shadow"
    secret.parent.mkdir()
    secret.write_text("root:$6$not-for-the-device$:19000:0:99999:7:::\n")
    bundle = tmp_path / "hostile"
    shutil.copytree(tiny_bundle("sequence"), bundle)
    (bundle / "notes.txt").symlink_to(secret)
    result = bench_remotely(bundle, tmp_path / "out", "--remote-python", sys.executable)
    assert isinstance(result.exception, BundleError), result.output
    assert "notes.txt" in str(result.exception)
    assert fake_openssh() == []                          # not even a connection
    assert b"not-for-the-device" not in fake_openssh.uploaded()


def test_links_inside_a_bundle_stay_links_and_nothing_else_is_copied(tiny_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle("sequence"), bundle)
    (bundle / "sub").mkdir()
    (bundle / "sub" / "same-model.onnx").symlink_to(bundle / "model.onnx")   # absolute, but inside
    stage_bundle(bundle, tmp_path / "staged")
    staged = tmp_path / "staged" / "sub" / "same-model.onnx"
    assert staged.is_symlink() and not Path(os.readlink(staged)).is_absolute()
    assert staged.resolve() == (tmp_path / "staged" / "model.onnx").resolve()
    for target in (tmp_path, bundle / "sub"):   # a file outside; a folder, even inside
        (bundle / "link").unlink(missing_ok=True)
        (bundle / "link").symlink_to(target)
        with pytest.raises(BundleError, match="link"):
            stage_bundle(bundle, tmp_path / f"staged-{target.name}")


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
    assert bench["results"][0]["mode"] == "end_to_end" and bench["results"][0]["runs"] == 3


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
