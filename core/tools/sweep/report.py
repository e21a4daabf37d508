"""What a sweep reports: a summary table, a CSV, and the plots a paper shows.

Per model and dataset: accuracy against prefill FLOPs and against measured prefill time (one series
per policy, the Pareto front over all cells marked), accuracy against K (the drop layer of layered
policies, one line per policy and budget) and against the budget (one line per policy
configuration). Agreement with ``full`` is computed from the stored predictions when the sweep has
a ``full`` cell for the same model, dataset and seed. When cells repeat over seeds, a second table,
CSV and plot give each configuration's mean over its seeds (with the spread, and accuracy per
split: subject / non-subject, question type), which is what a paper's table reports.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vtsched.core.io import write_atomic
from vtsched.core.tools.report import save_png, write_csv

__all__ = ["COLUMNS", "pareto_front", "seed_means", "seed_table", "summary_rows", "summary_table", "summary_text", "write_report"]

COLUMNS = ("model", "dataset", "label", "policy", "budget", "budget_counts", "k", "partitioner", "seed", "status", "n",
           "accuracy", "score", "agreement_with_full", "visual_tokens_input", "visual_tokens_per_layer", "prefill_gflops",
           "est_gflops", "prefill_ms",
           "match", "match_target", "match_achieved", "budget_solved", "vision_ms", "wall_s", "error", "hash")


def _budget_value(budget: Any) -> float:
    try:
        return float(str(budget).rstrip("%")) / (100 if str(budget).endswith("%") else 1)
    except (TypeError, ValueError):
        return math.nan


def summary_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per cell (its latest result), in the order given, with agreement with ``full``."""
    full: dict[tuple[str, str, int], dict[str, str]] = {}
    for r in rows:
        spec = r["spec"]
        if r.get("status") == "ok" and spec["policy"] == "full":
            full[(spec["model"], spec["dataset"], spec["seed"])] = {i: p for i, p, _ in r.get("predictions", [])}
    out = []
    for r in rows:
        spec = r["spec"]
        reference = full.get((spec["model"], spec["dataset"], spec["seed"]))
        agreement = None
        if reference is not None and r.get("status") == "ok":
            from vtsched.core.tools.evaluate import normalise

            pairs = [(p, reference.get(i)) for i, p, _ in r.get("predictions", []) if i in reference]
            agreement = sum(normalise(p) == normalise(q or "") for p, q in pairs) / len(pairs) if pairs else None
        out.append({
            "model": spec["model"], "dataset": spec["dataset"], "label": r.get("label"), "policy": spec["policy"],
            "budget": spec.get("budget"), "budget_counts": r.get("budget_counts"), "k": r.get("k"),
            "partitioner": spec.get("partitioner"),
            "seed": spec.get("seed"), "status": r.get("status"), "n": r.get("n"), "accuracy": r.get("accuracy"),
            "score": r.get("score"),  # a plugin evaluator's column shown as accuracy (gIoU), if not accuracy
            "agreement_with_full": agreement, "visual_tokens_input": r.get("visual_tokens_input"),
            "visual_tokens_per_layer": r.get("visual_tokens_per_layer"),
            "prefill_gflops": r.get("prefill_gflops"), "est_gflops": r.get("est_gflops"),
            "prefill_ms": r.get("prefill_ms"), "vision_ms": r.get("vision_ms"), "wall_s": r.get("wall_s"),
            "match": r.get("match"), "match_target": r.get("match_target"), "match_achieved": r.get("match_achieved"),
            "budget_solved": r.get("budget_solved"),
            "by_split": dict(r.get("by_split") or {}),
            "error": r.get("error"), "hash": r.get("hash"),
        })
    return out


def _fmt(value: Any, spec: str, scale: float = 1.0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value * scale if scale != 1.0 else value, spec)


def summary_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The table printed at the end of a sweep: one line per cell, failures with their error."""
    header = (f"{'cell':<40s} {'n':>4s} {'acc':>6s} {'agree':>6s} {'vis/layer':>9s} {'GFLOPs':>8s} "
              f"{'prefill ms':>10s} {'status':<6s}")
    lines = []
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["model"], r["dataset"])].append(r)
    for (model, dataset), mine in groups.items():
        scores = sorted({str(r["score"]) for r in mine if r.get("score")})
        shown = f" (acc: {', '.join(scores)}, from the evaluator)" if scores else ""
        lines += [f"model {model}, data {dataset}{shown}", header, "-" * len(header)]
        for r in mine:
            line = (f"{str(r['label'])[:40]:<40s} {_fmt(r['n'], 'd'):>4s} {_fmt(r['accuracy'], '.1f', 100):>6s} "
                    f"{_fmt(r['agreement_with_full'], '.1f', 100):>6s} {_fmt(r['visual_tokens_per_layer'], '.1f'):>9s} "
                    f"{_fmt(r['prefill_gflops'] if r['status'] == 'ok' else r['est_gflops'], '.4f'):>8s} "
                    f"{_fmt(r['prefill_ms'], '.2f'):>10s} {r['status']:<6s}")
            if r["status"] != "ok":
                line += f" {r['error']}"
            lines.append(line)
    return "\n".join(lines)


def _over_seeds(row: Mapping[str, Any]) -> tuple[str, str, str]:
    """What a cell is apart from its seed: model, dataset with the seed's value as ``{seed}``, label sans ``#s``."""
    seed, parts = row.get("seed"), str(row["dataset"]).split(":")
    if seed is not None and str(seed) in parts:
        parts[parts.index(str(seed))] = "{seed}"
    return str(row["model"]), ":".join(parts), str(row["label"]).split("#")[0]


