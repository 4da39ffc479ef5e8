"""`edge-electra demo`: the whole pipeline on the built-in smart-home dataset, on a laptop CPU.

train a student → quantize behind the accuracy gate → compile for two CPU targets → benchmark
against torch eager → a table, bundles and a PNG report in the output folder.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import click

from edge_electra.cli_options import config_from_flags, dataclass_options, option_field
from edge_electra import default_encoder
from edge_electra.errors import ConfigError

log = logging.getLogger(__name__)

# How the shipped encoder is fine-tuned on the built-in data: a gentle rate and frozen word embeddings keep more
# of what it knows of English (paraphrases), at the same test accuracy (benchmarks/training.md §8, §9).
SHIPPED_RECIPE = dict(epochs=10, lr=1e-3, freeze_embeddings=True)
# What the built-in tiny student reaches on the built-in test split when trained from scratch here.
EXPECTED_FROM_SCRATCH = "85-94% intent accuracy on its test split"


@dataclass
class DemoConfig:
    out: str = option_field("build", help="Where the data, checkpoints, bundles and report go.",
                            click={"type": click.Path(file_okay=False)})
    init: str | None = option_field(None, help="A pretrained ELECTRA checkpoint folder to start from.",
                                    click={"type": click.Path()})
    preset: str | None = option_field(None, help="Train a fresh student of this shape (tiny: the fast from-scratch "
                                                 "path) instead of fine-tuning the shipped pre-trained encoder.")
    epochs: int = option_field(40, help="Epochs for a from-scratch student.")
    threads: int = option_field(2, help="CPU threads for training and timing.")
    targets: list[str] = field(default_factory=lambda: ["x86-avx2-cpu", "x86-vnni-cpu"])
    bench_runs: int = 200   # ten turns of 20 per bundle and case: a few seconds, and a p99 worth reading


def pretrained_electra(explicit: str | None, preset: str | None = None) -> Path | None:
    """A user-given checkpoint; none when a fresh `preset` model is asked for; else the shipped encoder."""
    if explicit:
        if not Path(explicit).is_dir():
            raise ConfigError(f"--init {explicit} is not a checkpoint folder")
        return Path(explicit)
    return None if preset else default_encoder.folder()


class Steps:
    def __init__(self, total: int):
        self.total, self.number, self.started = total, 0, time.perf_counter()

    def __call__(self, message: str) -> None:
        self.number += 1
        elapsed = time.perf_counter() - self.started
        log.info("\n=== demo step %d of %d: %s  (t+%.0fs)", self.number, self.total, message, elapsed)


@dataclass
class DemoOutcome:
    bench: dict                  # the bench result of every bundle against torch eager
    checkpoint: Path
    bundles: list[Path]
    report: dict[str, Path | None]   # the files report.write_all wrote


def run_demo(cfg: DemoConfig) -> DemoOutcome:
    from edge_electra.tools import builtin_data
    from edge_electra.tools.bench import report
    from edge_electra.tools.bench.harness import BenchConfig, run_bench
    from edge_electra.tools.bench.sysinfo import system_info
    from edge_electra.build.compile import compile_bundle
    from edge_electra.train import DistillConfig, finetune

    out = Path(cfg.out)
    step = Steps(5)
    step("writing the built-in smart-home dataset")
    data = out / "data"
    builtin_data.write(data)
    splits = builtin_data.splits()
    log.info(f"      {data}: {len(splits['train'])} train / {len(splits['validation'])} validation / "
             f"{len(splits['test'])} test utterances, {len(splits['train'].labels)} intents incl. out-of-scope, "
             f"{len(splits['train'].slot_labels)} slot tags")

    init = pretrained_electra(cfg.init, cfg.preset)
    if init:
        step(f"fine-tuning the pretrained ELECTRA in {init} (intent + slots)")
        recipe = SHIPPED_RECIPE if init == default_encoder.folder() else dict(epochs=3, lr=1e-4)
        train_cfg = DistillConfig(data=str(data), out=str(out / "train"), init=str(init), **recipe, batch_size=32,
                                  max_length=32, threads=cfg.threads, patience=0, resume=False)
    else:
        step(f"training a {cfg.preset} student from scratch (intent + slots); expect {EXPECTED_FROM_SCRATCH}")
        train_cfg = DistillConfig(data=str(data), out=str(out / "train"), preset=cfg.preset, epochs=cfg.epochs,
                                  lr=2e-3, batch_size=16, max_length=32, threads=cfg.threads, patience=0,
                                  resume=False)
    checkpoint = finetune(train_cfg)

    step("quantizing and compiling, every candidate behind the accuracy gate")
    bundles = []
    for target in [*cfg.targets, "torch-reference"]:
        log.info(f"      target {target}")
        bundles.append(compile_bundle(checkpoint, target, out / "bundles" / target, precision="auto",
                                      calibration=data / "train.jsonl", eval_data=data / "validation.jsonl",
                                      threads=cfg.threads))

    step("benchmarking the bundles against torch eager on the test utterances")
    bench_cfg = BenchConfig(batch_sizes=[1], seq_lens=[16], runs=cfg.bench_runs, warmup=5, threads=cfg.threads,
                            data=str(data / "test.jsonl"))
    result = run_bench(bundles, bench_cfg, system_info(cfg.threads), log.info)

    step("report")
    return DemoOutcome(result, checkpoint, bundles, report.write_all(result, out / "report"))


def summary(outcome: DemoOutcome) -> str:
    result, checkpoint, bundles, written = outcome.bench, outcome.checkpoint, outcome.bundles, outcome.report
    by_name = {b["name"]: b for b in result["bundles"]}
    replay = {r["bundle"]: r for r in result["results"] if r["source"] == "data" and r["mode"] == "end_to_end"}
    baseline = replay.get("torch-reference", {}).get("p50_ms")
    lines = ["", "Built:", f"  student checkpoint  {checkpoint}"]
    for path in bundles:
        b, r = by_name.get(path.name, {}), replay.get(path.name, {})
        accuracy = b.get("accuracy", {}).get("intent_accuracy")
        speedup = f"{baseline / r['p50_ms']:.1f}x torch eager" if baseline and r.get("p50_ms") else ""
        lines.append(f"  {path}  {b.get('backend', '')} {b.get('precision', '')}"
                     + (f"  intent accuracy {accuracy:.1%}" if accuracy is not None else "")
                     + (f"  p50 {r['p50_ms']:.2f} ms" if r.get("p50_ms") else "") + (f"  {speedup}" if speedup else ""))
    lines.append("  report  " + ", ".join(str(p) for p in written.values() if p))
    lines.append("Try it:  edge-electra info " + str(bundles[0]))
    lines.append(f"         python examples/chatbot/chatbot.py {bundles[0]}")
    return "\n".join(lines)


@click.command()
@dataclass_options(DemoConfig, only=("out", "init", "preset", "epochs", "threads"))
def command(**flags):
    """Run the whole pipeline on the built-in dataset: train, quantize, compile, benchmark."""
    from edge_electra.tools.bench import report
    outcome = run_demo(config_from_flags(DemoConfig, flags))
    click.echo(report.table(outcome.bench))
    click.echo(summary(outcome))
