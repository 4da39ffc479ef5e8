"""ONNX export: dynamic shapes, ONNX Runtime fusions counted per layer, FP16 and fixed-shape variants."""
import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from edge_electra.train.checkpoint import save_pretrained  # noqa: E402
from edge_electra.cli import main  # noqa: E402
from edge_electra.train.config import preset  # noqa: E402
from edge_electra.errors import ConfigError  # noqa: E402
from edge_electra.build.export import ExportConfig, example_inputs, export_onnx  # noqa: E402
from edge_electra.train.model import Electra  # noqa: E402

LAYERS = 3


def tiny(task="sequence", seed=0):
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    model = Electra(preset("tiny", num_layers=LAYERS, task=task, labels=["a", "b", "c"],
                           slot_labels=["O", "B-x", "I-x"] if task == "joint" else [])).eval()
    with torch.no_grad():  # non-zero biases, as after training
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def run(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def torch_logits(model, feeds):
    with torch.no_grad():
        out = model(*(torch.from_numpy(feeds[n]) for n in ("input_ids", "attention_mask", "token_type_ids")))
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


@pytest.fixture(scope="module")
def model():
    return tiny()


def test_fusions_match_the_layer_count_and_torch(model, tmp_path):
    report = export_onnx(model, tmp_path / "m.onnx")
    assert report.fused["Attention"] == LAYERS
    # Two residual+LayerNorm per layer, plus the embeddings' sum + LayerNorm.
    assert report.fused["SkipLayerNormalization"] == 2 * LAYERS + 1
    assert report.fused.get("BiasGelu", 0) + report.fused.get("Gelu", 0) >= LAYERS
    # Dynamic batch and sequence: shapes other than the export's, with padding.
    for batch, seq in [(1, 5), (3, 23), (5, 9)]:
        feeds = example_inputs(batch, seq, model.config.vocab_size, seed=batch)
        np.testing.assert_allclose(run(report.path, feeds)[0], torch_logits(model, feeds)[0], atol=1e-4)
    assert [t.name for t in report.inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    assert report.inputs[0].shape == [[1, 64], [1, model.config.max_position]]


def test_padding_does_not_change_an_items_logits(model, tmp_path):
    path = export_onnx(model, tmp_path / "m.onnx").path
    feeds = example_inputs(1, 6, model.config.vocab_size, seed=3)
    padded = {n: np.pad(a, ((0, 0), (0, 10))) for n, a in feeds.items()}
    np.testing.assert_allclose(run(path, padded)[0], run(path, feeds)[0], atol=1e-5)


def test_fp16_keeps_float32_io_and_top1(model, tmp_path):
    report = export_onnx(model, tmp_path / "m16.onnx", ExportConfig(fp16=True))
    feeds = example_inputs(4, 12, model.config.vocab_size)
    got = run(report.path, feeds)[0]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.argmax(-1), torch_logits(model, feeds)[0].argmax(-1))
    import onnx
    weights = [t for t in onnx.load(str(report.path)).graph.initializer if t.data_type in (1, 10) and t.dims]
    assert sum(t.data_type == 10 for t in weights) > len(weights) // 2  # most weights are float16


def test_fixed_shape_and_unoptimized_joint_export(tmp_path):
    model = tiny("joint")
    report = export_onnx(model, tmp_path / "fixed.onnx", ExportConfig(fixed_shape=[1, 16], optimize=False))
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    assert [i.shape for i in session.get_inputs()] == [[1, 16]] * 3
    assert [o.name for o in session.get_outputs()] == ["logits", "slot_logits"]
    assert report.fused == {"LayerNormalization": 2 * LAYERS + 1}
    feeds = example_inputs(1, 16, model.config.vocab_size)
    for got, expected in zip(session.run(None, feeds), torch_logits(model, feeds)):
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_bad_config_is_rejected(model, tmp_path):
    with pytest.raises(ConfigError, match="opset"):
        export_onnx(model, tmp_path / "m.onnx", ExportConfig(opset=13))
    with pytest.raises(ConfigError, match="max_position"):
        export_onnx(model, tmp_path / "m.onnx", ExportConfig(fixed_shape=[1, 4096]))
    assert not list(tmp_path.iterdir())


def test_cli_prints_fusions_and_fails_cleanly(model, tmp_path):
    save_pretrained(model, tmp_path / "ckpt")
    result = CliRunner().invoke(main, ["export", str(tmp_path / "ckpt"), "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 0, result.output
    assert f"Attention {LAYERS}" in result.output and (tmp_path / "m.onnx").is_file()
    bad = CliRunner().invoke(main, ["export", str(tmp_path / "ckpt"), "--out", str(tmp_path / "x.onnx"),
                                    "--fixed-shape", "1x32"])
    assert bad.exit_code != 0 and "BATCH,SEQ" in bad.output
    assert not (tmp_path / "x.onnx").exists()
