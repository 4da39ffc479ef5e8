"""compile --remote: candidates built and gated here, timed on the device, chosen by the device's latencies; the
manifest says where they were timed and whether the bundle was cross-compiled. The last test needs a device
(`make device-test`: the emulated arm64 one)."""
import json
import os
import platform
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from edge_electra.build import candidates as candidates_module  # noqa: E402
from edge_electra.build.candidates import Candidate, time_candidates  # noqa: E402
from edge_electra.build.compile import compile_bundle, cross_compiled  # noqa: E402
from edge_electra.build.targets import load_target  # noqa: E402
from edge_electra.runtime.bundle import Bundle  # noqa: E402
from edge_electra.tools.bench.remote import Remote  # noqa: E402

from test_compile import checkpoint, private_cache  # noqa: E402,F401  (fixtures: a tiny checkpoint, a private cache)

DEVICE = os.environ.get("EDGE_ELECTRA_DEVICE")
EVIDENCE = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("target, machine, cross", [
    ("raspberry-pi-5", "x86_64", True), ("raspberry-pi-5", "aarch64", False), ("raspberry-pi-5", "arm64", False),
    ("x86-avx2-cpu", "AMD64", False), ("x86-avx2-cpu", "aarch64", True), ("torch-reference", "aarch64", False)])
def test_cross_compiled_compares_the_targets_architecture_with_the_build_machines(target, machine, cross):
    assert cross_compiled(load_target(target), machine) is cross


DEVICE_SYSTEM = {"machine": "aarch64", "hostname": "pi", "cpu": {"model": "Cortex-A76"}, "emulated": True,
                 "emulation": "aarch64 user space on a x86_64 kernel"}


def test_device_latencies_replace_and_choose_and_an_untimed_candidate_is_out(monkeypatch):
    seen = {}

    def on_device(remote, bundles, texts, threads):
        seen.update(bundles=bundles, texts=texts)
        return {"fp32": 9.0, "int8-dynamic": 4.0}, DEVICE_SYSTEM
    monkeypatch.setattr(candidates_module, "time_on_device", on_device)
    cands = [Candidate("fp32", passed=True), Candidate("int8-dynamic", passed=True),
             Candidate("int8-static", passed=True), Candidate("fp16", error="RuntimeError: no")]
    bundles = {c.precision: Path(f"/w/bundle.{c.precision}") for c in cands[:3]}
    timed_on = time_candidates(cands, {}, [], bundles, ["play jazz"], Remote("pi", "device.local"))
    assert seen == {"bundles": bundles, "texts": ["play jazz"]}
    assert [c.latency_ms for c in cands[:2]] == [9.0, 4.0]
    assert cands[2].error == "not timed on pi@device.local" and cands[3].error == "RuntimeError: no"
    assert timed_on == {"remote": "pi@device.local", "hostname": "pi", "machine": "aarch64", "cpu": "Cortex-A76",
                        "emulated": True, "emulation": DEVICE_SYSTEM["emulation"]}
    assert candidates_module.choose(cands, "auto", False, load_target("raspberry-pi-5")).precision == "int8-dynamic"


def test_compile_remote_chooses_by_the_devices_timings(checkpoint, tmp_path, monkeypatch):
    # The fake device ranks the candidates the other way round from the order the profile lists them in.
    timed = {}

    def on_device(remote, bundles, texts, threads):
        for precision, path in bundles.items():   # the staged candidate bundles, as the device will load them
            timed[precision] = Bundle.load(path).manifest.precision
        ranks = load_target("raspberry-pi-5").precisions[::-1]
        return {p: 1.0 + ranks.index(p) for p in bundles}, DEVICE_SYSTEM
    monkeypatch.setattr(candidates_module, "time_on_device", on_device)
    out = compile_bundle(checkpoint["folder"], "raspberry-pi-5", tmp_path / "pi",
                         calibration=checkpoint["calibration"], threads=1, remote=Remote("root", "pi.local", 22))
    m = Bundle.load(out).manifest
    assert timed == {p: p for p in timed} and timed
    passing = {c["precision"]: c["latency_ms"] for c in m.candidates if c["passed"] and not c["error"]}
    assert m.precision == min(passing, key=passing.get)
    assert all(c["latency_ms"] == 1.0 + load_target("raspberry-pi-5").precisions[::-1].index(c["precision"])
               for c in m.candidates if c["precision"] in timed)
    assert m.timed_on["remote"] == "root@pi.local" and m.timed_on["machine"] == "aarch64" and m.timed_on["emulated"]
    assert m.cross_compiled is (platform.machine().lower() not in ("aarch64", "arm64"))


