"""The accuracy gate: a quantized or converted model against its FP32 source, on real utterances.

It measures accuracy (with labels), top-1 agreement and the largest logit change, and runs each item
alone and inside a padded batch to catch masking or dynamic-range bugs that padding exposes. When the
candidate misses the budget it names the layers whose outputs drift the most from FP32.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edge_electra.errors import EdgeElectraError
from edge_electra.build.quantize.groups import group_of, group_order

NORM_OPS = ("LayerNormalization", "SkipLayerNormalization", "EmbedLayerNormalization")

# Items run alone and inside a padded batch for the batch-1 vs padded-batch agreement: enough that one
# flip in 200 (0.5 %) is within the default budget and two are not.
BATCH1_ITEMS = 200


@dataclass
class GateReport:
    accuracy_fp32: float | None          # percent, None without labels
    accuracy: float | None
    accuracy_delta: float | None         # candidate − FP32, in accuracy points (negative: a drop)
    top1_agreement: float                # fraction of items whose top-1 matches FP32
    max_abs_logit_delta: float
    batch1_vs_padded_agreement: float    # fraction of items predicted the same alone and in a padded batch
    passed: bool
    worst_layers: list[str] = field(default_factory=list)
    budget: float = 0.5                  # the largest allowed drop, in points
    num_items: int = 0

    @property
    def drop(self) -> float:
        """Accuracy points lost (labels), or percent of items whose top-1 changed (no labels)."""
        if self.accuracy_delta is not None:
            return -self.accuracy_delta
        return 100.0 * (1.0 - self.top1_agreement)

    @property
    def padding_drop(self) -> float:
        """Percent of items whose prediction changes between running alone and inside a padded batch."""
        return 100.0 * (1.0 - self.batch1_vs_padded_agreement)

    def within_budget(self) -> bool:
        # Rounded: 1 - 0.995 is 0.0050000000000000044 in floats, and one flip in 200 must meet a 0.5 budget.
        return round(self.drop, 9) <= self.budget and round(self.padding_drop, 9) <= self.budget

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        lines = []
        if self.accuracy is not None:
            lines.append(f"accuracy        {self.accuracy:.2f}%  (fp32 {self.accuracy_fp32:.2f}%, "
                         f"delta {self.accuracy_delta:+.2f} points)")
        lines += [f"top-1 agreement {100 * self.top1_agreement:.2f}%  on {self.num_items} items",
                  f"max |logit d|   {self.max_abs_logit_delta:.4f}",
                  f"batch-1 vs padded agreement {100 * self.batch1_vs_padded_agreement:.2f}%",
                  f"gate            {'PASSED' if self.passed else 'FAILED'} (budget {self.budget} points)"]
        if self.worst_layers:
            lines.append(f"worst layers    {', '.join(self.worst_layers)}")
        return "\n".join(lines)


def session(path: str | Path, threads: int = 2, model_bytes: bytes | None = None):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes if model_bytes is not None else str(path), options,
                                providers=["CPUExecutionProvider"])


def _rows(output: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-item logits (B, C), or per-real-token logits (tokens, T) for token-level outputs."""
    output = output.astype(np.float32)
    return output[mask.astype(bool)] if output.ndim == 3 else output


def run_texts(sess, tokenizer, texts: list[str], batch_size: int = 32) -> np.ndarray:
    """The first output's logits for `texts`, batched and padded to each batch's longest item."""
    chunks = []
    for start in range(0, len(texts), batch_size):
        feeds = tokenizer(texts[start:start + batch_size]).arrays()
        chunks.append(_rows(sess.run([sess.get_outputs()[0].name], feeds)[0], feeds["attention_mask"]))
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)


def accuracy(logits: np.ndarray, labels) -> float:
    return 100.0 * float(np.mean(logits.argmax(-1) == np.asarray(labels)))


