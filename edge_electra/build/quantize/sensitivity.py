"""Sensitivity search: the most-INT8 mixed-precision model that passes the accuracy gate.

The graph is split into groups (embeddings, each layer's attention and FFN, the head). Calibration runs
once; then each group is quantized alone to measure how many predictions it changes, and the most costly
groups are kept in float, one at a time, until the whole model passes the gate. Fewer float groups means a
faster model. The result is data: a StaticQuantConfig whose exclude_nodes are the float groups' nodes.
"""
from __future__ import annotations

import dataclasses
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edge_electra.atomic import atomic_file
from edge_electra.build.gate import Budget, Gate, GateData, GateReport
from edge_electra.build.quantize.groups import group_order, nodes_by_group
from edge_electra.build.quantize.static import StaticQuantConfig, check_quantizable, quantize_static

log = logging.getLogger(__name__)


@dataclass
class SensitivityReport:
    group_disagreement: dict[str, float]    # percent of predictions changed when only this group is INT8
    float_groups: list[str]                 # groups kept in float in the chosen model
    config: StaticQuantConfig               # the chosen model as data: quantize(fp32, out, config, calibration)
    gate: GateReport                        # the chosen model's gate report
    trials: list[dict] = field(default_factory=list)   # every whole-model variant tried, in order

    @property
    def passed(self) -> bool:
        return self.gate.passed

    @property
    def drop(self) -> float:
        return self.gate.drop

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "gate": self.gate.to_dict()}

    def summary(self) -> str:
        worst = sorted(self.group_disagreement.items(), key=lambda kv: -kv[1])[:5]
        return "\n".join([
            "most sensitive groups  " + ", ".join(f"{g} {d:.2f}%" for g, d in worst),
            f"kept in float          {', '.join(self.float_groups) or 'nothing'} "
            f"({len(self.float_groups)} of {len(self.group_disagreement) or 'all'} groups)",
            f"drop                   {self.drop:.2f} points ({'within' if self.passed else 'OVER'} budget)"])


def sensitivity_search(fp32_onnx, out_onnx, calibration: list[dict[str, np.ndarray]], eval_data, tokenizer,
                       budget: Budget | float = Budget(), config: StaticQuantConfig = StaticQuantConfig(),
                       slot_labels: list[str] | None = None,
                       progress: Callable[[int, int], None] | None = None) -> SensitivityReport:
    """Write to `out_onnx` the model with the fewest float groups that passes the gate on `eval_data`
    (a Dataset, GateData or texts). `progress(done, total)` follows the per-group measurements."""
    import onnx
    fp32_onnx = Path(fp32_onnx)
    check_quantizable(fp32_onnx)
    budget = budget if isinstance(budget, Budget) else Budget(budget)
    data = eval_data if isinstance(eval_data, GateData) else GateData.of(eval_data)
    gate = Gate(fp32_onnx, data, tokenizer, budget, slot_labels=slot_labels)
    groups = nodes_by_group(onnx.load(str(fp32_onnx)))
    names = sorted(groups, key=group_order)

    def plan(float_groups) -> StaticQuantConfig:
        excluded = [n for g in float_groups for n in groups[g]]
        return dataclasses.replace(config, exclude_nodes=[*config.exclude_nodes, *excluded])

    with tempfile.TemporaryDirectory(prefix="edge-electra-sensitivity.") as tmp:
        cache = Path(tmp) / "ranges.json"

        def measure(float_groups, path) -> GateReport:
            return gate.measure(quantize_static(fp32_onnx, path, calibration, plan(float_groups),
                                                calibration_cache=cache), full=False)

        trials = []

        def trial(float_groups) -> Path:
            path = Path(tmp) / f"trial{len(trials)}.onnx"
            report = measure(float_groups, path)
            trials.append({"float_groups": list(float_groups), "drop": report.drop, "passed": report.passed})
            log.info("float %d groups%s: drop %.2f points, %s", len(float_groups),
                     f" (+{float_groups[-1]})" if float_groups else "", report.drop,
                     "passes" if report.passed else "; ".join(report.failures))
            return path

        best, float_groups, disagreement = trial([]), [], {}
        if not trials[-1]["passed"]:
            for done, name in enumerate(names, 1):
                alone = measure([g for g in names if g != name], Path(tmp) / "one.onnx")
                disagreement[name] = alone.disagreement
                if progress:
                    progress(done, len(names))
            for name in sorted(names, key=lambda g: -disagreement[g]):
                float_groups.append(name)
                best = trial(float_groups)
                if trials[-1]["passed"]:
                    break
        with atomic_file(out_onnx) as final:
            final.write_bytes(best.read_bytes())
    return SensitivityReport(disagreement, float_groups, plan(float_groups), gate.measure(out_onnx), trials)