def test_compile_without_remote_names_the_build_machine(checkpoint, tmp_path, monkeypatch):
    def no_device(*_):
        raise AssertionError("no device was asked for")
    monkeypatch.setattr(candidates_module, "time_on_device", no_device)
    out = compile_bundle(checkpoint["folder"], "x86-avx2-cpu", tmp_path / "x86", precision="fp32",
                         calibration=checkpoint["calibration"], threads=1)
    m = Bundle.load(out).manifest
    assert m.timed_on["remote"] == "build machine" and m.timed_on["machine"] == platform.machine()
    assert m.timed_on["hostname"] == platform.node() and m.timed_on["emulated"] is False
    assert m.candidates[0]["latency_ms"] > 0
    assert m.cross_compiled is (platform.machine().lower() not in ("x86_64", "amd64"))


def device_flags() -> list[str]:
    port = os.environ.get("EDGE_ELECTRA_DEVICE_PORT")
    flags = ["--remote", f"{DEVICE}:{port}" if port else DEVICE]
    if os.environ.get("EDGE_ELECTRA_DEVICE_KEY"):
        flags += ["--ssh-key", os.environ["EDGE_ELECTRA_DEVICE_KEY"]]
    if os.environ.get("EDGE_ELECTRA_DEVICE_KNOWN_HOSTS"):
        flags += ["--ssh-option", "StrictHostKeyChecking=yes",
                  "--ssh-option", f"UserKnownHostsFile={os.environ['EDGE_ELECTRA_DEVICE_KNOWN_HOSTS']}"]
    if os.environ.get("EDGE_ELECTRA_DEVICE_REMOTE_PYTHON"):   # else the venv `device setup` made there
        flags += ["--remote-python", os.environ["EDGE_ELECTRA_DEVICE_REMOTE_PYTHON"]]
    return flags


@pytest.mark.device
@pytest.mark.skipif(not DEVICE, reason="EDGE_ELECTRA_DEVICE is unset: run `make device-test` (the emulated arm64 "
                                       "device) or export EDGE_ELECTRA_DEVICE=user@host for a real one")
def test_on_the_device_auto_precision_is_timed_there_and_profiled(checkpoint, tmp_path):
    from click.testing import CliRunner

    from edge_electra.cli import main
    from edge_electra.tools.bench import profile
    if not os.environ.get("EDGE_ELECTRA_DEVICE_REMOTE_PYTHON"):
        wheels = os.environ.get("EDGE_ELECTRA_DEVICE_WHEELS")
        destination, *ssh = device_flags()[1:]
        setup = CliRunner().invoke(main, ["device", "setup", destination, *ssh, "--python",
                                          os.environ.get("EDGE_ELECTRA_DEVICE_PYTHON", "python3"),
                                          *(["--remote-wheels", wheels] if wheels else [])])
        assert setup.exit_code == 0, setup.output
    out = tmp_path / "pi"
    done = CliRunner().invoke(main, ["compile", str(checkpoint["folder"]), "--target", "raspberry-pi-5",
                                     "--precision", "auto", "--out", str(out), "--calibration",
                                     str(checkpoint["calibration"]), "--threads", "1", *device_flags()])
    assert done.exit_code == 0, done.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["timed_on"]["machine"] == "aarch64"
    # The emulated device answers on loopback (device/arm64.sh); a real board does not.
    assert manifest["timed_on"]["emulated"] is DEVICE.endswith(("@127.0.0.1", "@localhost"))
    timed = {c["precision"]: c["latency_ms"] for c in manifest["candidates"] if c["passed"] and not c["error"]}
    assert manifest["precision"] == min(timed, key=timed.get) and all(ms > 0 for ms in timed.values())
    bench = CliRunner().invoke(main, ["bench", str(out), "--out", str(tmp_path / "bench"), "--profile",
                                      "--batch-sizes", "1", "--seq-lens", "16", "--runs", "10", "--warmup", "1",
                                      "--no-cold-start", *device_flags()])
    assert bench.exit_code == 0, bench.output
    result = json.loads((tmp_path / "bench" / "bench.json").read_text())
    summary = result["profiles"]["pi"]
    assert result["system"]["machine"] == "aarch64" and summary["total_ms"] > 0
    assert any("MatMul" in o["op_type"] for o in summary["ops"]) and (tmp_path / "bench" / summary["raw"]).is_file()
    EVIDENCE.mkdir(exist_ok=True)
    shutil.copyfile(out / "manifest.json", EVIDENCE / "arm64-auto-precision-manifest.json")
    (EVIDENCE / "arm64-profile-summary.md").write_text(
        f"# bench --profile of the raspberry-pi-5 bundle (`compile --precision auto --remote`, chose "
        f"{manifest['precision']}) on the device\n\n" + profile.markdown(result["profiles"], result["system"]) + "\n")
