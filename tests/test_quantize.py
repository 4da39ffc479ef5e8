"""INT8: dynamic and static Q/DQ run in ONNX Runtime, the gate catches drops, sensitivity search and QAT recover them."""
import re

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from edge_electra.build.calibration import calibration_feeds, default_texts  # noqa: E402
from edge_electra.train.checkpoint import save_pretrained  # noqa: E402
from edge_electra.cli import main  # noqa: E402
from edge_electra.train.config import preset  # noqa: E402
from edge_electra.data import Dataset, Example  # noqa: E402
from edge_electra.errors import ConfigError, DataError, EdgeElectraError, GateRefused  # noqa: E402
from edge_electra.build.export import ExportConfig, export_onnx  # noqa: E402
from edge_electra.train.model import Electra  # noqa: E402
from edge_electra.build.gate import Budget, GateData, GateReport, check, evaluate  # noqa: E402
from edge_electra.build.quantize import (DynamicQuantConfig, StaticQuantConfig, quantize,  # noqa: E402
                                         quantize_dynamic, quantize_static)
from edge_electra.build.quantize.qat import QATConfig, qat  # noqa: E402
from edge_electra.build.quantize.sensitivity import sensitivity_search  # noqa: E402
from edge_electra.runtime.tokenizer import Tokenizer  # noqa: E402

# A keyword-labelled intent task over the general calibration set: enough signal to train in seconds.
KEYWORDS = {"home": r"light|lamp|door|thermostat|heat|fan|blinds|garage|oven|vacuum",
            "music": r"play|song|music|volume|album|podcast|track",
            "weather": r"weather|rain|snow|forecast|hot|windy|humid|sun",
            "time": r"timer|alarm|remind|calendar|meeting|appointment|schedule",
            "money": r"pay|card|bill|account|transfer|charged|balance|refund|dollars"}
LABELS = sorted([*KEYWORDS, "other"])


