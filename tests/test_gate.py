"""The one accuracy gate: agreement floors beside the accuracy budget, slots gated on BIO span F1."""
import numpy as np
import pytest

from edge_electra.build.gate import Budget, Gate, GateData, check, evaluate
from edge_electra.errors import GateRefused

from conftest import LABELS, SLOT_LABELS, TEXTS


class IdTokenizer:
    """Item i of the texts "t0", "t1", ... encodes as [CLS] i+10 [SEP]: one id per item, so a fake runner
    can answer per item."""

    def __call__(self, texts, buckets=None):
        from edge_electra.runtime.tokenizer import Encoded
        ids = np.array([[1, int(t[1:]) + 10, 2] for t in texts], dtype=np.int64)
        return Encoded(ids, np.ones_like(ids), np.zeros_like(ids), [False] * len(texts), [[None, 0, None]] * len(texts))


class ClassRunner:
    """Predicts class `predictions[item]` for each item, whatever the batch."""

    def __init__(self, predictions, classes=3):
        self.predictions, self.classes = predictions, classes

    def run(self, feeds):
        items = feeds["input_ids"][:, 1] - 10
        return {"logits": np.eye(self.classes, dtype=np.float32)[[self.predictions[i] for i in items]] * 5}


def test_agreement_floor_refuses_flips_that_cancel_in_the_accuracy():
    # Issue 14's case in miniature: accuracy unchanged (3 items fixed, 3 broken) but 97 % agreement with FP32.
    n = 200
    reference = [i % 3 for i in range(n)]
    labels = [(i + 1) % 3 if i < 10 else i % 3 for i in range(n)]
    candidate = list(reference)
    for i in (0, 1, 2):
        candidate[i] = labels[i]
    for i in (100, 101, 102):
        candidate[i] = (i + 1) % 3
    data = GateData([f"t{i}" for i in range(n)], labels)
    report = evaluate(ClassRunner(reference), ClassRunner(candidate), data, IdTokenizer())
    assert report.accuracy_delta == 0 and report.top1_agreement == pytest.approx(0.97)
    assert report.batch1_vs_padded_agreement == 1.0
    assert not report.passed and report.failures == ["top-1 agreement with FP32 is 97.00% (floor 99%)"]
    with pytest.raises(GateRefused, match="top-1 agreement"):
        check(report)
    # A lower floor passes it; the accuracy budget alone says nothing here.
    assert evaluate(ClassRunner(reference), ClassRunner(candidate), data, IdTokenizer(),
                    Budget(min_agreement=0.95)).passed


def test_one_gate_measures_many_candidates_against_one_reference_run():
    calls = []

    class Counting(ClassRunner):
        def run(self, feeds):
            calls.append(len(feeds["input_ids"]))
            return super().run(feeds)

    reference = Counting([0] * 40)
    gate = Gate(reference, GateData([f"t{i}" for i in range(40)]), IdTokenizer(), batch_size=8)
    assert calls == [8] * 5
    same = gate.measure(ClassRunner([0] * 40))
    assert same.passed and same.drop == 0 and same.top1_agreement == 1 and same.max_abs_logit_delta == 0
    one_flip = gate.measure(ClassRunner([1] + [0] * 39), full=False)
    # Without labels, the percent of changed items stands in for the accuracy drop: 2.5 % > 0.5.
    assert one_flip.drop == pytest.approx(2.5) and one_flip.batch1_vs_padded_agreement is None
    assert not one_flip.passed and len(calls) == 5   # the reference never ran again


