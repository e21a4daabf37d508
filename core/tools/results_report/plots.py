"""The report's plots: accuracy against prefill FLOPs or time with the Pareto front
(:func:`trade_off_figure`), a bench's time against FLOPs (:func:`time_figure`), figures as PNG."""

from __future__ import annotations

import base64
import io
from typing import Any, cast

from vtsched.core.tools.results_report.reading import Results

__all__ = ["figure_png", "png_uri", "time_figure", "trade_off_figure"]


def trade_off_figure(results: Results, x: int, xlabel: str) -> Any:
    """Accuracy against ``points[x]`` (2: GFLOPs, 3: prefill ms), the Pareto front joined; ``None`` if unmeasured."""
    from matplotlib.figure import Figure

    from vtsched.core.tools.sweep.report import pareto_front

    points = [(p[0], float(cast(float, p[x])), p[1]) for p in results.points
              if p[x] is not None and p[1] is not None]
    if not points:
        return None
    fig = Figure(figsize=(6.4, 4.0), dpi=110, layout="constrained")
    ax = fig.subplots()
    front = pareto_front([(float(c), float(a)) for _, c, a in points])
    for i, (label, cost, acc) in enumerate(points):
        ax.scatter([cost], [100 * acc], s=36, color="C1" if i in front else "C0", zorder=3)
        ax.annotate(label, (cost, 100 * acc), xytext=(4, 3), textcoords="offset points", fontsize=7)
    fx = [points[i][1] for i in front]
    fy = [100 * points[i][2] for i in front]
    ax.step(fx, fy, where="post", color="C1", lw=1.2, label="Pareto front")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def time_figure(results: Results) -> Any:
    """Bench: prefill time against prefill FLOPs (no accuracy)."""
    from matplotlib.figure import Figure

    points = [(p[0], p[1], p[2], p[3]) for p in results.points
              if p[2] is not None and p[3] is not None]
    if not points:
        return None
    fig = Figure(figsize=(6.4, 4.0), dpi=110, layout="constrained")
    ax = fig.subplots()
    for label, _, flops, ms in points:
        ax.scatter([flops], [ms], s=30, color="C0")
        ax.annotate(label, (flops, ms), xytext=(4, 3), textcoords="offset points", fontsize=7)
    ax.set_xlabel("decoder prefill GFLOPs")
    ax.set_ylabel("prefill time, median (ms)")
    ax.grid(alpha=0.3)
    return fig


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure_png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
