"""The `edge-electra` command. Subcommands are imported only when run, so `--help` needs no torch."""
from __future__ import annotations

import importlib

import click

from edge_electra.errors import EdgeElectraError

# name → (module:attribute of its click command, one-line help)
COMMANDS = {
    "info": ("edge_electra.cli:info", "Print a bundle's manifest summary."),
    "targets": ("edge_electra.build.targets:targets_command", "List the device profiles in targets/."),
    "pretrain": ("edge_electra.train.pretrain:command", "Pre-train with replaced-token detection (ELECTRA)."),
    "finetune": ("edge_electra.train.distill:finetune_command", "Fine-tune a student on labelled data."),
    "distill": ("edge_electra.train.distill:distill_command", "Distil a teacher into an ELECTRA-Small student."),
    "export": ("edge_electra.build.export:command", "Export a checkpoint to ONNX (FP32, FP16, fixed shapes)."),
    "quantize": ("edge_electra.build.quantize.cli:command", "Quantize an ONNX model to INT8 behind the accuracy gate."),
    "compile": ("edge_electra.build.compile:command", "Build a bundle for a target device."),
    "bench": ("edge_electra.tools.bench.cli:command", "Measure latency, throughput, memory and accuracy of bundles."),
    "demo": ("edge_electra.tools.demo:command", "Run the whole pipeline on the built-in dataset."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name][0].split(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx, formatter):
        with formatter.section("Commands"):
            formatter.write_dl([(name, short) for name, (_, short) in COMMANDS.items()])

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgeElectraError as e:
            raise click.ClickException(str(e)) from e


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edge-electra")
def main():
    """Train, quantize, compile and run small ELECTRA NLU models on edge devices."""


@click.command()
@click.argument("bundle", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the whole manifest as JSON.")
def info(bundle, as_json):
    """Print a bundle's manifest summary."""
    from edge_electra.runtime.bundle import MANIFEST, Bundle
    b = Bundle.load(bundle)
    click.echo((b.path / MANIFEST).read_text() if as_json else b.summary())


if __name__ == "__main__":  # `python -m edge_electra.cli ...` where the console script is not installed
    main()
