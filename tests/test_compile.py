"""compile end to end on tiny models: onnx-mobile, openvino and the torch reference; outputs match torch."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edge_electra.backends import get_backend  # noqa: E402
from edge_electra.build.package import write_bundle  # noqa: E402
from edge_electra.runtime.bundle import Bundle, Manifest, sha256  # noqa: E402
from edge_electra.train.checkpoint import save_pretrained  # noqa: E402
from edge_electra.build.candidates import Candidate, choose, time_interleaved  # noqa: E402
from edge_electra.build.compile import compile_bundle  # noqa: E402
from edge_electra.errors import ConfigError, GateRefused  # noqa: E402
from edge_electra.build.targets import load_target  # noqa: E402

from conftest import tiny_model  # noqa: E402

INTENTS = {
    "lights": ["turn on the lights", "switch the kitchen lamp on", "lights on in the bedroom please"],
    "music": ["play some jazz", "put on music by the beatles", "play my workout playlist"],
    "weather": ["what is the weather in paris", "will it rain tomorrow", "how cold is it outside"],
}
TEXTS = [t for ts in INTENTS.values() for t in ts]
PROBES = ["turn the lamp on in the kitchen please", "play jazz", "will it be cold in paris tomorrow or not"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_ELECTRA_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("compile")
    model, tokenizer = tiny_model(labels=list(INTENTS), texts=TEXTS)
    folder = save_pretrained(model, root / "ckpt", tokenizer=tokenizer)
    calibration = root / "calibration.txt"
    calibration.write_text("\n".join(TEXTS * 2) + "\n")
    labelled = root / "eval.jsonl"
    labelled.write_text("".join(json.dumps({"text": t, "label": label}) + "\n"
                                for label, ts in INTENTS.items() for t in ts))
    return {"folder": folder, "calibration": calibration, "eval": labelled, "model": model, "tokenizer": tokenizer}


def torch_outputs(model, feeds):
    with torch.no_grad():
        out = model(*(torch.from_numpy(feeds[n]) for n in ("input_ids", "attention_mask", "token_type_ids")))
    return out.numpy()


def check_matches_torch(bundle, ck, atol, batch_texts=PROBES):
    runner = get_backend(bundle.manifest.backend).load(bundle)
    feeds = ck["tokenizer"](batch_texts, buckets=bundle.manifest.tokenizer["buckets"]).arrays()
    got = runner.run(feeds)[runner.output_names[0]]
    expected = torch_outputs(ck["model"], feeds)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=atol)
    return runner


TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2, "int8-dynamic": 5e-2, "int8-static": 5e-2}


def test_onnx_mobile_auto_keeps_the_fastest_within_budget(checkpoint, tmp_path):
    path = compile_bundle(checkpoint["folder"], "x86-avx2-cpu", tmp_path / "bundle",
                          calibration=checkpoint["calibration"], eval_data=checkpoint["eval"], threads=1)
    bundle = Bundle.load(path)
    m = bundle.manifest
    profile = load_target("x86-avx2-cpu")
    assert [c["precision"] for c in m.candidates] == profile.precisions
    built = [c for c in m.candidates if not c["error"]]
    assert len(built) == len(profile.precisions)
    assert all(c["latency_ms"] > 0 and c["size_bytes"] > 0 for c in built)
    passing = [c for c in built if c["passed"]]
    assert m.precision == min(passing, key=lambda c: c["latency_ms"])["precision"]
    assert m.accuracy["passed"] and m.accuracy["accuracy_fp32"] is not None   # labelled eval: real accuracy
    assert {"model.ort", "required_operators.config", "report.json", "tokenizer.json"} <= set(m.files)
    assert "ai.onnx;" in bundle.file("required_operators.config").read_text()
    assert m.source["sha256"] == sha256(checkpoint["folder"] / "model.safetensors")
    assert m.tokenizer["buckets"] == [8, 12, 16, 24, 32, 48, 64] and m.tokenizer["max_length"] == 64  # cut to 64
    assert m.versions["onnxruntime"] and m.runtime["execution_providers"] == ["CPUExecutionProvider"]
    assert [(t.name, t.shape) for t in m.inputs][0] == ("input_ids", [[1, 32], [8, 64]])
    assert [(t.name, t.shape) for t in m.outputs] == [("logits", [[1, 32], len(INTENTS)])]
    report = json.loads(bundle.file("report.json").read_text())
    assert report["op_coverage"]["CPUExecutionProvider"]["source"].startswith("onnxruntime partitioning")
    check_matches_torch(bundle, checkpoint, TOLERANCE[m.precision])


def test_android_fixed_shapes_nnapi_report_and_predictor(checkpoint, tmp_path):
    path = compile_bundle(checkpoint["folder"], "android-arm64", tmp_path / "android", precision="fp32",
                          calibration=checkpoint["calibration"], threads=1)
    bundle = Bundle.load(path)
    m = bundle.manifest
    assert [v["seq"] for v in m.runtime["variants"]] == [32, 64] and {"model.s32.ort", "model.s64.ort"} <= set(m.files)
    assert m.runtime["execution_providers"][0] == "NnapiExecutionProvider"
    coverage = json.loads(bundle.file("report.json").read_text())["op_coverage"]
    assert "nnapi_supported_ops.md" in coverage["NnapiExecutionProvider"]["source"]
    assert "XNNPACK EP docs" in coverage["XnnpackExecutionProvider"]["source"]
    assert 0 < coverage["NnapiExecutionProvider"]["supported_nodes"] <= coverage["NnapiExecutionProvider"]["nodes"]
    # batch 3 on a batch-1 model: run in chunks; NNAPI is absent here, so ORT fell back to CPU and says so.
    runner = check_matches_torch(bundle, checkpoint, 1e-4)
    assert runner.providers == ["CPUExecutionProvider"]
    with pytest.raises(ConfigError, match="sequence lengths \\[32, 64\\]"):
        runner.run(checkpoint["tokenizer"](["play jazz"]).arrays())
    from edge_electra.runtime.predictor import Predictor
    predictions = Predictor.load(path).predict_batch(PROBES)
    assert [p.label for p in predictions] == [list(INTENTS)[i] for i in
                                               torch_outputs(checkpoint["model"], checkpoint["tokenizer"](
                                                   PROBES).arrays()).argmax(-1)]


def test_ios_fp16_fixed_shapes_with_coreml_report(checkpoint, tmp_path):
    path = compile_bundle(checkpoint["folder"], "ios-arm64", tmp_path / "ios", precision="fp16",
                          calibration=checkpoint["calibration"], threads=1)
    bundle = Bundle.load(path)
    assert bundle.manifest.precision == "fp16"
    assert bundle.manifest.runtime["provider_options"]["CoreMLExecutionProvider"]["ModelFormat"] == "MLProgram"
    coverage = json.loads(bundle.file("report.json").read_text())["op_coverage"]
    assert "coreml_supported_mlprogram_ops.md" in coverage["CoreMLExecutionProvider"]["source"]
    check_matches_torch(bundle, checkpoint, TOLERANCE["fp16"])


def test_openvino_auto_int8_and_fp32(checkpoint, tmp_path):
    path = compile_bundle(checkpoint["folder"], "x86-vnni-cpu", tmp_path / "ov", calibration=checkpoint["calibration"], threads=1)
    bundle = Bundle.load(path)
    m = bundle.manifest
    assert [c["precision"] for c in m.candidates] == ["int8-static", "fp32"]
    assert all(not c["error"] for c in m.candidates), m.candidates
    assert {"model.xml", "model.bin"} <= set(m.files) and m.runtime["device"] == "CPU"
    assert m.versions["openvino"] and m.versions["nncf"]
    runner = check_matches_torch(bundle, checkpoint, TOLERANCE[m.precision])
    assert runner.device == "CPU"


def test_openvino_npu_fixed_fp16_falls_back_to_cpu_here(checkpoint, tmp_path):
    path = compile_bundle(checkpoint["folder"], "intel-npu", tmp_path / "npu", precision="fp16",
                          calibration=checkpoint["calibration"], threads=1)
    bundle = Bundle.load(path)
    assert {"model.s32.xml", "model.s64.bin"} <= set(bundle.manifest.files)
    runner = check_matches_torch(bundle, checkpoint, TOLERANCE["fp16"])
    assert runner.requested_device == "NPU" and runner.device == "CPU"


def test_torch_reference_bundle(checkpoint, tmp_path):
    path = compile_bundle(checkpoint["folder"], "torch-reference", tmp_path / "ref", calibration=checkpoint["calibration"], threads=1)
    bundle = Bundle.load(path)
    assert {"config.json", "model.safetensors"} <= set(bundle.manifest.files)
    check_matches_torch(bundle, checkpoint, 1e-6)


def test_interrupted_compile_keeps_the_old_bundle(checkpoint, tmp_path, monkeypatch):
    model = checkpoint["folder"] / "model.safetensors"
    old = write_bundle(tmp_path / "bundle", Manifest("sequence", list(INTENTS), "torch", "fp32", [], [], {}),
                       {"model.safetensors": model}, checkpoint["tokenizer"])
    before = Bundle.load(old).manifest.files
    backend_cls = type(get_backend("onnx-mobile"))

    def killed(self, request, workdir):
        raise KeyboardInterrupt

    monkeypatch.setattr(backend_cls, "compile", killed)
    with pytest.raises(KeyboardInterrupt):
        compile_bundle(checkpoint["folder"], "x86-avx2-cpu", old, precision="fp32",
                       calibration=checkpoint["calibration"], threads=1)
    assert Bundle.load(old).manifest.files == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]   # no half-written bundle


def test_user_errors(checkpoint, tmp_path):
    with pytest.raises(ConfigError, match="allows precisions .* not 'fp16'"):
        compile_bundle(checkpoint["folder"], "x86-avx2-cpu", tmp_path / "b", precision="fp16")
    with pytest.raises(ConfigError, match="unknown target"):
        compile_bundle(checkpoint["folder"], "toaster", tmp_path / "b")
    with pytest.raises(ConfigError, match="TensorRT is not installed"):
        compile_bundle(checkpoint["folder"], "jetson-orin", tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_cli_reports_errors_in_one_line(checkpoint, tmp_path):
    from click.testing import CliRunner

    from edge_electra.cli import main
    result = CliRunner().invoke(main, ["compile", str(checkpoint["folder"]), "--target", "toaster",
                                       "--out", str(tmp_path / "b")])
    assert result.exit_code != 0 and "unknown target 'toaster'" in result.output
    assert "Traceback" not in result.output


def candidate(precision, latency, drop, budget=0.5):
    failures = [f"accuracy drops {drop} points"] if drop > budget else []
    return Candidate(precision, latency, {"drop": drop, "top1_agreement": 1.0, "failures": failures}, 1, not failures)


def test_choice_fastest_passing_else_refused_or_accepted():
    profile = load_target("x86-avx2-cpu")
    cands = [candidate("fp32", 2.0, 0.0), candidate("int8-dynamic", 1.0, 0.3), candidate("int8-static", 0.5, 2.0)]
    assert choose(cands, "auto", False, profile).precision == "int8-dynamic"
    failing = [candidate("int8-dynamic", 1.0, 0.9), candidate("int8-static", 0.5, 2.0)]
    with pytest.raises(GateRefused, match="int8-static: accuracy drops 2.0 points.*--accept-accuracy-drop"):
        choose(failing, "auto", False, profile)
    assert choose(failing, "auto", True, profile).precision == "int8-dynamic"
    broken = [Candidate("fp32", error="RuntimeError: boom")]
    with pytest.raises(ConfigError, match="no precision could be built.*boom"):
        choose(broken, "auto", False, profile)


def test_candidates_are_timed_interleaved_with_a_rotating_order():
    # A load burst must hit every candidate alike: each feed runs on all runners in turn, first one rotating.
    calls = []

    class Fake:
        def __init__(self, name):
            self.name = name

        def run(self, feed):
            calls.append((feed["i"], self.name))

    runners = {name: Fake(name) for name in ("int8-dynamic", "fp32", "int8-static")}
    latencies = time_interleaved(runners, [{"i": 0}, {"i": 1}], rounds=2, warmup=0)
    assert set(latencies) == set(runners) and all(ms >= 0 for ms in latencies.values())
    assert len(calls) == 2 * 2 * 3
    firsts = [calls[k][1] for k in range(0, len(calls), 3)]
    assert firsts == ["int8-dynamic", "fp32", "int8-static", "int8-dynamic"]
    assert all({n for _, n in calls[k:k + 3]} == set(runners) for k in range(0, len(calls), 3))


@pytest.fixture(scope="module")
def checkpoint_128(tmp_path_factory):
    """A tiny model with 128 positions, so the mobile targets keep all their buckets (32, 64, 128)."""
    model, tokenizer = tiny_model(max_position=128, labels=list(INTENTS), texts=TEXTS)
    return {"folder": save_pretrained(model, tmp_path_factory.mktemp("compile128") / "ckpt", tokenizer=tokenizer),
            "model": model, "tokenizer": tokenizer}


@pytest.mark.parametrize("target", ["android-arm64", "ios-arm64"])
def test_mobile_targets_build_every_bucket_and_predict(checkpoint_128, tmp_path, target):
    # Through the CLI as users run it, auto precision: every candidate must build (the .ort files sort
    # as s128 < s32 < s64, which once sent the 32-token probe to the 128-token model).
    from click.testing import CliRunner

    from edge_electra.cli import main
    from edge_electra.runtime.predictor import Predictor
    out = tmp_path / target
    result = CliRunner().invoke(main, ["compile", str(checkpoint_128["folder"]), "--target", target, "--out", str(out)])
    assert result.exit_code == 0, result.output
    m = Bundle.load(out).manifest
    assert not [c["error"] for c in m.candidates if c["error"]]
    assert [v["seq"] for v in m.runtime["variants"]] == [32, 64, 128]
    # One text per bucket: the Predictor pads each batch to the smallest bucket that holds it.
    texts = ["play jazz", " ".join(["lights"] * 40), " ".join(["weather in paris"] * 30)]
    feeds = [checkpoint_128["tokenizer"]([t], buckets=[32, 64, 128]).arrays() for t in texts]
    assert [f["input_ids"].shape[1] for f in feeds] == [32, 64, 128]
    predictor = Predictor.load(out, threads=1)
    got = np.stack([p.probabilities for p in predictor.predict_batch(texts, probabilities=True)])
    expected = np.concatenate([torch.softmax(torch.from_numpy(torch_outputs(checkpoint_128["model"], f)), -1).numpy()
                               for f in feeds])
    np.testing.assert_allclose(got, expected, atol=TOLERANCE[m.precision])


def test_auto_records_a_candidate_that_fails_to_build_and_goes_on(checkpoint, tmp_path, monkeypatch):
    # Defect 8: a backend's ConfigError from one precision (TensorRT reports every build failure that way)
    # used to abort compile; it is that candidate's reason now, and the others are built and gated.
    backend_cls = type(get_backend("onnx-mobile"))
    original = backend_cls.compile

    def int8_static_fails(self, request, workdir):
        if request.precision == "int8-static":
            raise ConfigError("no INT8 kernels on this device")
        return original(self, request, workdir)

    monkeypatch.setattr(backend_cls, "compile", int8_static_fails)
    path = compile_bundle(checkpoint["folder"], "x86-avx2-cpu", tmp_path / "bundle",
                          calibration=checkpoint["calibration"], eval_data=checkpoint["eval"], threads=1)
    m = Bundle.load(path).manifest
    errors = {c["precision"]: c["error"] for c in m.candidates}
    assert errors.pop("int8-static") == "ConfigError: no INT8 kernels on this device"
    assert set(errors) == set(load_target("x86-avx2-cpu").precisions) - {"int8-static"}
    assert not any(errors.values()) and m.precision != "int8-static"


def test_a_quantized_model_from_quantize_compiles_into_a_bundle(checkpoint, tmp_path, monkeypatch):
    # The arrow quantize → compile: a Q/DQ model made outside compile ships as it is, gated against FP32.
    import onnxruntime as ort
    from click.testing import CliRunner

    from edge_electra.build.calibration import calibration_feeds
    from edge_electra.build.export import ExportConfig, export_onnx
    from edge_electra.build.quantize import StaticQuantConfig, quantize
    from edge_electra.cli import main
    fp32 = export_onnx(checkpoint["model"], tmp_path / "fp32.onnx", ExportConfig(optimize=False)).path
    feeds = calibration_feeds(TEXTS * 2, checkpoint["tokenizer"], 6)
    given = quantize(fp32, tmp_path / "q.onnx", StaticQuantConfig(symmetric_activations=False), feeds)
    result = CliRunner().invoke(main, ["compile", str(checkpoint["folder"]), "--target", "x86-avx2-cpu",
                                       "--model", str(given), "--eval", str(checkpoint["eval"]), "--threads", "1",
                                       "--accept-accuracy-drop", "--out", str(tmp_path / "bundle")])
    assert result.exit_code == 0, result.output
    bundle = Bundle.load(tmp_path / "bundle")
    m = bundle.manifest
    assert m.precision == "int8-static" and [c["precision"] for c in m.candidates] == ["int8-static"]
    assert m.source["model"] == {"path": str(given), "sha256": sha256(given), "precision": "int8-static"}
    assert m.accuracy["accuracy_fp32"] is not None and 0 <= m.accuracy["top1_agreement"] <= 1
    # The bundle runs the given model, not one compile quantized itself.
    runner = get_backend("onnx-mobile").load(bundle)
    probe = checkpoint["tokenizer"](PROBES).arrays()
    expected = ort.InferenceSession(str(given), providers=["CPUExecutionProvider"]).run(None, probe)[0]
    np.testing.assert_allclose(runner.run(probe)["logits"], expected, atol=1e-4)
    # OpenVINO reads the given Q/DQ model as it is: NNCF never quantizes anything here.
    import edge_electra.backends.openvino as openvino_backend
    monkeypatch.setattr(openvino_backend, "quantize_int8", lambda *a: pytest.fail("NNCF ran on a given model"))
    ov = Bundle.load(compile_bundle(checkpoint["folder"], "x86-vnni-cpu", tmp_path / "ov", model_onnx=given,
                                    accept_accuracy_drop=True, threads=1))
    assert ov.manifest.precision == "int8-static" and not ov.manifest.candidates[0]["error"]
    assert "FakeQuantize" in json.loads(ov.file("report.json").read_text())["openvino"]["ops"]
    with pytest.raises(ConfigError, match="holds a int8-static model, not fp32"):
        compile_bundle(checkpoint["folder"], "x86-avx2-cpu", tmp_path / "b", precision="fp32", model_onnx=given)
    with pytest.raises(ConfigError, match="allows"):
        compile_bundle(checkpoint["folder"], "ios-arm64", tmp_path / "b", model_onnx=given)


def test_the_gate_runs_batches_the_target_can_take(checkpoint, tmp_path, monkeypatch):
    # A profile whose runtime takes at most 4 items (jetson-orin takes 8): the gate's batches must fit.
    import dataclasses

    from edge_electra.build.targets import Range
    profile = dataclasses.replace(load_target("x86-avx2-cpu"), batch=Range(1, 1, 4))
    backend_cls = type(get_backend("onnx-mobile"))
    original, batches = backend_cls.load, []

    def recording(self, bundle, **options):
        runner = original(self, bundle, **options)
        run = runner.run
        runner.run = lambda feeds: batches.append(len(feeds["input_ids"])) or run(feeds)
        return runner

    monkeypatch.setattr(backend_cls, "load", recording)
    compile_bundle(checkpoint["folder"], profile, tmp_path / "b", precision="fp32",
                   calibration=checkpoint["calibration"], eval_data=checkpoint["eval"], threads=1)
    assert batches and max(batches) == 4
