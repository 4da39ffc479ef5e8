"""Accuracy and batch-1 CPU latency of every precision variant of a checkpoint, on a dataset's test split.

    .venv/bin/python benchmarks/quantization_table.py CHECKPOINT DATA_DIR [--limit N] [--qat-steps N]

Rows: FP32 (fused), FP16, dynamic INT8, static INT8 per calibration method, sensitivity-searched INT8
and QAT INT8. Calibration uses 200 training utterances (stratified by label and length); the sensitivity
search is scored on the validation split so the test split stays unseen. Prints a Markdown table.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import click

from edge_electra.build.calibration import CalibrationRecipe, calibration_feeds, select_samples
from edge_electra.train.checkpoint import load_pretrained
from edge_electra.data import Dataset, load_folder
from edge_electra.build.export import ExportConfig, export_onnx
from edge_electra.build.quantize import StaticQuantConfig, quantize_dynamic, quantize_static, sensitivity_search
from edge_electra.build.gate import Budget, Gate, GateData, session
from edge_electra.build.quantize.qat import QATConfig, qat
from edge_electra.runtime.tokenizer import Tokenizer


def relabel(data: Dataset, labels: list[str], limit: int | None = None) -> Dataset:
    """The split restricted to the model's labels, in the model's label order; `limit` keeps every k-th item."""
    examples = [e for e in data.examples if e.label in labels]
    step = -(-len(examples) // limit) if limit else 1
    return Dataset(examples[::step], labels)


def batch1_latency_ms(path: Path, tokenizer, texts: list[str], threads: int) -> float:
    sess = session(path, threads)
    for text in texts[:10]:  # warm-up
        sess.run(None, tokenizer([text]).arrays())
    times = []
    for text in texts:
        feeds = tokenizer([text]).arrays()
        start = time.perf_counter()
        sess.run(None, feeds)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


@click.command()
@click.argument("checkpoint", type=click.Path(exists=True))
@click.argument("data_dir", type=click.Path(exists=True))
@click.option("--limit", type=int, help="Use about N test (and validation) utterances, spread over the split.")
@click.option("--latency-items", default=200, show_default=True)
@click.option("--threads", default=1, show_default=True, help="ONNX Runtime intra-op threads for latency; torch (export, QAT) uses as many.")
@click.option("--qat-steps", default=300, show_default=True, help="0 skips QAT.")
@click.option("--budget", default=0.5, show_default=True)
@click.option("--workdir", type=click.Path(), help="Keep the models here (default: a temporary folder).")
def main(checkpoint, data_dir, limit, latency_items, threads, qat_steps, budget, workdir):
    import torch
    torch.set_num_threads(threads)
    model, _ = load_pretrained(checkpoint)
    labels = model.config.labels
    tokenizer = Tokenizer.from_pretrained(checkpoint)
    splits = load_folder(data_dir)
    test, validation = relabel(splits["test"], labels, limit), relabel(splits["validation"], labels, limit)
    recipe = CalibrationRecipe()
    calibration = calibration_feeds([e.text for e in select_samples(splits["train"], recipe.num_samples,
                                                                    recipe.seed)], tokenizer)
    folder = Path(workdir or tempfile.mkdtemp(prefix="quantization-table."))
    folder.mkdir(parents=True, exist_ok=True)
    fp32 = export_onnx(model, folder / "fp32.onnx").path
    plain = export_onnx(model, folder / "fp32-plain.onnx", ExportConfig(optimize=False)).path

    def searched(out):
        report = sensitivity_search(plain, out, calibration, validation, tokenizer, budget)
        click.echo(report.summary(), err=True)
        return out

    builds = {
        "FP32 (ORT fused)": lambda out: fp32,
        "FP16": lambda out: export_onnx(model, out, ExportConfig(fp16=True)).path,
        "INT8 dynamic": lambda out: quantize_dynamic(fp32, out),
        **{f"INT8 static {m}": (lambda out, m=m: quantize_static(plain, out, calibration, StaticQuantConfig(method=m)))
           for m in ("minmax", "entropy", "percentile")},
        "INT8 sensitivity": searched,
    }
    if qat_steps:
        builds["INT8 QAT"] = lambda out: qat(model, splits["train"], tokenizer, out, calibration,
                                             QATConfig(steps=qat_steps))
    gate = Gate(fp32, GateData(test.texts, test.label_ids()), tokenizer, Budget(budget))
    rows = []
    for name, build in builds.items():
        click.echo(f"building {name} ...", err=True)
        path = Path(build(folder / (name.lower().replace(" ", "-").strip("()") + ".onnx")))
        report = gate.measure(path, full=path != fp32)
        rows.append((name, report.accuracy, report.accuracy_delta, report.top1_agreement,
                     batch1_latency_ms(path, tokenizer, test.texts[:latency_items], threads),
                     path.stat().st_size / 1e6, "" if path == fp32 else
                     f"{'pass' if report.passed else 'FAIL: ' + '; '.join(report.failures)} (padded-batch agreement "
                     f"{100 * report.batch1_vs_padded_agreement:.1f}%)"))
        click.echo(f"  {rows[-1]}", err=True)
    click.echo(f"\n{len(test)} test utterances, batch-1 latency: median over {min(latency_items, len(test))} "
               f"utterances, {threads} thread(s)\n")
    click.echo("| variant | accuracy % | Δ vs FP32 (points) | top-1 agreement % | batch-1 ms | size MB | gate |")
    click.echo("|---|---|---|---|---|---|---|")
    for name, acc, delta, agree, ms, size, gate in rows:
        click.echo(f"| {name} | {acc:.2f} | {delta:+.2f} | {100 * agree:.2f} | {ms:.2f} | {size:.1f} | {gate} |")


if __name__ == "__main__":
    main()
