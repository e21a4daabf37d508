"""Reading a results file: :func:`read_results` says which command wrote it (``bench`` and ``eval`` write
``results.json``, ``sweep`` a ``results.jsonl``) and turns it into :class:`Results`, its tables (:class:`Table`) and
the points of its plots; any other file, or rows of an older vtsched, is one line."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vtsched.core.errors import InputError

__all__ = ["BENCH_COLUMNS", "COST_HEADERS", "EVAL_COLUMNS", "ROW_COST_COLUMNS", "Results", "Table", "read_results"]


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
