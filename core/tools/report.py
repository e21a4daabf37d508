"""Writing benchmark and evaluation results: JSON, CSV and a plot, each file atomically."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from vtsched.core.io import write_atomic

__all__ = ["write_json", "write_csv", "plot_time_vs_flops", "save_png"]


def write_json(path: Path, data: Any) -> Path:
    return write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in row.items()})
    return write_atomic(path, buffer.getvalue())


def plot_time_vs_flops(path: Path, rows: list[dict[str, Any]], title: str) -> Path:
    """Prefill time against prefill FLOPs: one marker style per policy, labelled by budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    markers = "os^Dv<>pP*X"
    series = list(dict.fromkeys(r["case"].split("@")[0] for r in rows))  # a policy with its parameters
    for i, policy in enumerate(series):
        mine = [r for r in rows if r["case"].split("@")[0] == policy]
        ax.scatter([r["prefill_gflops"] for r in mine], [r["prefill_ms"] for r in mine],
                   marker=markers[i % len(markers)], s=46, label=policy)
        for r in mine:
            if r["budget"] is not None:
                ax.annotate(str(r["budget"]), (r["prefill_gflops"], r["prefill_ms"]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("decoder prefill GFLOPs (what ran)")
    ax.set_ylabel("prefill time, median (ms)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)


def save_png(fig: Any, path: Path) -> Path:
    """Render ``fig`` to ``path`` (PNG) through a temporary file, and close it: never half a plot."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return write_atomic(path, buffer.getvalue())
