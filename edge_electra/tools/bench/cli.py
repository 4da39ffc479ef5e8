"""`edge-electra bench BUNDLE... [--data FILE]`: latency, throughput, cold start, memory and accuracy."""
from __future__ import annotations

from pathlib import Path

import click

from edge_electra.errors import ConfigError


def _ints(ctx, param, value: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None


@click.command()
@click.argument("bundles", nargs=-1, required=True, type=click.Path())
@click.option("--data", type=click.Path(dir_okay=True), help="Labelled utterances (.jsonl/.csv/...): replayed at "
              "their real lengths, and used to measure accuracy.")
@click.option("--batch-sizes", default="1,8", show_default=True, callback=_ints, help="Batch sizes to sweep.")
@click.option("--seq-lens", default="16,32,128", show_default=True, callback=_ints,
              help="Token lengths (with [CLS] and [SEP]) of the synthetic utterances.")
@click.option("--runs", default=100, show_default=True, help="Timed runs per case and bundle.")
@click.option("--seconds", type=float, default=None, help="Time each case for this long instead of --runs.")
@click.option("--warmup", default=5, show_default=True, help="Untimed runs per case and bundle first.")
@click.option("--threads", type=int, default=None, help="Runtime threads (default: the bundle's or runtime's).")
@click.option("--no-cold-start", is_flag=True, help="Skip the cold-start and peak-memory subprocess.")
@click.option("--out", type=click.Path(file_okay=False), default="build/bench", show_default=True,
              help="Folder for bench.json, bench.csv and bench.png.")
@click.option("--remote", default=None, metavar="USER@HOST[:PORT]", help="Run on this device over SSH.")
@click.option("--ssh-key", type=click.Path(exists=True, dir_okay=False), default=None, help="SSH private key.")
@click.option("--ssh-option", multiple=True, metavar="KEY=VALUE", help="Extra `ssh -o` option (repeatable).")
@click.option("--remote-python", default="python3", show_default=True, help="The device's Python.")
@click.option("--json-only", is_flag=True, hidden=True, help="Write bench.json only (used on the device).")
def command(bundles, data, batch_sizes, seq_lens, runs, seconds, warmup, threads, no_cold_start, out, remote,
            ssh_key, ssh_option, remote_python, json_only):
    """Measure latency, throughput, cold start, memory and accuracy of BUNDLES, side by side.

    Bundles are timed interleaved (round-robin each iteration), end-to-end (tokenize + infer +
    post-process) and model-only (the runtime on pre-tokenized input), for every batch size and length.
    """
    from edge_electra.tools.bench import report
    from edge_electra.tools.bench.harness import BenchConfig

    say = lambda message: click.echo(message, err=True)  # noqa: E731
    cfg = BenchConfig(batch_sizes=batch_sizes, seq_lens=seq_lens, runs=runs, seconds=seconds, warmup=warmup,
                      threads=threads, data=data, cold_start=not no_cold_start)
    out = Path(out)
    if remote:
        from edge_electra.tools.bench.remote import Remote, run_remote
        bench_args = ["--batch-sizes", ",".join(map(str, batch_sizes)), "--seq-lens", ",".join(map(str, seq_lens)),
                      "--runs", str(runs), "--warmup", str(warmup)]
        bench_args += (["--seconds", str(seconds)] if seconds else []) + (["--threads", str(threads)] if threads
                                                                           else [])
        bench_args += ["--no-cold-start"] if no_cold_start else []
        target = Remote.parse(remote, key=ssh_key, python=remote_python, options=list(ssh_option))
        result = report.read_json(run_remote(target, [Path(b) for b in bundles], bench_args,
                                             Path(data) if data else None, say))
    else:
        from edge_electra.tools.bench.harness import run_bench
        from edge_electra.tools.bench.sysinfo import system_info
        for bundle in bundles:
            if not Path(bundle).exists():
                raise ConfigError(f"bundle {bundle} not found")
        say("measuring this machine's GEMM rate")
        result = run_bench([Path(b) for b in bundles], cfg, system_info(threads), say)
    if json_only:
        report.write_json(result, out / "bench.json")
        return
    click.echo(report.table(result))
    written = report.write_all(result, out)
    if written["png"] is None:
        say("matplotlib is not installed here: no latency plot (pip install matplotlib)")
    say("wrote " + ", ".join(str(p) for p in written.values() if p))
