"""`device setup/check`, the emulation flag and its report, bench --remote's default Python: without a device
(ssh and scp are the recording stand-ins of test_bench_remote, running each command on this machine)."""
from __future__ import annotations

import csv
import json
import sys
import zipfile

import pytest
from click.testing import CliRunner

from edge_electra.cli import main
from edge_electra.tools.bench import harness, report
from edge_electra.tools.bench.sysinfo import emulation, kernel_architecture, system_info
from edge_electra.tools.device import build_project_wheel

from conftest import TEXTS
from test_bench_remote import bench_remotely, fake_openssh  # noqa: F401  (fake_openssh is a fixture)

PI_VERSION = ("Linux version 6.6.31+rpt-rpi-2712 (serge@raspberrypi.com) (aarch64-linux-gnu-gcc-12 (Debian "
              "12.2.0-14) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP PREEMPT Debian 1:6.6.31-1+rpt1\n")
X86_CROSS_VERSION = "Linux version 6.1.0-18-amd64 (x86_64-linux-gnu-gcc-12 (Debian 12.2.0-14) 12.2.0)\n"


def fake_proc(tmp_path, arch=None, version=None):
    proc = tmp_path / "proc"
    (proc / "sys" / "kernel").mkdir(parents=True)
    if arch:
        (proc / "sys" / "kernel" / "arch").write_text(arch + "\n")
    if version:
        (proc / "version").write_text(version)
    return proc


@pytest.mark.parametrize("machine, arch, version, emulated", [
    ("aarch64", "x86_64", None, True),              # device/arm64.sh: qemu-user under an x86-64 kernel
    ("aarch64", "aarch64", None, False),            # a Raspberry Pi 5 on Linux 6.1+
    ("armv7l", "aarch64", None, False),             # 32-bit Raspberry Pi OS on the 64-bit kernel
    ("aarch64", None, PI_VERSION, False),           # an older Pi kernel: only /proc/version names its compiler
    ("aarch64", None, X86_CROSS_VERSION, True),
    ("x86_64", "x86_64", None, False),
])
def test_emulation_is_read_from_the_kernels_own_architecture(tmp_path, machine, arch, version, emulated):
    proc = fake_proc(tmp_path, arch, version)
    assert (emulation(machine, proc, environ={}) is not None) == emulated


def test_qemu_variables_mark_emulation_where_the_kernel_says_nothing(tmp_path):
    proc = fake_proc(tmp_path)
    assert kernel_architecture(proc) is None
    assert emulation("aarch64", proc, environ={}) is None
    assert "QEMU_CPU=cortex-a76" in emulation("aarch64", proc, environ={"QEMU_CPU": "cortex-a76"})


def test_this_machine_reports_its_machine_and_native(monkeypatch):
    monkeypatch.delenv("QEMU_CPU", raising=False)
    info = system_info(threads=1)
    assert info["machine"] and info["emulated"] is False and info["emulation"] is None


def bench_result(emulated: bool) -> dict:
    samples = [1_234_567, 2_345_678, 3_456_789]
    return {"system": {"cpu": {"model": "Cortex-A76", "usable_cores": 4, "flags": ["asimd"]}, "os": "Linux",
                       "threads": 1, "gemm_gflops": 1.0, "versions": {"numpy": "2"}, "machine": "aarch64",
                       "emulated": emulated,
                       "emulation": "aarch64 user space on a x86_64 kernel" if emulated else None},
            "bundles": [{"name": "pi", "backend": "onnx-mobile", "precision": "fp32", "size_bytes": 1e6,
                         "cold_start": {"process_to_first_result_s": 4.321, "peak_rss_mb": 80.0}}],
            "results": [{"bundle": "pi", "mode": "end_to_end", "source": "synthetic", "batch": 1, "seq": 16,
                         "padded_seq": 16, "samples_ms": [s / 1e6 for s in samples],
                         **harness.summarize(samples, 1)}]}