def evaluate_gate(fp32_onnx, candidate_onnx, eval_texts: list[str], tokenizer, labels=None,
                  budget: float = 0.5, batch_size: int = 32, batch1_items: int = BATCH1_ITEMS) -> GateReport:
    """Compare `candidate_onnx` with `fp32_onnx` on `eval_texts` (labels: class ids, optional)."""
    if not eval_texts:
        raise EdgeElectraError("the accuracy gate needs evaluation texts; pass --eval with a labelled data file")
    if labels is not None and len(labels) != len(eval_texts):
        raise EdgeElectraError(f"{len(eval_texts)} eval texts but {len(labels)} labels")
    reference, candidate = session(fp32_onnx), session(candidate_onnx)
    expected = run_texts(reference, tokenizer, eval_texts, batch_size)
    got = run_texts(candidate, tokenizer, eval_texts, batch_size)
    alone_texts = eval_texts[:batch1_items]
    alone = np.concatenate([run_texts(candidate, tokenizer, [t], 1) for t in alone_texts])
    padded = run_texts(candidate, tokenizer, alone_texts, batch_size)
    report = GateReport(
        accuracy_fp32=None, accuracy=None, accuracy_delta=None,
        top1_agreement=float(np.mean(expected.argmax(-1) == got.argmax(-1))),
        max_abs_logit_delta=float(np.abs(expected - got).max()),
        batch1_vs_padded_agreement=float(np.mean(alone.argmax(-1) == padded.argmax(-1))),
        passed=False, budget=budget, num_items=len(eval_texts))
    if labels is not None and expected.shape[0] == len(labels):
        report.accuracy_fp32, report.accuracy = accuracy(expected, labels), accuracy(got, labels)
        report.accuracy_delta = report.accuracy - report.accuracy_fp32
    report.passed = report.within_budget()
    if not report.passed:
        report.worst_layers = worst_layers(fp32_onnx, candidate_onnx, tokenizer(eval_texts[:batch_size]).arrays())
    return report


def worst_layers(fp32_onnx, candidate_onnx, feeds: dict[str, np.ndarray], top: int = 3) -> list[str]:
    """The groups whose LayerNorm outputs add the most relative error versus FP32, worst first."""
    import onnx
    protos = [onnx.load(str(p)) for p in (fp32_onnx, candidate_onnx)]
    names = [{o for n in p.graph.node if n.op_type in NORM_OPS for o in n.output[:1]} for p in protos]
    common = sorted((name for name in names[0] & names[1] if group_of(name)), key=lambda n: group_order(group_of(n)))
    if not common:
        return []
    outputs = []
    for proto in protos:
        proto.graph.output.extend(onnx.ValueInfoProto(name=name) for name in common)
        sess = session(None, model_bytes=proto.SerializeToString())
        outputs.append(sess.run(common, feeds))
    errors = [float(np.linalg.norm(b.astype(np.float32) - a.astype(np.float32)) / (np.linalg.norm(a) + 1e-12))
              for a, b in zip(*outputs)]
    added = {}
    for i, name in enumerate(common):
        group = group_of(name)
        added[group] = added.get(group, 0.0) + errors[i] - (errors[i - 1] if i else 0.0)
    return [g for g, _ in sorted(added.items(), key=lambda kv: -kv[1])[:top]]


def check(report: GateReport, accept_accuracy_drop: bool = False) -> None:
    """Raise when the candidate misses the budget, unless the user accepts the drop."""
    if report.passed or accept_accuracy_drop:
        return
    what = (f"accuracy drops {report.drop:.2f} points" if report.accuracy_delta is not None
            else f"top-1 changes on {report.drop:.2f}% of items")
    padding = 100.0 * (1.0 - report.batch1_vs_padded_agreement)
    if padding > report.budget:
        what += f", and {padding:.2f}% of items change prediction when padded"
    worst = f"; worst layers: {', '.join(report.worst_layers)}" if report.worst_layers else ""
    raise EdgeElectraError(f"the quantized model misses the accuracy budget: {what} (budget {report.budget})"
                           f"{worst}. Try --method sensitivity (keeps those layers in float) or QAT, "
                           "raise --budget, or pass --accept-accuracy-drop to keep it anyway")
