"""On a device over SSH (`make device-test` starts the emulated arm64 one, device/README.md): `device setup`
from its offline wheels, a small joint intent+slot model compiled for raspberry-pi-5 and android-arm64 at every
precision each allows, each bundle run there through `bench --remote` and `device check`, and its intents and
slots compared with this machine's."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytestmark = pytest.mark.device

DEVICE = os.environ.get("EDGE_ELECTRA_DEVICE")
if not DEVICE:
    pytest.skip("EDGE_ELECTRA_DEVICE is unset: run `make device-test` (the emulated arm64 device) or export "
                "EDGE_ELECTRA_DEVICE=user@host for a real one", allow_module_level=True)
pytest.importorskip("torch")

from edge_electra.cli import main  # noqa: E402

PORT = os.environ.get("EDGE_ELECTRA_DEVICE_PORT")
TARGETS = ("raspberry-pi-5", "android-arm64")
GATE = 0.99   # top-1 and slot agreement with this machine's predictions
EVIDENCE = Path(__file__).resolve().parents[1] / "benchmarks" / "arm64-emulated-bench.json"


def ssh_flags() -> list[str]:
    """SSH options after USER@HOST: the device's key and a known_hosts with its host key, checked."""
    flags = ["--ssh-key", os.environ["EDGE_ELECTRA_DEVICE_KEY"]] if os.environ.get("EDGE_ELECTRA_DEVICE_KEY") else []
    if os.environ.get("EDGE_ELECTRA_DEVICE_KNOWN_HOSTS"):
        flags += ["--ssh-option", "StrictHostKeyChecking=yes",
                  "--ssh-option", f"UserKnownHostsFile={os.environ['EDGE_ELECTRA_DEVICE_KNOWN_HOSTS']}"]
    return flags


def run(*args) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, f"edge-electra {' '.join(map(str, args))}: {result.output}"
    return result.output


@pytest.fixture(scope="module")
def device_venv():
    """`device setup` once: offline from the device's wheels where it has them, else from the package index."""
    wheels = os.environ.get("EDGE_ELECTRA_DEVICE_WHEELS")
    port = ["--port", PORT] if PORT else []
    return run("device", "setup", DEVICE, *port, *ssh_flags(), "--python",
               os.environ.get("EDGE_ELECTRA_DEVICE_PYTHON", "python3"),
               *(["--remote-wheels", wheels] if wheels else []))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from edge_electra.tools import builtin_data
    return builtin_data.write(tmp_path_factory.mktemp("device") / "data")


@pytest.fixture(scope="module")
def bundles(data, tmp_path_factory):
    """{target/precision: bundle} from a tiny joint model fine-tuned briefly on the built-in data."""
    from edge_electra.build.targets import load_target
    from edge_electra.train import DistillConfig, finetune
    out = tmp_path_factory.mktemp("device-build")
    checkpoint = finetune(DistillConfig(data=str(data), out=str(out / "train"), preset="tiny", epochs=2, lr=2e-3,
                                        batch_size=32, max_length=32, threads=2, patience=0, resume=False))
    built = {}
    for target in TARGETS:
        for precision in load_target(target).precisions:
            dest = out / f"{target}-{precision}"
            run("compile", checkpoint, "--target", target, "--precision", precision, "--out", dest,
                "--calibration", data / "train.jsonl", "--eval", data / "validation.jsonl",
                "--accept-accuracy-drop", "--threads", 2)
            built[f"{target}/{precision}"] = dest
    return built


