"""`edge-electra quantize`: INT8 an ONNX model, then gate it against its FP32 source on real utterances."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from edge_electra.errors import ConfigError

METHODS = ("dynamic", "minmax", "entropy", "percentile", "sensitivity", "qat")


def load_tokenizer_and_labels(path: str | Path):
    """A tokenizer (folder or tokenizer.json) and, when the folder is a checkpoint, its labels and slot labels."""
    from edge_electra.train.checkpoint import config_from_hf
    from edge_electra.runtime.tokenizer import load_tokenizer
    path = Path(path)
    if path.is_file():
        return load_tokenizer(path), None, None
    if not path.is_dir():
        raise ConfigError(f"--checkpoint-or-tokenizer {path} not found (give a checkpoint folder or a tokenizer.json)")
    labels = slot_labels = None
    if (path / "config.json").is_file():
        config = config_from_hf(json.loads((path / "config.json").read_text()))
        labels, slot_labels = config.labels or None, config.slot_labels or None
    return load_tokenizer(path), labels, slot_labels


def calibration_texts(path: str | None, samples: int, seed: int) -> list[str]:
    from edge_electra.build.calibration import default_texts, select_samples
    from edge_electra.data import Example, load
    examples = (load(path, require_labels=False).examples if path
                else [Example(text) for text in default_texts()])
    return [e.text for e in select_samples(examples, samples, seed)]


@click.command()
@click.argument("model", type=click.Path())
@click.option("--checkpoint-or-tokenizer", "tokenizer_path", required=True, type=click.Path(),
              help="Checkpoint folder (tokenizer + labels) or a tokenizer.json.")
@click.option("--method", type=click.Choice(METHODS), default="minmax", show_default=True)
@click.option("--recipe", help="Calibration recipe: a name from calibration/ or a .toml file.")
@click.option("--activations", type=click.Choice(["symmetric", "asymmetric"]), default="symmetric", show_default=True,
              help="INT8 activations: symmetric (what TensorRT needs) or unsigned with a zero point (ONNX Runtime's "
                   "fast CPU path).")
@click.option("--calibration", type=click.Path(), help="Data file to calibrate on (default: the general set).")
@click.option("--calibration-samples", type=int, help="How many calibration utterances (default: the recipe's).")
@click.option("--eval", "eval_path", required=True, type=click.Path(), help="Labelled data file for the gate.")
@click.option("--train", "train_path", type=click.Path(),
              help="Training data for --method qat (labels used when present); needs a checkpoint folder.")
@click.option("--qat-steps", default=300, show_default=True, help="Fake-quant fine-tuning steps for --method qat.")
@click.option("--budget", default=0.5, show_default=True, help="Largest accepted accuracy (and slot F1) drop, in "
              "points.")
@click.option("--min-agreement", default=0.99, show_default=True,
              help="Smallest accepted top-1 agreement with the FP32 model (and slot span F1 against its tags).")
@click.option("--accept-accuracy-drop", is_flag=True, help="Keep the model even if it misses the budget.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Also write the gate report as JSON.")
@click.option("--out", required=True, type=click.Path(dir_okay=False))
def command(model, tokenizer_path, method, recipe, activations, calibration, calibration_samples, eval_path, train_path,
            qat_steps, budget, min_agreement, accept_accuracy_drop, report_path, out):
    """Quantize MODEL (an FP32 .onnx) to INT8 and print the accuracy gate's report."""
    from edge_electra import dataclass_io
    from edge_electra.atomic import atomic_file
    from edge_electra.build.calibration import CalibrationRecipe, calibration_feeds, load_recipe
    from edge_electra.build.gate import Budget, GateData, check, evaluate
    from edge_electra.build.quantize import DynamicQuantConfig, StaticQuantConfig, quantize
    from edge_electra.build.quantize.sensitivity import sensitivity_search
    from edge_electra.data import load

    if not Path(model).is_file():
        raise ConfigError(f"model {model} not found; export one with `edge-electra export`")
    tokenizer, labels, slot_labels = load_tokenizer_and_labels(tokenizer_path)
    eval_data = GateData.of(load(eval_path, labels=labels, slot_labels=slot_labels))
    limits = Budget(budget, min_agreement, min_agreement)
    if method == "qat" and (labels is None or not train_path):
        raise ConfigError("--method qat fine-tunes the model: give --checkpoint-or-tokenizer a checkpoint folder "
                          "(the source of MODEL) and --train a data file")
    train_data = load(train_path, labels=labels, require_labels=False) if method == "qat" else None
    rec = load_recipe(recipe) if recipe else CalibrationRecipe()
    if method in METHODS[1:4]:
        rec = CalibrationRecipe(**{**dataclass_io.to_dict(rec), "method": method})
    static = StaticQuantConfig(method=rec.method, percentile=rec.percentile,
                               symmetric_activations=activations == "symmetric")
    feeds = []
    if method != "dynamic":
        texts = calibration_texts(calibration, calibration_samples or rec.num_samples, rec.seed)
        feeds = calibration_feeds(texts, tokenizer, max_length=rec.max_length)
    with atomic_file(out) as tmp:
        # QAT advances the bar once per training step; every other method once for the whole quantization
        quantizing_steps = qat_steps if method == "qat" else 1
        with click.progressbar(length=quantizing_steps + 1, label=f"quantizing ({method})", file=sys.stderr) as bar:
            if method == "sensitivity":
                search = sensitivity_search(model, tmp, feeds, eval_data, tokenizer, limits, static, slot_labels)
            elif method == "qat":
                from edge_electra.build.quantize.qat import QATConfig, qat
                qat(tokenizer_path, train_data, tokenizer, tmp, feeds, QATConfig(steps=qat_steps), static,
                    progress=lambda step, steps: bar.update(1))
            else:
                quantize(model, tmp, DynamicQuantConfig() if method == "dynamic" else static, feeds)
            if method != "qat":
                bar.update(1)
            report = search.gate if method == "sensitivity" else evaluate(
                model, tmp, eval_data, tokenizer, limits, slot_labels=slot_labels)
            bar.update(1)
        if method == "sensitivity":
            click.echo(search.summary())
        click.echo(report.summary())
        if report_path:
            Path(report_path).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        check(report, accept_accuracy_drop)
    click.echo(f"wrote {out}")
