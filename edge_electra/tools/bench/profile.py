"""`bench --profile`: where a bundle's time goes, per operator type, from the runtime's own profiler.

ONNX Runtime writes a trace with one "Node" event per kernel run (SessionOptions.enable_profiling); OpenVINO keeps
performance counters per node of the last inference (PERF_COUNT, InferRequest.get_profiling_info). A runner made
with `profile=True` collects them and hands them over in `end_profiling()`: {"runtime": ..., "events": [...]}.
`summarize` turns those events into time, share and calls per operator type; the events themselves are kept as
the raw profile.
"""
from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

from edge_electra.atomic import atomic_file
from edge_electra.runtime.predictor import Predictor

log = logging.getLogger(__name__)

TOP = 10


def _ort_ops(events: list[dict]):
    """(op type, µs) of each kernel run in an ONNX Runtime trace; fence events around kernels are left out."""
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            yield e.get("args", {}).get("op_name", "?"), float(e.get("dur", 0))


def _openvino_ops(events: list[dict]):
    """(node type, µs) of each node OpenVINO executed; nodes fused away or not run are left out."""
    for e in events:
        if e.get("status") == "EXECUTED":
            yield e["node_type"], float(e["real_time_us"])


OPS_OF = {"onnxruntime": _ort_ops, "openvino": _openvino_ops}


def summarize(raw: dict, runs: int) -> dict:
    """Time per operator type, most first: total ms over all runs, share of the total, calls; and per run."""
    totals, calls = defaultdict(float), defaultdict(int)
    for op, us in OPS_OF[raw["runtime"]](raw["events"]):
        totals[op] += us / 1e3
        calls[op] += 1
    total = sum(totals.values())
    ops = [{"op_type": op, "total_ms": round(ms, 4), "share": ms / total if total else 0.0, "calls": calls[op]}
           for op, ms in sorted(totals.items(), key=lambda kv: -kv[1])]
    return {"runtime": raw["runtime"], "runs": runs, "total_ms": round(total, 4),
            "per_run_ms": round(total / runs, 4) if runs else None, "ops": ops}


def profile_predictor(path: Path, texts: list[list[str]], runs: int, threads: int | None) -> tuple[dict, dict]:
    """Run the bundle at `path` `runs` times on the batches `texts` (cycling) with its runtime's profiler on, on
    pre-tokenized input; (summary, raw profile). A backend without a profiler gives a summary with an error."""
    predictor = Predictor.load(path, threads=threads, profile=True)
    runner = predictor.runner
    if not hasattr(runner, "end_profiling"):
        return {"error": f"the {predictor.bundle.manifest.backend} backend has no profiler"}, {}
    feeds = [{n: a.copy() for n, a in predictor.feeds(predictor.encode(batch)).items()} for batch in texts]
    for i in range(runs):
        runner.run(feeds[i % len(feeds)])
    raw = runner.end_profiling()
    return summarize(raw, runs), raw


def raw_name(subject: str) -> str:
    return f"profile-{subject}.json"


def write_raw(raw: dict, path: Path) -> Path:
    with atomic_file(path) as tmp:
        Path(tmp).write_text(json.dumps(raw) + "\n")
    return path


def table(profiles: dict[str, dict], top: int = TOP) -> str:
    """Each bundle's `top` operator types by time."""
    lines = []
    for name, summary in profiles.items():
        if "error" in summary:
            lines.append(f"{name}: no profile ({summary['error']})")
            continue
        lines.append(f"{name}: {summary['runtime']} profile, {summary['runs']} runs, "
                     f"{summary['per_run_ms']:.3f} ms per run in operators")
        rows = [("op type", "total ms", "share", "calls")] + [
            (o["op_type"], f"{o['total_ms']:.3f}", f"{100 * o['share']:.1f}%", str(o["calls"]))
            for o in summary["ops"][:top]]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines += ["  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                  for r in rows]
        hidden = len(summary["ops"]) - top
        if hidden > 0:
            rest = sum(o["share"] for o in summary["ops"][top:])
            lines.append(f"  ... {hidden} more op type(s), {100 * rest:.1f}% of the time")
    return "\n".join(lines)


def markdown(profiles: dict[str, dict], system: dict, top: int = TOP) -> str:
    """The same summary as a markdown table per bundle, headed by the machine it ran on."""
    cpu = system.get("cpu", {})
    emulated = (f"; emulated ({system.get('emulation')}): the shares say where time goes, the times are not the "
                "device's" if system.get("emulated") else "")
    lines = [f"Machine: {system.get('machine', '?')}, CPU {cpu.get('model', '?')} "
             f"(flags {' '.join(cpu.get('flags', [])) or '-'}){emulated}", ""]
    for name, summary in profiles.items():
        if "error" in summary:
            lines += [f"## {name}", "", f"no profile: {summary['error']}", ""]
            continue
        lines += [f"## {name} ({summary['runtime']}, {summary['runs']} runs)", "",
                  "| op type | total ms | share | calls |", "|---|---:|---:|---:|"]
        lines += [f"| {o['op_type']} | {o['total_ms']:.3f} | {100 * o['share']:.1f}% | {o['calls']} |"
                  for o in summary["ops"][:top]]
        lines.append("")
    return "\n".join(lines)

