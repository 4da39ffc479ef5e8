"""`edge-electra demo` end to end, shortened: train → gate → compile for both CPU targets → bench → report."""
import pytest

pytest.importorskip("torch")
pytest.importorskip("openvino")


def test_demo_builds_gated_bundles_and_a_report(tmp_path, monkeypatch):
    import json

    from edge_electra.runtime.bundle import Bundle
    from edge_electra.tools.demo import DemoConfig, run_demo, summary
    outcome = run_demo(DemoConfig(out=str(tmp_path / "build"), preset="tiny", epochs=2, threads=1, bench_runs=3))
    bundles = {b["name"]: b for b in outcome.bench["bundles"]}
    assert set(bundles) == {"x86-avx2-cpu", "x86-vnni-cpu", "torch-reference"}
    backends = {name: Bundle.load(tmp_path / "build" / "bundles" / name).manifest.backend for name in bundles}
    assert backends == {"x86-avx2-cpu": "onnx-mobile", "x86-vnni-cpu": "openvino", "torch-reference": "torch"}
    for name in ("x86-avx2-cpu", "x86-vnni-cpu"):
        manifest = Bundle.load(tmp_path / "build" / "bundles" / name).manifest
        assert len(manifest.candidates) >= 2   # every precision the profile allows was built and gated
        assert manifest.accuracy["passed"] or manifest.accuracy.get("accepted")
    report = tmp_path / "build" / "report"
    assert all((report / f).stat().st_size > 0 for f in ("bench.json", "bench.csv", "bench.png"))
    # No pretrained weights were found: a tiny student trained from scratch.
    assert json.loads((outcome.checkpoint / "config.json").read_text())["hidden_size"] == 32
    text = summary(outcome)
    assert "x torch eager" in text and all(str(path) in text for path in outcome.bundles)
