"""The `edge-electra` command. Subcommands are imported only when run, so `--help` needs no torch.

It decides what a person sees: library modules log to the `edge_electra` logger, which the group sends to
stderr as bare messages (INFO; -q: WARNING; -v: DEBUG), and every failure leaves with a documented exit code.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys

import click

from edge_electra.errors import EdgeElectraError, GateRefused

log = logging.getLogger(__name__)

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
    "device": ("edge_electra.tools.device:command", "Prepare a device over SSH; check that a bundle runs there."),
}

EXIT_OK, EXIT_UNEXPECTED, EXIT_BAD_INPUT, EXIT_GATE_REFUSED = 0, 1, 2, 3
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_UNEXPECTED: "an unexpected error (-v shows its traceback)",
    EXIT_BAD_INPUT: "bad usage or input: an option, file, config, dataset or bundle",
    EXIT_GATE_REFUSED: "the accuracy gate refused the model",
}
EPILOG = "\b\nExit codes:\n" + "\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_CODES.items())
VERBOSITY = {"quiet": logging.WARNING, "normal": logging.INFO, "verbose": logging.DEBUG}


class Failure(click.ClickException):
    """An error shown as one `Error: ...` line, leaving with `exit_code`."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class EchoHandler(logging.Handler):
    """Bare messages on stderr, looked up at each record (click's test runner swaps the stream)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            click.echo(self.format(record), err=True)
        except Exception:
            self.handleError(record)


def install_logging(level: int) -> EchoHandler:
    """The one stderr handler on the `edge_electra` logger, at `level` (replacing one installed before)."""
    package = logging.getLogger("edge_electra")
    for handler in [h for h in package.handlers if isinstance(h, EchoHandler)]:
        package.removeHandler(handler)
    handler = EchoHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    package.addHandler(handler)
    package.setLevel(level)
    # A library that configures the root logger (onnxruntime's quantizer, NNCF) would print every message twice.
    package.propagate = False
    return handler


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
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except GateRefused as e:
            raise Failure(str(e), EXIT_GATE_REFUSED) from e
        except EdgeElectraError as e:
            raise Failure(str(e), EXIT_BAD_INPUT) from e
        except BrokenPipeError:   # the reader went away (`edge-electra targets | head`): nothing left to say
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(EXIT_UNEXPECTED)
        except Exception as e:
            log.debug("the traceback of the unexpected error:", exc_info=True)
            first_line = (str(e).strip().splitlines() or [""])[0][:300]
            raise Failure(f"unexpected {type(e).__name__}: {first_line}\n(rerun with -v for the traceback)",
                          EXIT_UNEXPECTED) from e


@click.group(cls=LazyGroup, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edge-electra")
@click.option("-v", "--verbose", "verbosity", flag_value="verbose", help="Show debug messages, and the traceback "
              "of an unexpected error.")
@click.option("-q", "--quiet", "verbosity", flag_value="quiet", help="Show only warnings and errors.")
@click.pass_context
def main(ctx, verbosity):
    """Train, quantize, compile and run small ELECTRA NLU models on edge devices."""
    package = logging.getLogger("edge_electra")
    level, propagate = package.level, package.propagate
    handler = install_logging(VERBOSITY[verbosity or "normal"])

    def restore():   # the command ran in this process (tests, the fork server): leave the logger as it was
        package.removeHandler(handler)
        package.setLevel(level)
        package.propagate = propagate
    ctx.call_on_close(restore)


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