@pytest.fixture(scope="module")
def joint(tmp_path_factory):
    """A tiny joint model exported to ONNX, and a copy whose slot head is damaged (one tag's bias +20) while
    its intent head is untouched."""
    torch = pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")
    from edge_electra.build.export import ExportConfig, export_onnx
    from edge_electra.runtime.tokenizer import Tokenizer
    from edge_electra.train.config import preset
    from edge_electra.train.model import Electra
    torch.manual_seed(0)
    torch.set_num_threads(1)
    tokenizer = Tokenizer.train(TEXTS * 3, vocab_size=200, max_length=64)
    model = Electra(preset("tiny", vocab_size=tokenizer.vocab_size, task="joint", max_position=64, labels=LABELS,
                           slot_labels=SLOT_LABELS)).eval()
    root = tmp_path_factory.mktemp("gate")
    fp32 = export_onnx(model, root / "joint.onnx", ExportConfig(optimize=False)).path
    proto = onnx.load(str(fp32))
    bias = next(t for t in proto.graph.initializer if t.name == "head.slots.out.bias")
    values = onnx.numpy_helper.to_array(bias).copy()
    values[SLOT_LABELS.index("B-city")] += 20.0
    bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))
    onnx.save(proto, str(root / "damaged.onnx"))
    return {"fp32": fp32, "damaged": root / "damaged.onnx", "tokenizer": tokenizer, "model": model, "root": root}


def test_a_joint_model_with_damaged_slots_is_refused_though_its_intents_are_intact(joint):
    gate = Gate(joint["fp32"], GateData(TEXTS), joint["tokenizer"], slot_labels=SLOT_LABELS)
    # Gold tags: the FP32 model's own, so FP32 scores 100 and every lost span shows.
    gold = [list(map(lambda t: SLOT_LABELS[t], row)) for row in gate.expected.word_tags]
    labels = gate.expected.intent.argmax(-1).tolist()
    gate = Gate(joint["fp32"], GateData(TEXTS, labels, gold), joint["tokenizer"], slot_labels=SLOT_LABELS)
    same = gate.measure(joint["fp32"])
    assert same.passed and same.slot_agreement == 1.0 and same.slot_f1 == same.slot_f1_fp32 == 100.0
    report = gate.measure(joint["damaged"])
    assert report.top1_agreement == 1.0 and report.accuracy_delta == 0       # the intent head is untouched
    assert report.slot_agreement < 0.5 and report.slot_f1_delta < -50
    assert not report.passed
    assert [f.split(" ")[:2] for f in report.failures] == [["slot", "F1"], ["slot", "F1"]]
    assert {"slot_f1", "slot_f1_fp32", "slot_agreement", "failures"} <= set(report.to_dict())


def test_compile_refuses_a_joint_model_whose_slots_are_damaged(joint, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from edge_electra.build.compile import compile_bundle
    from edge_electra.cli import main
    from edge_electra.runtime.bundle import Bundle
    from edge_electra.train.checkpoint import save_pretrained
    monkeypatch.setenv("EDGE_ELECTRA_CACHE", str(tmp_path / "cache"))
    folder = save_pretrained(joint["model"], tmp_path / "ckpt", tokenizer=joint["tokenizer"])
    calibration = tmp_path / "calibration.txt"
    calibration.write_text("\n".join(TEXTS) + "\n")
    with pytest.raises(GateRefused, match="slot F1"):
        compile_bundle(folder, "x86-avx2-cpu", tmp_path / "refused", calibration=calibration, threads=1,
                       model_onnx=joint["damaged"])
    assert not (tmp_path / "refused").exists()
    args = ["compile", str(folder), "--target", "x86-avx2-cpu", "--calibration", str(calibration),
            "--threads", "1", "--model", str(joint["damaged"]), "--out", str(tmp_path / "cli")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 3 and "slot F1" in result.output and not (tmp_path / "cli").exists()
    # The undamaged model goes through, recorded as what it is, with its slot numbers in the manifest.
    path = compile_bundle(folder, "x86-avx2-cpu", tmp_path / "ok", calibration=calibration, threads=1,
                          model_onnx=joint["fp32"])
    m = Bundle.load(path).manifest
    assert m.precision == "fp32" and m.accuracy["slot_agreement"] == 1.0 and m.accuracy["passed"]
    assert [c["precision"] for c in m.candidates] == ["fp32"]