def _mean(values: Sequence[Any]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return sum(present) / len(present) if present else None


def seed_means(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per configuration run under several seeds: means over its ``ok`` seeds, and the spread.

    ``rows`` are :func:`summary_rows`. Empty when no configuration ran under more than one seed.
    """
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["status"] == "ok" and r["accuracy"] is not None:
            groups[_over_seeds(r)].append(r)
    if all(len(mine) < 2 for mine in groups.values()):
        return []
    out = []
    for (model, dataset, label), mine in groups.items():
        accuracy = [float(r["accuracy"]) for r in mine]
        splits = sorted({k for r in mine for k in r.get("by_split", {})})
        out.append({
            "model": model, "dataset": dataset, "label": label, "policy": mine[0]["policy"],
            "budget": mine[0]["budget"], "k": mine[0]["k"], "status": "ok", "seeds": len(mine),
            "n": sum(int(r["n"] or 0) for r in mine), "accuracy": _mean(accuracy), "accuracy_min": min(accuracy),
            "accuracy_max": max(accuracy), "agreement_with_full": _mean([r["agreement_with_full"] for r in mine]),
            **{key: _mean([r[key] for r in mine])
               for key in ("visual_tokens_per_layer", "prefill_gflops", "prefill_ms", "vision_ms")},
            "by_split": {k: _mean([r.get("by_split", {}).get(k) for r in mine]) for k in splits},
        })
    return out


def seed_table(means: Sequence[Mapping[str, Any]]) -> str:
    """The mean-over-seeds table: accuracy, its range over seeds, the subject / non-subject splits, cost."""
    tags = sorted({k for r in means for k in r["by_split"] if k.startswith("tag=")})
    width = max([len("cell (mean over seeds)"), *(len(r["label"]) for r in means)])
    header = (f"{'cell (mean over seeds)':<{width}s} {'seeds':>5s} {'n':>5s} {'acc':>6s} {'min-max':>11s} "
              + " ".join(f"{t[4:]:>11s}" for t in tags) + f" {'GFLOPs':>8s} {'prefill ms':>10s}")
    lines = []
    for dataset in dict.fromkeys((r["model"], r["dataset"]) for r in means):
        lines += [f"model {dataset[0]}, data {dataset[1]}", header, "-" * len(header)]
        for r in (r for r in means if (r["model"], r["dataset"]) == dataset):
            spread = f"{100 * r['accuracy_min']:.1f}-{100 * r['accuracy_max']:.1f}"
            lines.append(f"{r['label']:<{width}s} {r['seeds']:>5d} {r['n']:>5d} {_fmt(r['accuracy'], '.1f', 100):>6s} "
                         f"{spread:>11s} " + " ".join(f"{_fmt(r['by_split'].get(t), '.1f', 100):>11s}" for t in tags)
                         + f" {_fmt(r['prefill_gflops'], '.4f'):>8s} {_fmt(r['prefill_ms'], '.2f'):>10s}")
    return "\n".join(lines)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: lower cost (x) and higher accuracy (y), by x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _without_k(label: str) -> str:
    """A cell's label without its K (the x axis of the accuracy-against-K plot)."""
    import re

    from vtsched.core.tools.sweep.cells import LAYER_PARAMS

    for name in LAYER_PARAMS:
        label = re.sub(rf"\b{name}=\d+,?", "", label)
    return label.replace(",)", ")").replace("()", "").split("#")[0]


def _config_name(r: Mapping[str, Any]) -> str:
    """A cell's policy settings without K, budget or seed: one colour in the cost plots."""
    return _without_k(str(r["label"])).split("@")[0]


def _series_name(r: Mapping[str, Any]) -> str:
    return str(r["label"]).split("@")[0].split("#")[0]


def _plot(rows: Sequence[Mapping[str, Any]], title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    ok = [r for r in rows if r["status"] == "ok" and r["accuracy"] is not None]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), dpi=110)
    markers = "os^Dv<>pP*Xh"
    policies = list(dict.fromkeys(r["policy"] for r in ok))
    style = {p: markers[i % len(markers)] for i, p in enumerate(policies)}
    configs = list(dict.fromkeys(_config_name(r) for r in ok))  # a policy's settings apart from K and budget
    tint = {c: f"C{i % 10}" for i, c in enumerate(configs)}
    for ax, key, xlabel in ((axes[0][0], "prefill_gflops", "decoder prefill GFLOPs per sample (what ran)"),
                            (axes[0][1], "prefill_ms", "measured prefill time per sample (ms)")):
        measured = [r for r in ok if r.get(key) is not None]  # an evaluator's row may lack a cost column
        for config in configs:
            mine = [r for r in measured if _config_name(r) == config]
            if mine:
                ax.scatter([r[key] for r in mine], [100 * r["accuracy"] for r in mine],
                           marker=style[mine[0]["policy"]], color=tint[config], s=40, label=config, alpha=0.85)
        points = [(float(r[key]), float(r["accuracy"])) for r in measured]
        front = [measured[i] for i in pareto_front(points)]
        if front:
            ax.step([r[key] for r in front], [100 * r["accuracy"] for r in front], where="post", color="black",
                    lw=1, ls="--", label="Pareto front")
            ax.scatter([r[key] for r in front], [100 * r["accuracy"] for r in front], s=140, facecolors="none",
                       edgecolors="black", lw=1)
            for r in front:
                ax.annotate(str(r["label"]), (r[key], 100 * r["accuracy"]), fontsize=6, xytext=(4, -8),
                            textcoords="offset points")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    ax = axes[1][0]  # accuracy against K, one line per policy configuration and budget
    lines: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in ok:
        if r["k"] is not None:
            lines[_without_k(str(r["label"]))].append(r)
    for name, mine in lines.items():
        mine = sorted(mine, key=lambda r: r["k"])
        policy = mine[0]["policy"]
        ax.plot([r["k"] for r in mine], [100 * r["accuracy"] for r in mine], marker=style[policy], label=name, lw=1)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("K (layer where the schedule drops / switches)")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    if lines:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no layered policy in this sweep", ha="center", transform=ax.transAxes, fontsize=8)
    ax = axes[1][1]  # accuracy against budget, one line per policy configuration
    series: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in ok:
        if r["budget"] is not None:
            series[_series_name(r)].append(r)
    for name, mine in series.items():
        mine = sorted(mine, key=lambda r: _budget_value(r["budget"]))
        ax.plot([_budget_value(r["budget"]) for r in mine], [100 * r["accuracy"] for r in mine],
                marker=style[mine[0]["policy"]], label=name, lw=1)
    for r in ok:
        if r["budget"] is None and r["policy"] == "full":
            ax.axhline(100 * r["accuracy"], color="grey", ls=":", lw=1, label="full")
            break
    ax.set_xlabel("budget (visual tokens kept per image)")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_png(fig, path)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text).strip("-")[:60]


