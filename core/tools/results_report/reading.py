"""One page for the results of ``bench``, ``eval`` and ``sweep``: tables, trade-off plots, token maps.

:func:`read_results` reads a results file and says which command wrote it (``bench`` and ``eval``
write ``results.json``, ``sweep`` a ``results.jsonl`` of rows with a ``format``); a file of another
command (``run --json``, ``show --json``, a schedule) or from an older vtsched whose rows lack a
column the report needs is one :class:`~vtsched.core.errors.InputError` line.

:func:`render_html` writes one self-contained page: every plot and image is inlined as a
``data:`` URI, there is no script and nothing is fetched, so it opens offline and can be mailed.
Per results file: the table with each row's costs (visual tokens per layer, prefill FLOPs and time,
ratios to ``full``), accuracy against prefill FLOPs and against prefill time with the Pareto front
(the cells no other cell beats on both), accuracy per question type, and ``vtsched show`` sheets
of chosen items (sweep results: the items on which the cells disagree most, each under every
policy of the sweep). :func:`render_tables` writes the same tables as Markdown or LaTeX for a paper.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from vtsched.core.errors import InputError

__all__ = ["Results", "Table", "read_results", "render_html", "render_tables", "FORMATS"]

FORMATS = ("html", "markdown", "latex")


@dataclass
class Table:
    """A titled table: column names and rows of already formatted cells."""

    title: str
    columns: list[str]
    rows: list[list[str]]


@dataclass
class Results:
    """One results file, read: which command wrote it, its tables and the points of its plots.

    ``points``: per row, ``(label, accuracy, gflops, prefill_ms)`` (``None`` where not measured).
    ``cells``: sweep rows (their ``spec``), for drawing ``show`` sheets.
    """

    path: Path
    kind: str
    title: str
    tables: list[Table] = field(default_factory=list)
    points: list[tuple[str, float | None, float | None, float | None]] = field(default_factory=list)
    cells: list[dict[str, Any]] = field(default_factory=list)


# -- reading -----------------------------------------------------------------------------------
#: The cost columns every results row carries (vtsched.core.cost), shown alike in every table.
ROW_COST_COLUMNS = ("budget_counts", "visual_tokens_input", "visual_tokens_per_layer", "prefill_gflops", "prefill_ms")
COST_HEADERS = ["budget counts", "visual tokens in", "visual tokens/layer (all streams)", "prefill GFLOPs (scoring incl.)",
                "prefill ms"]
BENCH_COLUMNS = ("case", *ROW_COST_COLUMNS, "prefill_iqr_ms", "ttft_ms", "decode_tokens_per_s", "peak_mem_mb",
                 "flops_ratio_to_full", "speedup_vs_full")
EVAL_COLUMNS = ("case", "split", "n", "accuracy", "agreement", "kl", *ROW_COST_COLUMNS)
OTHER_FILES = {  # a key only that file has -> what wrote it
    "vtsched_show": "`vtsched show --json`", "vtsched_schedule": "a schedule (`vtsched explain --json` or `search-k`)",
    "answer": "`vtsched run --json`",
}


def read_results(path: str | Path) -> Results:
    """Read a results file of ``bench``, ``eval`` or ``sweep`` (refused in one line otherwise)."""
    from vtsched.core.io import read_text

    path = Path(path)
    text = read_text(path, "results")
    first = next((line for line in text.splitlines() if line.strip()), "")
    try:
        head = json.loads(first)
    except json.JSONDecodeError:
        head = None
    if isinstance(head, dict) and ("format" in head or "spec" in head or "hash" in head):
        return _sweep(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise InputError(f"{path} is not a results file of vtsched bench, eval or sweep (not JSON)") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} is not a results file of vtsched bench, eval or sweep")
    for key, who in OTHER_FILES.items():
        if key in data:
            raise InputError(f"{path} was written by {who}, not by bench, eval or sweep; "
                             "give `vtsched report` their results files (results.json, results.jsonl)")
    if "rows" in data and "shape" in data and "device" in data:
        return _bench(path, data)
    if "rows" in data and "data" in data:
        return _eval(path, data)
    raise InputError(f"{path} is not a results file of vtsched bench, eval or sweep")


def _need(path: Path, kind: str, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    for row in rows:
        missing = [c for c in columns if c not in row]
        if missing:
            raise InputError(f"{path}: a {kind} results file from an older vtsched (its rows have no {missing[0]!r}); "
                             f"run `vtsched {kind}` again to write it in this version's form")


def _bench(path: Path, data: dict[str, Any]) -> Results:
    rows = data["rows"]
    _need(path, "bench", rows, BENCH_COLUMNS)
    out = Results(path, "bench", f"bench: {data['shape']} on {data['device']}, {data.get('dtype', '')}, "
                                 f"batch {data.get('batch_size', '?')}")
    match = _match_headers(rows)
    out.tables.append(Table("prefill cost per case", [
        "case", *COST_HEADERS, *match, "prefill IQR ms", "FLOPs vs full", "speedup vs full", "TTFT ms", "decode tok/s",
        "peak MB"], [[
            r["case"], *_cost_cells(r), *_match_cells(r, match), _num(r["prefill_iqr_ms"], ".2f"),
            _num(r["flops_ratio_to_full"], ".3f"), _num(r["speedup_vs_full"], ".2f"),
            _num(r["ttft_ms"], ".2f"), _num(r["decode_tokens_per_s"], ".1f"), _num(r["peak_mem_mb"], ".1f")]
            for r in rows]))
    out.points = [(r["case"], None, r["prefill_gflops"], r["prefill_ms"]) for r in rows]
    return out


def _eval(path: Path, data: dict[str, Any]) -> Results:
    rows = data["rows"]
    if "evaluator" in data:  # a plugin's evaluator: its own columns, shown as they are
        columns = list(rows[0]) if rows else []
        out = Results(path, "eval", f"eval ({data['evaluator']}): {data.get('model')} on {data.get('data')}")
        out.tables.append(Table("results", columns, [[_cell(r.get(c)) for c in columns] for r in rows]))
        return out
    _need(path, "eval", rows, EVAL_COLUMNS)
    out = Results(path, "eval", f"eval: {data.get('model')} on {data.get('data')}")
    overall = [r for r in rows if r["split"] == "all"]
    match = _match_headers(overall)
    out.tables.append(Table("accuracy and cost per case", [
        "case", "n", "accuracy %", "agreement with full %", "KL to full", *COST_HEADERS, *match],
        [[r["case"], str(r["n"]), _num(r["accuracy"], ".1f", 100), _num(r["agreement"], ".1f", 100),
          _num(r["kl"], ".4f"), *_cost_cells(r), *_match_cells(r, match)]
         for r in overall]))
    splits = {(r["case"], r["split"]): r["accuracy"] for r in rows if r["split"] != "all"}
    out.tables += _split_table([r["case"] for r in overall], splits)
    out.points = [(r["case"], r["accuracy"], r["prefill_gflops"], None) for r in overall]
    return out


def _sweep(path: Path) -> Results:
    from vtsched.core.tools.sweep.report import summary_rows
    from vtsched.core.tools.sweep.results import ResultsFile

    latest = list(ResultsFile.read(path).latest().values())  # refuses rows of another format in one line
    rows = summary_rows(latest)
    out = Results(path, "sweep", f"sweep: {path}")
    match = _match_headers(rows)
    out.tables.append(Table("cells", [
        "model", "data", "cell", "n", "accuracy %", "agreement with full %", *COST_HEADERS, *match, "status"],
        [[Path(str(r["model"])).name, str(r["dataset"]), str(r["label"]), _cell(r["n"]), _num(r["accuracy"], ".1f", 100),
          _num(r["agreement_with_full"], ".1f", 100), *_cost_cells(r), *_match_cells(r, match),
          r["status"] + (f": {r['error']}" if r["status"] != "ok" and r.get("error") else "")] for r in rows]))
    ok = [r for r in rows if r["status"] == "ok"]
    splits = {(str(r["label"]), k): v for r in ok for k, v in r["by_split"].items()}
    out.tables += _split_table([str(r["label"]) for r in ok], splits)
    out.points = [(str(r["label"]), r["accuracy"], r["prefill_gflops"], r["prefill_ms"]) for r in ok]
    out.cells = [row for row in latest if row.get("status") == "ok"]
    return out


def _cost_cells(row: dict[str, Any]) -> list[str]:
    """The :data:`ROW_COST_COLUMNS` of a row, formatted ('-' where a row has none, e.g. a failed sweep cell)."""
    return [_cell(row.get("budget_counts")), _num(row.get("visual_tokens_input"), ".1f"),
            _num(row.get("visual_tokens_per_layer"), ".1f"), _num(row.get("prefill_gflops"), ".4g"),
            _num(row.get("prefill_ms"), ".2f")]


def _match_headers(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Headers of the matching columns, when any row was matched (``--match``): what, target, achieved."""
    return ["matched on", "target", "achieved"] if any(r.get("match") for r in rows) else []


