"""`edge-electra bench BUNDLE... [--data FILE]`: latency, throughput, cold start, memory and accuracy."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import click

from edge_electra.cli_options import config_from_flags, dataclass_options, to_argv
from edge_electra.errors import ConfigError
from edge_electra.tools.bench.harness import BenchConfig

log = logging.getLogger(__name__)


def remote_options(what: str):
    """The options that reach a device over SSH (bench, compile); `remote_target` makes the Remote from them."""
    def decorate(command):
        for option in reversed((
                click.option("--remote", default=None, metavar="USER@HOST[:PORT]", help=what),
                click.option("--ssh-key", type=click.Path(exists=True, dir_okay=False), default=None,
                             help="SSH private key."),
                click.option("--ssh-option", multiple=True, metavar="KEY=VALUE",
                             help="Extra `ssh -o` option (repeatable)."),
                click.option("--remote-python", default=None,
                             help="The device's Python, split into words as a shell would (quote a path with "
                                  "spaces). Default: the venv `edge-electra device setup` made "
                                  "(~/.edge-electra/venv) where it exists, else python3."))):
            command = option(command)
        return command
    return decorate


def remote_target(remote: str, ssh_key: str | None, ssh_option: tuple[str, ...], remote_python: str | None):
    from edge_electra.tools.bench.remote import Remote
    return Remote.parse(remote, key=ssh_key, python=remote_python, options=list(ssh_option))


@click.command()
@click.argument("bundles", nargs=-1, required=True, type=click.Path())
@dataclass_options(BenchConfig)
@click.option("--out", type=click.Path(file_okay=False), default="build/bench", show_default=True,
              help="Folder for bench.json, bench.csv and bench.png (and, with --profile, profile-<bundle>.json "
                   "and profile.md).")
@remote_options("Run on this device over SSH.")
@click.option("--json-only", is_flag=True, hidden=True, help="Write bench.json only (used on the device).")
def command(bundles, out, remote, ssh_key, ssh_option, remote_python, json_only, **flags):
    """Measure latency, throughput, cold start, memory and accuracy of BUNDLES, side by side.

    Bundles are timed interleaved (round-robin turns of --block calls each), end-to-end (tokenize + infer +
    post-process) and model-only (the runtime on pre-tokenized input), for every batch size and length.
    """
    from edge_electra.tools.bench import report

    cfg = config_from_flags(BenchConfig, flags)
    out = Path(out)
    if remote:
        from edge_electra.tools.bench.remote import run_remote
        target = remote_target(remote, ssh_key, ssh_option, remote_python)
        fetched = run_remote(target, [Path(b) for b in bundles], to_argv(cfg, exclude=["data"]),
                             Path(cfg.data) if cfg.data else None)
        result = report.read_json(fetched)
        keep_raw_profiles(result, fetched.parent, out)
    else:
        from edge_electra.tools.bench.harness import run_bench
        from edge_electra.tools.bench.sysinfo import system_info
        for bundle in bundles:
            if not Path(bundle).exists():
                raise ConfigError(f"bundle {bundle} not found")
        log.info("measuring this machine's GEMM rate")
        result = run_bench([Path(b) for b in bundles], cfg, system_info(cfg.threads), log.info, out=out)
    if json_only:
        report.write_json(result, out / "bench.json")
        return
    click.echo(report.table(result))
    written = report.write_all(result, out)
    if result.get("profiles"):
        from edge_electra.tools.bench import profile
        click.echo("\n" + profile.table(result["profiles"]))
        (out / "profile.md").write_text(profile.markdown(result["profiles"], result["system"]) + "\n")
    if written["png"] is None:
        log.warning("matplotlib is not installed here: no latency plot (pip install matplotlib)")
    log.info("wrote " + ", ".join(str(p) for p in written.values() if p))


def keep_raw_profiles(result: dict, fetched: Path, out: Path) -> None:
    """Copy the raw profiles the device wrote beside its bench.json into `out`."""
    names = [summary["raw"] for summary in result.get("profiles", {}).values() if summary.get("raw")]
    if names:
        out.mkdir(parents=True, exist_ok=True)
    for name in names:
        name = Path(name).name   # a name from the device: never a path outside `out`
        shutil.copyfile(fetched / name, out / name)