def summary_text(rows: Sequence[Mapping[str, Any]], means: Sequence[Mapping[str, Any]] | None = None) -> str:
    """What a sweep prints and keeps in ``summary.txt``: every cell, then the means over seeds (if any)."""
    means = seed_means(rows) if means is None else means
    return summary_table(rows) + ("\n\n" + seed_table(means) if means else "")


def write_report(rows: Sequence[Mapping[str, Any]], out: Path, name: str) -> list[Path]:
    """``summary.csv`` (every cell) and one plot per model and dataset in ``out``; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = [write_csv(out / "summary.csv", [{k: r.get(k) for k in COLUMNS} for r in rows])]
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["model"], r["dataset"])].append(r)
    for (model, dataset), mine in groups.items():
        if any(r["status"] == "ok" for r in mine):
            stem = "plots" if len(groups) == 1 else f"plots-{_slug(Path(model).name)}-{_slug(dataset)}"
            written.append(_plot(mine, f"{name}: {model}, {dataset}", out / f"{stem}.png"))
    means = seed_means(rows)
    if means:
        splits = sorted({k for r in means for k in r["by_split"]})
        columns = ("model", "dataset", "label", "policy", "budget", "k", "seeds", "n", "accuracy", "accuracy_min",
                   "accuracy_max", "agreement_with_full", "visual_tokens_per_layer", "prefill_gflops", "prefill_ms")
        written.append(write_csv(out / "summary-seeds.csv",
                                 [{**{k: r.get(k) for k in columns}, **{k: r["by_split"].get(k) for k in splits}}
                                  for r in means]))
        for (model, dataset) in dict.fromkeys((r["model"], r["dataset"]) for r in means):
            mine = [r for r in means if (r["model"], r["dataset"]) == (model, dataset)]
            stem = f"plots-seed-mean-{_slug(Path(model).name)}-{_slug(dataset)}"
            written.append(_plot(mine, f"{name}: {model}, {dataset}, mean over seeds", out / f"{stem}.png"))
    write_atomic(out / "summary.txt", summary_text(rows, means) + "\n")
    written.append(out / "summary.txt")
    return written
