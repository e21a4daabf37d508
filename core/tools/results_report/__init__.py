"""One page for the results of ``bench``, ``eval`` and ``sweep`` (moved into a package; split by concern next)."""

from vtsched.core.tools.results_report.reading import (
    FORMATS,
    Results,
    Table,
    read_results,
    render_html,
    render_tables,
    sweep_sheets,
)

__all__ = ["FORMATS", "Results", "Table", "read_results", "render_html", "render_tables", "sweep_sheets"]
