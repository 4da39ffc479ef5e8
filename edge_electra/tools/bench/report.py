"""Render a bench result: a terminal table, JSON, CSV and a PNG of the latency distributions."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from edge_electra.atomic import atomic_file

CSV_COLUMNS = ("bundle", "mode", "source", "batch", "seq", "padded_seq", "runs", "p50_ms", "p90_ms", "p99_ms",
               "max_ms", "mean_ms", "std_ms", "throughput_per_s", "gflop", "floor_ms", "x_floor")


def _fmt(value, digits=3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


EMULATED = "EMULATED — not a device latency"
# Columns that are times: under emulation they are written as "emulated", never as a figure (bench.json keeps them).
TIMED_COLUMNS = ("p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms", "std_ms", "throughput_per_s", "floor_ms",
                 "x_floor")


def emulated(result: dict) -> bool:
    return bool(result["system"].get("emulated"))


def table(result: dict) -> str:
    system = result["system"]
    cpu = system["cpu"]
    warning = [f"{EMULATED}: {system.get('machine', '')} under an emulator ({system.get('emulation')}); "
               "times below are withheld, the raw numbers stay in bench.json"] if emulated(result) else []
    lines = [*warning, f"machine  {cpu['model']} ({cpu['usable_cores']} usable cores; flags "
             f"{' '.join(cpu['flags']) or '-'}), {system['os']}",
             f"         threads {system.get('threads') or 'runtime default'}, numpy GEMM "
             f"{system['gemm_gflops']:.1f} GFLOP/s, "
             + ", ".join(f"{k} {v}" for k, v in system["versions"].items()), ""]
    header = ("bundle", "mode", "source", "b", "seq", "p50 ms", "p90 ms", "p99 ms", "max ms", "mean±std ms",
              "items/s", "× floor")
    rows = [header]
    for r in result["results"]:
        seq = f"{r['seq'] or 'real'}→{r['padded_seq']:g}"
        times = (["emulated"] * 7 if emulated(result) else
                 [_fmt(r["p50_ms"]), _fmt(r["p90_ms"]), _fmt(r["p99_ms"]), _fmt(r["max_ms"]),
                  f"{_fmt(r['mean_ms'])}±{_fmt(r['std_ms'], 2)}", _fmt(r["throughput_per_s"]),
                  _fmt(r.get("x_floor"), 2)])
        rows.append((r["bundle"], r["mode"], r["source"], str(r["batch"]), seq, *times))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.append("")
    for b in result["bundles"]:
        device = f" on {b['device']}" if b.get("device") else ""
        parts = [f"{b['name']}: {b['backend']} {b['precision']}{device}", f"{b['size_bytes'] / 1e6:.2f} MB on disk"]
        cold = b.get("cold_start")
        if cold and "error" in cold:
            parts.append(f"cold start failed: {cold['error']}")
        elif cold:
            seconds = "emulated" if emulated(result) else f"{cold['process_to_first_result_s']:.2f} s"
            parts.append(f"cold start {seconds} to first result, peak RSS {cold['peak_rss_mb']:.0f} MB")
        acc = b.get("accuracy") or {}
        parts += [f"{k.replace('_', ' ')} {v:.4f}" for k, v in acc.items() if k.endswith(("accuracy", "_f1"))]
        lines.append(", ".join(parts))
    return "\n".join(lines)


def write_json(result: dict, path: Path) -> Path:
    with atomic_file(path) as tmp:
        Path(tmp).write_text(json.dumps(result, indent=1) + "\n")
    return path


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def write_csv(result: dict, path: Path) -> Path:
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        withheld = dict.fromkeys(TIMED_COLUMNS, "emulated") if emulated(result) else {}
        writer.writerows({**r, **withheld} for r in result["results"])
    return path


def write_plot(result: dict, path: Path) -> Path | None:
    """Box plots of every case's latency samples, one panel per mode; None when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    modes = [m for m in ("end_to_end", "model_only") if any(r["mode"] == m for r in result["results"])]
    if not modes:
        return None
    # matplotlib 3.10 renamed vert=False to orientation="horizontal".
    new_api = tuple(int(x) for x in matplotlib.__version__.split(".")[:2]) >= (3, 10)
    horizontal = {"orientation": "horizontal"} if new_api else {"vert": False}
    height = max(3.0, 0.3 * max(sum(r["mode"] == m for r in result["results"]) for m in modes))
    fig, axes = plt.subplots(1, len(modes), figsize=(7 * len(modes), height), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        rows = [r for r in result["results"] if r["mode"] == mode]
        ax.boxplot([r["samples_ms"] for r in rows], whis=(1, 99), showfliers=False, **horizontal)
        ax.set_yticks(range(1, len(rows) + 1),
                      [f"{r['bundle']} b={r['batch']} {'s=' + str(r['seq']) if r['seq'] else 'data'}" for r in rows],
                      fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms, log scale; whiskers p1–p99)")
        ax.set_title(mode.replace("_", "-") + (f"\n{EMULATED}" if emulated(result) else ""),
                     color="red" if emulated(result) else "black")
        ax.invert_yaxis()
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def write_all(result: dict, out: Path) -> dict[str, Path | None]:
    out.mkdir(parents=True, exist_ok=True)
    return {"json": write_json(result, out / "bench.json"), "csv": write_csv(result, out / "bench.csv"),
            "png": write_plot(result, out / "bench.png")}
