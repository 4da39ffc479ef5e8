"""Metrics logs: one JSON object a line while training, and a PNG of the curves at the end."""
from __future__ import annotations

import json
from pathlib import Path

from edge_electra.atomic import atomic_file

METRICS_LOG = "metrics.jsonl"


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # the last line of a killed run may be cut short
            break
    return rows


def keep_rows_until(path: Path, step: int) -> None:
    """Drop log rows after `step`: a resumed run logs those steps again."""
    rows = [r for r in read_rows(path) if r.get("step", 0) <= step]
    with atomic_file(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))


def format_row(row: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())


def append_row(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def plot(rows: list[dict], keys: list[str], path: Path, x: str = "step", title: str = "") -> Path:
    """One panel per key against `x`; keys absent from every row are skipped."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = [k for k in keys if any(k in r for r in rows)]
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(4 * max(1, len(keys)), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        points = [(r[x], r[key]) for r in rows if key in r and x in r]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 50 else None)
        ax.set_xlabel(x)
        ax.set_title(key)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
