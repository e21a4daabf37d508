"""``vtsched report RESULTS...``: one self-contained HTML page (or paper tables) from bench, eval and sweep results."""

from __future__ import annotations

import argparse

from vtsched.core.cli.checks import add_device, add_output, at_least
from vtsched.core.cli.common import add_common


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    report = sub.add_parser("report", help="one HTML page (plots and token maps inlined) or Markdown/LaTeX tables "
                                           "from the results of bench, eval and sweep")
    report.add_argument("results", nargs="+", metavar="RESULTS",
                        help="results files: bench's or eval's results.json, a sweep's results.jsonl")
    report.add_argument("--format", choices=("html", "markdown", "latex"), default="html",
                        help="html: the page; markdown / latex: the tables only, for a paper")
    add_output(report, "--out", "file", default=None, metavar="FILE",
               help="where to write it (default vtsched-out/report.html, .md or .tex)")
    report.add_argument("--show", type=at_least(0), default=2, metavar="N",
                        help="draw `vtsched show` sheets of the N items a sweep's cells disagree on most (0: none)")
    report.add_argument("--title", default="vtsched results")
    add_device(report, default="cpu")
    add_common(report)


def main(args: argparse.Namespace) -> int:
    from vtsched.core.cli.common import registry_for
    from vtsched.core.io import write_atomic
    from vtsched.core.tools.results_report import (
        read_results,
        render_html,
        render_tables,
        sweep_sheets,
    )

    results = [read_results(path) for path in args.results]  # every file is checked before any work
    suffix = {"html": "html", "markdown": "md", "latex": "tex"}[args.format]
    out = args.out or f"vtsched-out/report.{suffix}"
    if args.format == "html":
        registry = registry_for(args)
        sheets = [sweep_sheets(r, args.show, args.device, registry) if r.kind == "sweep" else [] for r in results]
        text = render_html(results, sheets, title=args.title)
    else:
        text = render_tables(results, args.format)
    write_atomic(out, text)
    print(f"wrote {out}")
    return 0
