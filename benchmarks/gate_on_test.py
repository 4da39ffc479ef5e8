"""Does the accuracy gate hold on the test split? (issue 14)

For one checkpoint and target: compile `--precision auto` (gated on the validation split, as a user would),
and each INT8 precision the target allows with --accept-accuracy-drop (so refused ones are built too); then
judge every built bundle against the FP32 bundle on the test split with the same gate and budget. Prints one
row per precision (validation verdict beside test verdict) and writes them as JSON.

    .venv/bin/python benchmarks/gate_on_test.py runs/i14/snips/student/best ../shared/data/snips \
        --target x86-avx2-cpu --out runs/i14/snips/gate
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import click

from edge_electra import data as data_io
from edge_electra.backends import get_backend
from edge_electra.build.compile import compile_bundle
from edge_electra.build.gate import Budget, evaluate
from edge_electra.build.targets import load_target
from edge_electra.runtime.bundle import Bundle


def _runner(bundle: Bundle):
    return get_backend(bundle.manifest.backend).load(bundle)


@click.command()
@click.argument("checkpoint", type=click.Path(exists=True, file_okay=False))
@click.argument("data", type=click.Path(exists=True, file_okay=False))
@click.option("--target", default="x86-avx2-cpu", show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--threads", type=int, default=1, show_default=True)
def main(checkpoint, data, target, out, threads):
    data, out = Path(data), Path(out)
    profile = load_target(target)
    common = dict(calibration=data / "train.jsonl", eval_data=data / "validation.jsonl", threads=threads)
    started = time.perf_counter()
    built = {"fp32": Bundle.load(compile_bundle(checkpoint, profile, out / "fp32", "fp32", **common))}
    auto = Bundle.load(compile_bundle(checkpoint, profile, out / "auto", "auto", accept_accuracy_drop=True, **common))
    for precision in (p for p in profile.precisions if p.startswith("int8")):
        built[precision] = Bundle.load(compile_bundle(checkpoint, profile, out / precision, precision,
                                                      accept_accuracy_drop=True, **common))
    m = built["fp32"].manifest
    test = data_io.load(data / "test.jsonl", m.labels or None, m.slot_labels or None)
    reference = _runner(built["fp32"])
    rows = []
    for precision, bundle in built.items():
        if precision == "fp32":
            continue
        report = evaluate(reference, _runner(bundle), test, bundle.tokenizer(), Budget(profile.accuracy_budget),
                          slot_labels=m.slot_labels or None, buckets=list(profile.buckets))
        validation = bundle.manifest.accuracy or {}
        rows.append({"precision": precision, "chosen_by_auto": precision == auto.manifest.precision,
                     "validation": validation, "test": report.to_dict()})
        click.echo(f"{precision:13s} auto={'yes' if rows[-1]['chosen_by_auto'] else 'no ':3s} "
                   f"validation: passed={validation.get('passed')} delta={validation.get('accuracy_delta')} "
                   f"agreement={validation.get('top1_agreement')} | test: passed={report.passed} "
                   f"delta={report.accuracy_delta:+.2f} agreement={report.top1_agreement:.4f} "
                   f"slot_delta={report.slot_f1_delta} slot_agreement={report.slot_agreement}")
    click.echo(f"auto chose {auto.manifest.precision}; {time.perf_counter() - started:.0f} s")
    (out / "gate_on_test.json").write_text(json.dumps({"checkpoint": str(checkpoint), "target": target,
                                                       "auto": auto.manifest.precision, "rows": rows}, indent=2,
                                                      default=str) + "\n")


if __name__ == "__main__":
    main()