def intent(text):
    return next((k for k, rx in KEYWORDS.items() if re.search(rx, text)), "other")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model trained briefly, then given an outlier channel in each layer's attention values.

    Trained transformers grow such channels; FP32 is unchanged (the value row is scaled up and the
    output projection's column down by the same factor) but per-tensor INT8 ranges become coarse,
    so plain post-training quantization flips predictions.
    """
    torch.manual_seed(0)
    torch.set_num_threads(1)
    texts = default_texts()
    data = Dataset([Example(t, intent(t)) for t in texts], LABELS)
    folder = tmp_path_factory.mktemp("quant")
    # A whole-word vocabulary: deterministic, unlike a trained WordPiece one.
    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())})
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tokenizer = Tokenizer.from_vocab(folder / "vocab.txt", max_length=32)
    model = Electra(preset("tiny", vocab_size=tokenizer.vocab_size, labels=LABELS, max_position=32))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = data.label_ids()
    for step in range(150):
        batch = np.random.default_rng(step).choice(len(texts), 32)
        feeds = {k: torch.from_numpy(v) for k, v in tokenizer([texts[i] for i in batch]).arrays().items()}
        loss = torch.nn.functional.cross_entropy(model(**feeds), torch.tensor([ids[i] for i in batch]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        for layer in model.encoder.layers:
            layer.attn.v.weight[3] *= 100
            layer.attn.v.bias[3] *= 100
            layer.attn.out.weight[:, 3] /= 100
    fp32 = export_onnx(model, folder / "fp32.onnx", ExportConfig(optimize=False)).path
    return dict(model=model, tokenizer=tokenizer, data=data, texts=texts, fp32=fp32, folder=folder,
                feeds=calibration_feeds(texts[::2], tokenizer, 16))


def test_static_qdq_is_symmetric_per_channel_and_keeps_sensitive_ops_float(setup):
    out = quantize_static(setup["fp32"], setup["folder"] / "minmax.onnx", setup["feeds"])
    graph = onnx.load(str(out)).graph
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    quantized = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    assert quantized and all(not consts[n.input[2]].any() for n in quantized if len(n.input) > 2)  # zero point 0
    producers = {o: n for n in graph.node for o in n.output}
    matmul_weights = [producers[n.input[1]] for n in graph.node if n.op_type == "MatMul" and n.input[1] in producers
                      and producers[n.input[1]].input[0] in consts]
    assert len(matmul_weights) >= 6 * 2  # q, k, v, out, ffn_in, ffn_out of each layer
    assert all(consts[dq.input[1]].size > 1 for dq in matmul_weights)  # one scale per output channel
    for node in graph.node:
        if node.op_type in ("LayerNormalization", "Softmax", "Erf"):
            assert producers.get(node.input[0]) is None or producers[node.input[0]].op_type != "DequantizeLinear"
    report = evaluate(setup["fp32"], out, setup["texts"], setup["tokenizer"], Budget(5.0))
    assert report.top1_agreement > 0.6 and report.batch1_vs_padded_agreement > 0.98


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_calibration_methods_run_in_onnxruntime(setup, method):
    out = quantize_static(setup["fp32"], setup["folder"] / f"{method}.onnx", setup["feeds"],
                          StaticQuantConfig(method=method))
    report = evaluate(setup["fp32"], out, setup["texts"], setup["tokenizer"], Budget(100.0, min_agreement=0.0))
    assert report.passed and report.top1_agreement > 0.6


def test_dynamic_quantization_of_the_fused_graph(setup):
    fused = export_onnx(setup["model"], setup["folder"] / "fused.onnx").path
    out = quantize(fused, setup["folder"] / "dynamic.onnx", DynamicQuantConfig())
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert ops & {"QAttention", "MatMulInteger", "DynamicQuantizeLinear"}
    report = evaluate(fused, out, setup["data"], setup["tokenizer"], Budget(100.0, min_agreement=0.0))
    assert report.accuracy is not None and abs(report.accuracy_delta) < 10


def test_static_rejects_fused_graphs_and_missing_calibration(setup, tmp_path):
    fused = export_onnx(setup["model"], tmp_path / "fused.onnx").path
    with pytest.raises(ConfigError, match="--no-optimize"):
        quantize_static(fused, tmp_path / "q.onnx", setup["feeds"])
    with pytest.raises(EdgeElectraError, match="calibration"):
        quantize_static(setup["fp32"], tmp_path / "q.onnx", [])
    assert not (tmp_path / "q.onnx").exists()


def test_gate_passes_identical_models_and_names_worst_layers_on_failure(setup):
    same = evaluate(setup["fp32"], setup["fp32"], GateData(setup["texts"], setup["data"].label_ids()),
                    setup["tokenizer"])
    assert same.passed and same.accuracy_delta == 0 and same.top1_agreement == 1 and same.max_abs_logit_delta == 0
    # A zero budget on agreement: any flipped prediction fails it and the worst layers are named.
    ptq = quantize_static(setup["fp32"], setup["folder"] / "gate.onnx", setup["feeds"])
    report = evaluate(setup["fp32"], ptq, setup["texts"], setup["tokenizer"], Budget(0.0))
    assert report.top1_agreement < 1 and not report.passed and report.worst_layers
    with pytest.raises(GateRefused, match=re.escape(report.worst_layers[0])):
        check(report)
    check(report, accept_accuracy_drop=True)
    assert set(report.to_dict()) >= {"accuracy_fp32", "accuracy", "accuracy_delta", "top1_agreement",
                                     "max_abs_logit_delta", "batch1_vs_padded_agreement", "passed", "worst_layers"}


def test_sensitivity_search_and_qat_recover_a_ptq_model_that_misses_the_budget(setup):
    budget = 0.5  # percent of items whose top-1 may change (no labels: agreement-based)
    ptq = quantize_static(setup["fp32"], setup["folder"] / "ptq.onnx", setup["feeds"])
    ptq_report = evaluate(setup["fp32"], ptq, setup["texts"], setup["tokenizer"], Budget(budget))
    assert not ptq_report.passed

    search = sensitivity_search(setup["fp32"], setup["folder"] / "mixed.onnx", setup["feeds"], setup["texts"],
                                setup["tokenizer"], budget=budget)
    assert search.passed and search.gate.drop <= budget
    assert 0 < len(search.float_groups) < len(search.group_disagreement)  # mixed precision, not all float
    graph = onnx.load(str(setup["folder"] / "mixed.onnx")).graph
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)
    # The search's result is data: quantizing with its config gives the same model again.
    again = quantize(setup["fp32"], setup["folder"] / "again.onnx", search.config, setup["feeds"])
    assert onnx.load(str(again)).graph == graph

    out = qat(setup["model"], setup["texts"], setup["tokenizer"], setup["folder"] / "qat.onnx", setup["feeds"],
              QATConfig(steps=60, lr=3e-4, batch_size=32))
    qat_report = evaluate(setup["fp32"], out, setup["texts"], setup["tokenizer"], Budget(budget))
    assert qat_report.passed and qat_report.top1_agreement > ptq_report.top1_agreement
    # Only what training rounded is quantized: Linear inputs, not their outputs nor attention's probabilities.
    nodes = onnx.load(str(out)).graph.node
    producers = {t: n.op_type for n in nodes for t in n.output}
    quantized = [n.input[0] for n in nodes if n.op_type == "QuantizeLinear"]
    assert quantized and not {producers.get(t) for t in quantized} & {"MatMul", "Gemm", "Softmax"}


def test_cli_quantizes_gates_and_leaves_nothing_on_failure(setup, tmp_path):
    save_pretrained(setup["model"], tmp_path / "ckpt", tokenizer=setup["tokenizer"])
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(f'{{"text": "{e.text}", "label": "{e.label}"}}\n' for e in setup["data"].examples))
    args = ["quantize", str(setup["fp32"]), "--checkpoint-or-tokenizer", str(tmp_path / "ckpt"),
            "--eval", str(data), "--calibration", str(data), "--calibration-samples", "64"]
    lenient = ["--budget", "100", "--min-agreement", "0"]
    ok = CliRunner().invoke(main, [*args, "--method", "minmax", *lenient, "--out", str(tmp_path / "q.onnx")])
    assert ok.exit_code == 0, ok.output
    assert "top-1 agreement" in ok.output and (tmp_path / "q.onnx").is_file()
    unsigned = CliRunner().invoke(main, [*args, "--activations", "asymmetric", *lenient,
                                         "--out", str(tmp_path / "u8.onnx")])
    assert unsigned.exit_code == 0, unsigned.output
    zero_point_types = {init.data_type for init in onnx.load(str(tmp_path / "u8.onnx")).graph.initializer
                        if init.name.endswith("_zero_point") and not init.dims}
    assert onnx.TensorProto.UINT8 in zero_point_types
    strict = CliRunner().invoke(main, [*args, "--budget", "0", "--min-agreement", "1",
                                       "--out", str(tmp_path / "strict.onnx")])
    assert strict.exit_code == 3 and "misses the accuracy budget" in strict.output
    assert not (tmp_path / "strict.onnx").exists()
    small = CliRunner().invoke(main, [*args[:-1], "100000", "--out", str(tmp_path / "small.onnx")])
    assert small.exit_code != 0 and "were asked for" in small.output
    assert not (tmp_path / "small.onnx").exists()


def test_cli_qat_fine_tunes_from_the_checkpoint_and_needs_training_data(setup, tmp_path):
    save_pretrained(setup["model"], tmp_path / "ckpt", tokenizer=setup["tokenizer"])
    data = tmp_path / "data.jsonl"
    data.write_text("".join(f'{{"text": "{e.text}", "label": "{e.label}"}}\n' for e in setup["data"].examples))
    args = ["quantize", str(setup["fp32"]), "--checkpoint-or-tokenizer", str(tmp_path / "ckpt"), "--method", "qat",
            "--eval", str(data), "--calibration", str(data), "--calibration-samples", "64"]
    missing = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "none.onnx")])
    assert missing.exit_code != 0 and "--train" in missing.output and not (tmp_path / "none.onnx").exists()
    ok = CliRunner().invoke(main, [*args, "--train", str(data), "--qat-steps", "20", "--budget", "100",
                                   "--min-agreement", "0", "--out", str(tmp_path / "qat.onnx")])
    assert ok.exit_code == 0, ok.output
    assert "top-1 agreement" in ok.output
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(tmp_path / "qat.onnx")).graph.node)


def test_budget_is_inclusive_despite_float_rounding():
    from edge_electra.build.gate import BATCH1_ITEMS
    one_flip = 1 - 1 / BATCH1_ITEMS   # 0.995: 1 - 0.995 is slightly over 0.005 in floats
    report = GateReport(accuracy_fp32=88.13, accuracy=87.63, accuracy_delta=87.63 - 88.13, top1_agreement=0.99,
                        max_abs_logit_delta=0.1, batch1_vs_padded_agreement=one_flip, passed=False, budget=0.5)
    assert report.within_budget()
    report.batch1_vs_padded_agreement = 1 - 2 / BATCH1_ITEMS
    assert not report.within_budget()


def test_qat_keeps_the_untrained_student_when_training_only_loses_agreement(setup):
    import onnxruntime as ort
    runs = {}
    for name, config in {"untrained": QATConfig(steps=0), "wrecked": QATConfig(steps=20, lr=0.5, eval_every=10)}.items():
        path = qat(setup["model"], setup["texts"], setup["tokenizer"], setup["folder"] / f"{name}.onnx", setup["feeds"],
                   config)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feeds = setup["tokenizer"](setup["texts"][:64]).arrays()
        runs[name] = session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})[0]
    np.testing.assert_array_equal(runs["wrecked"], runs["untrained"])


def test_qat_refuses_too_few_texts_to_hold_some_out(setup):
    with pytest.raises(ConfigError, match="eval_every"):
        QATConfig(eval_every=0)
    with pytest.raises(DataError, match="held out"):
        qat(setup["model"], setup["texts"][:10], setup["tokenizer"], setup["folder"] / "few.onnx", setup["feeds"],
            QATConfig(steps=1, batch_size=16))


def test_one_verb_dispatches_on_the_config_and_precision_of_reads_a_model(setup, tmp_path):
    from edge_electra.build.quantize import precision_of
    with pytest.raises(ConfigError, match="DynamicQuantConfig or a StaticQuantConfig"):
        quantize(setup["fp32"], tmp_path / "x.onnx", QATConfig())
    static = quantize(setup["fp32"], tmp_path / "s.onnx", StaticQuantConfig(), setup["feeds"])
    dynamic = quantize(setup["fp32"], tmp_path / "d.onnx", DynamicQuantConfig())
    fp16 = export_onnx(setup["model"], tmp_path / "h.onnx", ExportConfig(fp16=True, optimize=False)).path
    assert [precision_of(p) for p in (setup["fp32"], static, dynamic, fp16)] == \
        ["fp32", "int8-static", "int8-dynamic", "fp16"]