def test_an_emulated_bench_shows_no_latency_as_a_device_figure(tmp_path):
    result = bench_result(emulated=True)
    p50 = f"{result['results'][0]['p50_ms']:.3g}"
    text = report.table(result)
    assert report.EMULATED in text.splitlines()[0]
    assert p50 not in text and "4.32" not in text and "emulated" in text
    report.write_all(result, tmp_path)
    row = next(csv.DictReader(open(tmp_path / "bench.csv")))
    assert all(row[column] == "emulated" for column in report.TIMED_COLUMNS)
    kept = json.loads((tmp_path / "bench.json").read_text())   # the raw numbers stay, under the flag
    assert kept["system"]["emulated"] is True and kept["results"][0]["p50_ms"] == result["results"][0]["p50_ms"]
    native = report.table(bench_result(emulated=False))
    assert p50 in native and report.EMULATED not in native


def fake_venv(home, log):
    """HOME/.edge-electra/venv/bin/python: records that it ran, then runs this interpreter."""
    python = home / ".edge-electra" / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f"#!/bin/sh\necho ran >> {log}\nexec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    return python


def test_bench_remote_uses_the_device_setup_venv_by_default(tiny_bundle, fake_openssh, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    fake_venv(tmp_path / "home", tmp_path / "venv-ran")
    result = bench_remotely(tiny_bundle("sequence"), tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "venv-ran").read_text().count("ran") == 1   # the bench ran in the venv's python
    bench_call = next(c for c in fake_openssh() if "edge_electra.cli" in c["argv"][-1])
    assert '"$HOME"' in bench_call["argv"][-1]   # the device's home, expanded there


def check(bundle, venv, *extra):
    return CliRunner().invoke(main, ["device", "check", "pi@device.local:2222", str(bundle), "--venv", str(venv),
                                     *extra])


def test_device_check_loads_the_bundle_there_and_returns_its_predictions(tiny_bundle, fake_openssh, tmp_path):
    from edge_electra import Predictor
    bundle = tiny_bundle("joint")
    venv = fake_venv(tmp_path / "home", tmp_path / "venv-ran").parents[1]
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n")
    result = check(bundle, venv, "--texts", str(texts), "--json", str(tmp_path / "report.json"))
    assert result.exit_code == 0, result.output
    there = json.loads((tmp_path / "report.json").read_text())
    here = Predictor.load(bundle).predict_batch(TEXTS)
    assert [p["label"] for p in there["predictions"]] == [p.label for p in here]
    assert [[tuple(s) for s in p["slots"]] for p in there["predictions"]] == [p.slots for p in here]
    assert there["machine"] and there["python"]


def test_device_check_says_why_a_bundle_does_not_run(tiny_bundle, fake_openssh, tmp_path):
    venv = fake_venv(tmp_path / "home", tmp_path / "venv-ran").parents[1]
    old = tiny_bundle("sequence", versions={"onnxruntime": "0.9.0"})
    result = check(old, venv)
    assert result.exit_code == 2
    assert "FAIL backend version" in result.output and "FAIL predict" in result.output
    missing = check(tiny_bundle("sequence"), tmp_path / "no-venv")
    assert missing.exit_code == 2 and "FAIL venv" in missing.output


def test_setup_refuses_a_python_too_old_before_installing_anything(fake_openssh, tmp_path):
    old_python = tmp_path / "python3.9"
    old_python.write_text("#!/bin/sh\necho 3.9.18\n")
    old_python.chmod(0o755)
    result = CliRunner().invoke(main, ["device", "setup", "pi@device.local", "--python", str(old_python)])
    assert result.exit_code == 2 and "3.9.18" in str(result.output)
    assert [c["program"] for c in fake_openssh()] == ["ssh"]   # asked the version, copied and made nothing


def test_the_project_wheel_carries_the_runtime_and_the_device_profiles(tmp_path):
    wheel = build_project_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert "edge_electra/runtime/predictor.py" in names and "edge_electra/tools/bench/remote.py" in names
    assert any(n.endswith("data/share/edge-electra/targets/raspberry-pi-5.toml") for n in names)


def test_an_arm_cpu_is_named_by_its_part_number(tmp_path):
    from edge_electra.tools.bench.sysinfo import cpu_info
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp\nCPU implementer\t: 0x41\nCPU part\t: 0xd0b\n")
    assert cpu_info(cpuinfo)["model"] == "Cortex-A76"   # Raspberry Pi 5; ARM Linux writes no "model name"
    cpuinfo.write_text("model name\t: AMD EPYC\nflags\t: avx2\n")
    assert cpu_info(cpuinfo)["model"] == "AMD EPYC"
