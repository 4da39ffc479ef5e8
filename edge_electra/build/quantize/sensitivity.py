"""Sensitivity search: the most-INT8 mixed-precision model whose accuracy drop stays within budget.

The graph is split into groups (embeddings, each layer's attention and FFN, the head). Calibration runs
once; then each group is quantized alone to measure what it costs, and the most costly groups are kept
in float, one at a time, until the whole model is within budget. Fewer float groups means a faster model.
"""
from __future__ import annotations

import dataclasses
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np

from edge_electra.atomic import atomic_file
from edge_electra.data import Dataset
from edge_electra.errors import EdgeElectraError
from edge_electra.build.gate import GateReport, accuracy, evaluate_gate, run_texts, session
from edge_electra.build.quantize.groups import group_order, nodes_by_group
from edge_electra.build.quantize.static import StaticQuantConfig, check_quantizable, quantize_static


@dataclass
class SensitivityReport:
    group_drop: dict[str, float]            # accuracy points lost when only this group is INT8
    float_groups: list[str]                 # groups kept in float in the chosen model
    drop: float                             # the chosen model's drop on the eval set
    passed: bool
    gate: GateReport | None = None
    trials: list[dict] = field(default_factory=list)   # every whole-model variant tried, in order

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        worst = sorted(self.group_drop.items(), key=lambda kv: -kv[1])[:5]
        return "\n".join([
            "most sensitive groups  " + ", ".join(f"{g} {d:+.2f}" for g, d in worst),
            f"kept in float          {', '.join(self.float_groups) or 'nothing'} "
            f"({len(self.float_groups)} of {len(self.group_drop)} groups)",
            f"drop                   {self.drop:.2f} points ({'within' if self.passed else 'OVER'} budget)"])


def eval_texts_and_labels(eval_data) -> tuple[list[str], list[int] | None]:
    if isinstance(eval_data, Dataset):
        labelled = eval_data.labels and all(e.label is not None for e in eval_data.examples)
        return eval_data.texts, eval_data.label_ids() if labelled else None
    return list(eval_data), None


class _DropMeter:
    """Scores a candidate model against FP32: accuracy points lost, or % of changed top-1 without labels."""

    def __init__(self, fp32_onnx, texts, labels, tokenizer):
        self.texts, self.labels, self.tokenizer = texts, labels, tokenizer
        self.reference = run_texts(session(fp32_onnx), tokenizer, texts)

    def __call__(self, candidate_onnx) -> float:
        got = run_texts(session(candidate_onnx), self.tokenizer, self.texts)
        if self.labels is not None:
            return accuracy(self.reference, self.labels) - accuracy(got, self.labels)
        return 100.0 * float(np.mean(self.reference.argmax(-1) != got.argmax(-1)))


def sensitivity_search(fp32_onnx, out_onnx, calibration: list[dict[str, np.ndarray]], eval_data, tokenizer,
                       budget: float = 0.5, config: StaticQuantConfig = StaticQuantConfig()) -> SensitivityReport:
    """Write to `out_onnx` the model with the fewest float groups whose drop is within `budget`."""
    import onnx
    fp32_onnx = Path(fp32_onnx)
    check_quantizable(fp32_onnx)
    texts, labels = eval_texts_and_labels(eval_data)
    if not texts:
        raise EdgeElectraError("the sensitivity search needs evaluation data; pass --eval with a labelled data file")
    groups = nodes_by_group(onnx.load(str(fp32_onnx)))
    names = sorted(groups, key=group_order)
    measure = _DropMeter(fp32_onnx, texts, labels, tokenizer)
    with tempfile.TemporaryDirectory(prefix="edge-electra-sensitivity.") as tmp:
        cache = Path(tmp) / "ranges.json"

        def build(float_groups, path):
            excluded = [n for g in float_groups for n in groups[g]]
            cfg = dataclasses.replace(config, exclude_nodes=[*config.exclude_nodes, *excluded])
            return quantize_static(fp32_onnx, path, calibration, cfg, calibration_cache=cache)

        trials = []

        def trial(float_groups):
            path = Path(tmp) / f"trial{len(trials)}.onnx"
            drop = measure(build(float_groups, path))
            trials.append({"float_groups": list(float_groups), "drop": drop})
            return path, drop

        best, drop = trial([])
        group_drop = {}
        if drop > budget:
            with click.progressbar(names, label="measuring each group", file=sys.stderr) as bar:
                for name in bar:
                    group_drop[name] = measure(build([g for g in names if g != name], Path(tmp) / "one.onnx"))
            float_groups: list[str] = []
            for name in sorted(names, key=lambda g: -group_drop[g]):
                float_groups.append(name)
                best, drop = trial(float_groups)
                click.echo(f"  float {len(float_groups)} groups (+{name}): drop {drop:.2f} points", err=True)
                if drop <= budget:
                    break
        else:
            float_groups = []
        with atomic_file(out_onnx) as final:
            final.write_bytes(best.read_bytes())
    gate = evaluate_gate(fp32_onnx, out_onnx, texts, tokenizer, labels, budget)
    return SensitivityReport(group_drop, float_groups, drop, drop <= budget, gate, trials)
