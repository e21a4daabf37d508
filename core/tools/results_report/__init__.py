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

The package's modules: ``reading`` (:func:`read_results`, :class:`Results`, :class:`Table`), ``plots``
(the trade-off and time plots), ``sheets`` (``show`` sheets of a sweep's chosen items), ``rendering``
(the HTML page, Markdown and LaTeX tables).
"""

from vtsched.core.tools.results_report.plots import figure_png, png_uri, time_figure, trade_off_figure
from vtsched.core.tools.results_report.reading import (
    BENCH_COLUMNS,
    COST_HEADERS,
    EVAL_COLUMNS,
    ROW_COST_COLUMNS,
    Results,
    Table,
    read_results,
)
from vtsched.core.tools.results_report.rendering import FORMATS, render_html, render_tables
from vtsched.core.tools.results_report.sheets import chosen_items, sweep_sheets

__all__ = [
    "BENCH_COLUMNS",
    "COST_HEADERS",
    "EVAL_COLUMNS",
    "FORMATS",
    "ROW_COST_COLUMNS",
    "Results",
    "Table",
    "chosen_items",
    "figure_png",
    "png_uri",
    "read_results",
    "render_html",
    "render_tables",
    "sweep_sheets",
    "time_figure",
    "trade_off_figure",
]