def _match_cells(row: dict[str, Any], headers: Sequence[str]) -> list[str]:
    if not headers:
        return []
    return [_cell(row.get("match")), _num(row.get("match_target"), ".4g"), _num(row.get("match_achieved"), ".4g")]


def _split_table(cases: Sequence[str], accuracy: dict[tuple[str, str], float]) -> list[Table]:
    """Accuracy per question type (and tag): one row per case, one column per split."""
    names = sorted({s for _, s in accuracy}, key=lambda s: (not s.startswith("type="), s))
    if not names:
        return []
    return [Table("accuracy % per question type and tag", ["case", *[n.split("=", 1)[-1] for n in names]],
                  [[case, *[_num(accuracy.get((case, n)), ".1f", 100) for n in names]] for case in cases])]


def _num(value: Any, spec: str, scale: float = 1.0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(float(value) * scale, spec)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return format(value, ".4g")
    return "-" if value is None else str(value)


# -- plots -------------------------------------------------------------------------------------
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


# -- show sheets of chosen items ---------------------------------------------------------------
def chosen_items(cells: Sequence[dict[str, Any]], count: int) -> list[str]:
    """The ``count`` item ids the cells disagree on most (most distinct answers; then fewest correct), in order."""
    answers: dict[str, list[tuple[str, bool]]] = {}
    for cell in cells:
        for item, prediction, correct in cell.get("predictions", []):
            answers.setdefault(str(item), []).append((str(prediction).strip().lower(), bool(correct)))
    ranked = sorted(answers, key=lambda i: (-len({p for p, _ in answers[i]}), sum(c for _, c in answers[i])))
    return ranked[:count]


def sweep_sheets(results: Results, count: int, device: str = "cpu", registry: Any = None,
                 load: Callable[[str], Any] | None = None) -> list[tuple[str, bytes]]:
    """``(caption, sheet PNG)`` for the chosen items of a sweep, each under every policy of its cells."""
    from vtsched.core.tools.evaluate import load_items
    from vtsched.core.tools.show import show

    if count <= 0 or not results.cells:
        return []
    sheets = []
    schedulers: dict[str, Any] = {}
    items_by_data: dict[str, dict[str, Any]] = {}
    for item_id in chosen_items(results.cells, count):
        for cell in results.cells:
            spec = cell["spec"]
            if item_id not in {str(p[0]) for p in cell.get("predictions", [])} or spec["policy"] == "full":
                continue
            if spec["dataset"] not in items_by_data:
                items_by_data[spec["dataset"]] = {i.id: i for i in load_items(spec["dataset"])}
            item = items_by_data[spec["dataset"]].get(item_id)
            if item is None:
                continue
            model = str(spec["model"])
            if model not in schedulers:
                schedulers[model] = (load or _loader(device, registry))(model)
            drawn = show(schedulers[model], item.load(), item.question, spec["policy"], budget=spec.get("budget"),
                         policy_params=spec.get("params") or {}, partitioner=spec.get("partitioner"),
                         partitioner_params=spec.get("partitioner_params") or {})
            caption = (f"{item_id} ({cell.get('label')}): {item.question} — expected {item.answer!r}, "
                       f"answered {drawn.data['answer'].strip()!r}")
            sheets.append((caption, drawn.sheet_png()))
    return sheets


def _loader(device: str, registry: Any) -> Callable[[str], Any]:
    def load(model: str) -> Any:
        from vtsched.core.app import load_scheduler

        return load_scheduler(None if model == "demo" else model, registry, device)

    return load


# -- rendering ---------------------------------------------------------------------------------
_STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1180px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccc; }
h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f3f3f6; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0; } figcaption { font-size: 12px; color: #555; }
img { max-width: 100%; height: auto; }
"""


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table.rows)
    return f"<h3>{html.escape(table.title)}</h3>\n<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(png: bytes, caption: str) -> str:
    return (f'<figure><img src="{png_uri(png)}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def render_html(results: Sequence[Results], sheets: Sequence[Sequence[tuple[str, bytes]]] = (),
                title: str = "vtsched results") -> str:
    """The page: per results file its tables, plots and ``show`` sheets (``sheets[i]`` for ``results[i]``)."""
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    for i, result in enumerate(results):
        parts.append(f"<h2>{html.escape(result.title)}</h2>")
        parts.append(f"<p>from <code>{html.escape(str(result.path))}</code></p>")
        parts += [_html_table(t) for t in result.tables]
        figures = [(trade_off_figure(result, 2, "decoder prefill GFLOPs"), "accuracy against prefill FLOPs"),
                   (trade_off_figure(result, 3, "prefill time, median (ms)"), "accuracy against prefill time")]
        if result.kind == "bench":
            figures = [(time_figure(result), "prefill time against prefill FLOPs")]
        for fig, caption in figures:
            if fig is not None:
                parts.append(_figure(figure_png(fig), caption + (" (orange: the Pareto front)"
                                                                  if result.kind != "bench" else "")))
        mine = sheets[i] if i < len(sheets) else ()
        if mine:
            parts.append("<h3>what the schedules did on chosen items</h3>")
            parts += [_figure(png, caption) for caption, png in mine]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def render_tables(results: Sequence[Results], fmt: str) -> str:
    """Every table as Markdown (``fmt="markdown"``) or LaTeX (``"latex"``, booktabs)."""
    out = []
    for result in results:
        for table in result.tables:
            if fmt == "markdown":
                out.append(f"### {result.title}: {table.title}\n")
                out.append("| " + " | ".join(_md(c) for c in table.columns) + " |")
                out.append("|" + "|".join(["---"] + ["---:"] * (len(table.columns) - 1)) + "|")
                out += ["| " + " | ".join(_md(c) for c in row) + " |" for row in table.rows]
                out.append("")
            elif fmt == "latex":
                out.append(f"% {result.title}: {table.title}")
                out.append("\\begin{tabular}{l" + "r" * (len(table.columns) - 1) + "}")
                out.append("\\toprule")
                out.append(" & ".join(_tex(c) for c in table.columns) + " \\\\")
                out.append("\\midrule")
                out += [" & ".join(_tex(c) for c in row) + " \\\\" for row in table.rows]
                out.append("\\bottomrule")
                out.append("\\end{tabular}\n")
            else:
                raise InputError(f"--format {fmt!r}: tables are written as markdown or latex")
    return "\n".join(out)


def _md(text: str) -> str:
    return text.replace("|", "\\|")


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in text)