def test_the_device_venv_holds_the_run_time_only(device_venv):
    from edge_electra.tools.bench.remote import DEVICE_VENV, Remote, device_path
    assert "edge-electra" in device_venv and "onnxruntime" in device_venv
    flags = ssh_flags()
    options = [value for flag, value in zip(flags[::2], flags[1::2]) if flag == "--ssh-option"]
    remote = Remote.parse(DEVICE, key=os.environ.get("EDGE_ELECTRA_DEVICE_KEY"), options=options)
    remote.port = int(PORT) if PORT else None
    installed = remote.ssh(f"{device_path(DEVICE_VENV + '/bin/python')} -m pip list --format=freeze")
    names = {line.split("==")[0].lower().replace("_", "-") for line in installed.split()}
    assert {"edge-electra", "numpy", "tokenizers", "click", "onnxruntime"} <= names
    assert not names & {"torch", "tomli-w", "onnx", "safetensors", "nncf", "transformers"}, names


def test_every_bundle_runs_there_under_the_remote_bench(device_venv, bundles, data, tmp_path):
    spec = f"{DEVICE}:{PORT}" if PORT else DEVICE
    table = run("bench", *bundles.values(), "--remote", spec, *ssh_flags(), "--data", data / "test.jsonl",
                "--runs", 2, "--warmup", 1, "--batch-sizes", 1, "--seq-lens", 16, "--no-cold-start", "--threads", 1,
                "--out", tmp_path / "bench")
    result = json.loads((tmp_path / "bench" / "bench.json").read_text())
    system = result["system"]
    assert {b["name"] for b in result["bundles"]} == {p.name for p in bundles.values()}
    assert all(b["accuracy"]["intent_accuracy"] > 0 for b in result["bundles"])
    loopback = DEVICE.split("@")[-1] in ("127.0.0.1", "localhost")
    if loopback and system["machine"] != platform.machine():   # another architecture on this host: an emulator
        assert system["emulated"] is True and "EMULATED" in table
        EVIDENCE.write_text(json.dumps(result, indent=1) + "\n")
    assert system["machine"] == "aarch64"   # the targets here are ARM: so must the device be


def agreement(here, there) -> dict[str, float]:
    """Of two prediction lists: top-1 agreement of the labels given (after the out-of-scope threshold) and of
    the most probable intents (before it), slot-tag agreement over every word, largest probability difference."""
    tags = [(tag, b_tag) for a, b in zip(here, there) for (_, tag), (_, b_tag) in zip(a.slots, b["slots"])]
    assert len(tags) == sum(len(a.slots) for a in here)
    probabilities = np.array([a.probabilities for a in here]), np.array([b["probabilities"] for b in there])
    return {"labels": float(np.mean([a.label == b["label"] for a, b in zip(here, there)])),
            "top1": float(np.mean(probabilities[0].argmax(1) == probabilities[1].argmax(1))),
            "slots": sum(x == y for x, y in tags) / len(tags),
            "max_probability_difference": float(np.abs(probabilities[0] - probabilities[1]).max())}


@pytest.mark.parametrize("name", [f"{t}/{p}" for t in TARGETS for p in ("int8-dynamic", "int8-static", "fp32")])
def test_device_check_passes_and_the_device_agrees_with_this_machine(device_venv, bundles, data, tmp_path, name,
                                                                     record_property):
    from edge_electra import Predictor
    from edge_electra.data import read_text_lines
    bundle = bundles[name]
    port = ["--port", PORT] if PORT else []
    output = run("device", "check", DEVICE, bundle, *port, *ssh_flags(), "--texts", data / "test.jsonl",
                 "--json", tmp_path / "check.json")
    assert f"{bundle} runs on {DEVICE}" in output
    report = json.loads((tmp_path / "check.json").read_text())
    texts = list(read_text_lines([data / "test.jsonl"]))
    here = Predictor.load(bundle).predict_batch(texts, probabilities=True)
    agreed = agreement(here, report["predictions"])
    for key, value in agreed.items():
        record_property(key, value)   # in --junitxml: what the device measured
    assert min(agreed["labels"], agreed["top1"], agreed["slots"]) >= GATE, (name, report["machine"], agreed)
    # The same model in another build of the runtime: probabilities as close as float arithmetic allows
    # (OpenVINO's f16 default on ARM is not used by these onnx-mobile targets).
    assert agreed["max_probability_difference"] < 0.02, (name, agreed)
