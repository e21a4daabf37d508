"""Writing the report: one self-contained HTML page (:func:`render_html`: tables, plots and sheets inlined
as ``data:`` URIs, no script), or the tables as Markdown or LaTeX (:func:`render_tables`)."""

from __future__ import annotations

import html
from collections.abc import Sequence

from vtsched.core.errors import InputError
from vtsched.core.tools.results_report.plots import figure_png, png_uri, time_figure, trade_off_figure
from vtsched.core.tools.results_report.reading import Results, Table

__all__ = ["FORMATS", "render_html", "render_tables"]

FORMATS = ("html", "markdown", "latex")


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
