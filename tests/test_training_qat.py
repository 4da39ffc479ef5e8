"""Quantization-aware training distils a joint model's slot tags as well as its intents (defect 2)."""
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from edge_electra.build.calibration import calibration_feeds  # noqa: E402
from edge_electra.build.quantize.qat import QATConfig, agreement_with, distillation_loss, qat  # noqa: E402
from edge_electra.runtime.tokenizer import Tokenizer  # noqa: E402
from edge_electra.train.config import preset  # noqa: E402
from edge_electra.train.model import Electra  # noqa: E402

TEXTS = [f"{verb} the {thing} in the {room}" for verb in ("turn on", "switch off", "dim")
         for thing in ("lights", "lamp", "fan") for room in ("kitchen", "hall", "bedroom", "garage", "attic")]


def joint_model(vocab_size: int) -> Electra:
    torch.manual_seed(0)
    return Electra(preset("tiny", vocab_size=vocab_size, task="joint", labels=["on", "off", "dim"],
                          slot_labels=["O", "B-room", "B-thing"])).eval()


def test_a_slot_head_that_drifts_from_fp32_costs_loss_and_gets_gradient():
    teacher = joint_model(60)
    student = copy.deepcopy(teacher)
    ids = torch.randint(5, 60, (4, 9))
    mask = torch.ones_like(ids)
    mask[2, 6:] = 0
    with torch.no_grad():
        target = teacher(ids, mask)
        assert distillation_loss(student(ids, mask), target, mask).abs() < 1e-6
        student.head.slots.out.weight.add_(torch.randn_like(student.head.slots.out.weight))
    output = student(ids, mask)
    assert torch.equal(output[0], target[0])            # the intents still agree exactly
    loss = distillation_loss(output, target, mask)
    assert loss > 1e-4                                   # intent-only distillation saw nothing here
    loss.backward()
    assert student.head.slots.out.weight.grad.abs().sum() > 0
    report = agreement_with(output, target, mask)
    assert report["agreement"] == 1.0 and report["slot_agreement"] < 1.0


def test_qat_trains_a_joint_model_and_exports_both_outputs(tmp_path):
    onnx = pytest.importorskip("onnx")
    tokenizer = Tokenizer.train(TEXTS, vocab_size=80)
    model = joint_model(tokenizer.vocab_size)
    out = qat(model, TEXTS, tokenizer, tmp_path / "qat.onnx", calibration_feeds(TEXTS, tokenizer, 8),
              QATConfig(steps=4, batch_size=8, eval_every=2, observe_steps=2, holdout=9))
    import onnxruntime as ort
    graph = onnx.load(str(out)).graph
    assert len(graph.output) == 2 and any(n.op_type == "QuantizeLinear" for n in graph.node)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    feeds = tokenizer(TEXTS[:5]).arrays()
    intents, slots = session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})
    assert intents.shape == (5, 3) and slots.shape == (*feeds["input_ids"].shape, 3)
    assert np.isfinite(slots).all()
