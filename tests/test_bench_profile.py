"""`bench --profile`: per-operator summaries from ONNX Runtime's trace and OpenVINO's performance counters."""
import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_electra.tools.bench import profile
from edge_electra.tools.bench.cli import command

from test_bench_remote import fake_openssh  # noqa: F401  (a fixture: ssh and scp stand-ins)

TRACE = [  # the shape of ONNX Runtime's chrome trace: fences around each kernel, session events around runs
    {"cat": "Session", "name": "model_run", "dur": 900},
    {"cat": "Node", "name": "/l0/MatMul_fence_before", "dur": 0, "args": {"op_name": "MatMul"}},
    {"cat": "Node", "name": "/l0/MatMul_kernel_time", "dur": 300, "args": {"op_name": "MatMul"}},
    {"cat": "Node", "name": "/l0/MatMul_fence_after", "dur": 0, "args": {"op_name": "MatMul"}},
    {"cat": "Node", "name": "/l1/MatMul_kernel_time", "dur": 200, "args": {"op_name": "MatMul"}},
    {"cat": "Node", "name": "/Softmax_kernel_time", "dur": 250, "args": {"op_name": "Softmax"}},
    {"cat": "Node", "name": "/Gather_kernel_time", "dur": 250, "args": {"op_name": "Gather"}},
]
COUNTERS = [  # InferRequest.get_profiling_info(), as the runner records it
    {"node_name": "fc", "node_type": "FullyConnected", "status": "EXECUTED", "real_time_us": 600.0},
    {"node_name": "fc2", "node_type": "FullyConnected", "status": "EXECUTED", "real_time_us": 200.0},
    {"node_name": "mvn", "node_type": "MVN", "status": "EXECUTED", "real_time_us": 200.0},
    {"node_name": "gelu", "node_type": "Gelu", "status": "NOT_RUN", "real_time_us": 0.0},
    {"node_name": "x", "node_type": "Parameter", "status": "OPTIMIZED_OUT", "real_time_us": 50.0},
]


def test_summary_of_an_onnxruntime_trace():
    s = profile.summarize({"runtime": "onnxruntime", "events": TRACE}, runs=2)
    assert [(o["op_type"], o["total_ms"], o["calls"]) for o in s["ops"]] == [
        ("MatMul", 0.5, 2), ("Softmax", 0.25, 1), ("Gather", 0.25, 1)]
    assert s["ops"][0]["share"] == pytest.approx(0.5) and s["total_ms"] == 1.0 and s["per_run_ms"] == 0.5


def test_summary_of_openvino_counters_keeps_executed_nodes_only():
    s = profile.summarize({"runtime": "openvino", "events": COUNTERS}, runs=1)
    assert [(o["op_type"], o["total_ms"], o["calls"]) for o in s["ops"]] == [("FullyConnected", 0.8, 2),
                                                                             ("MVN", 0.2, 1)]
    assert sum(o["share"] for o in s["ops"]) == pytest.approx(1.0)


def test_table_shows_the_top_operators_and_what_is_left():
    s = profile.summarize({"runtime": "onnxruntime", "events": TRACE}, runs=2)
    lines = profile.table({"b": s}, top=2).splitlines()
    assert [line.split()[0] for line in lines[2:4]] == ["MatMul", "Softmax"]
    assert "1 more op type(s), 25.0%" in lines[-1]


def ort_graph_ops(bundle) -> set[str]:
    """The op types of the graph ONNX Runtime runs for `bundle` (after its optimizations)."""
    import onnx
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(bundle.parent / f"{bundle.name}.optimized.onnx")
    ort.InferenceSession(str(bundle / "model.onnx"), so, providers=["CPUExecutionProvider"])
    return {n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node}


def bench_profile(bundle, out):
    result = CliRunner().invoke(command, [str(bundle), "--out", str(out), "--profile", "--batch-sizes", "1",
                                          "--seq-lens", "16,32", "--runs", "5", "--warmup", "1", "--no-cold-start",
                                          "--threads", "1"])
    assert result.exit_code == 0, result.output
    return json.loads((out / "bench.json").read_text()), result.output


def test_bench_profile_onnxruntime(tiny_bundle, tmp_path):
    bundle = tiny_bundle("joint")
    bench, output = bench_profile(bundle, tmp_path / "out")
    summary = bench["profiles"][bundle.name]
    ops = {o["op_type"] for o in summary["ops"]}
    assert summary["runtime"] == "onnxruntime" and summary["runs"] == 5
    assert ops <= ort_graph_ops(bundle) and "MatMul" in ops
    assert all(o["total_ms"] >= 0 and o["calls"] >= 5 for o in summary["ops"]) and summary["total_ms"] > 0
    raw = json.loads((tmp_path / "out" / summary["raw"]).read_text())
    assert summary["raw"] == f"profile-{bundle.name}.json" and raw["runtime"] == "onnxruntime"
    assert sum(e.get("cat") == "Node" and e["name"].endswith("_kernel_time") for e in raw["events"]) == \
        sum(o["calls"] for o in summary["ops"])
    assert summary["ops"][0]["op_type"] in output and (tmp_path / "out" / "profile.md").exists()


def test_bench_profile_openvino(tiny_bundle, tmp_path):
    ov = pytest.importorskip("openvino")
    from edge_electra.build.package import write_bundle
    from edge_electra.runtime.bundle import Bundle
    from edge_electra.runtime.tokenizer import load_tokenizer
    source = Bundle.load(tiny_bundle("sequence"))
    xml = tmp_path / "ir" / "model.xml"
    xml.parent.mkdir()
    ov.save_model(ov.convert_model(str(source.path / "model.onnx")), str(xml))
    manifest = dataclasses.replace(source.manifest, backend="openvino", files={},
                                   versions={"openvino": ov.__version__.split("-")[0]})
    bundle = write_bundle(tmp_path / "ov-bundle", manifest, {"model.xml": xml, "model.bin": xml.with_suffix(".bin")},
                          load_tokenizer(source.path))
    bench, _ = bench_profile(bundle, tmp_path / "out")
    summary = bench["profiles"]["ov-bundle"]
    ops = {o["op_type"]: o for o in summary["ops"]}
    assert summary["runtime"] == "openvino" and summary["total_ms"] > 0
    assert ops["FullyConnected"]["total_ms"] > 0 and ops["FullyConnected"]["calls"] % 5 == 0
    raw = json.loads((tmp_path / "out" / "profile-ov-bundle.json").read_text())
    executed = {e["node_type"] for e in raw["events"] if e["status"] == "EXECUTED"}
    assert set(ops) == executed



def test_bench_profile_over_remote_brings_the_summary_and_raw_profile_back(tiny_bundle, fake_openssh, tmp_path):
    import sys
    bundle = tiny_bundle("sequence")
    out = tmp_path / "out"
    result = CliRunner().invoke(command, [str(bundle), "--remote", "pi@device.local", "--remote-python",
                                          sys.executable, "--out", str(out), "--profile", "--runs", "3",
                                          "--warmup", "0", "--batch-sizes", "1", "--seq-lens", "8",
                                          "--no-cold-start"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "bench.json").read_text())["profiles"][bundle.name]
    raw = json.loads((out / summary["raw"]).read_text())
    assert summary == profile.summarize(raw, 3) | {"raw": summary["raw"]}
    gets = [c for c in fake_openssh() if c["program"] == "scp" and c["argv"][-2].startswith("pi@device.local:")]
    assert [Path(c["argv"][-2]).name for c in gets] == ["bench.json", summary["raw"]]
