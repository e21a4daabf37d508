"""`vtsched report`: bench, eval and sweep results on one offline page, checked in a real headless Chromium.

The page must load in Chromium with no console error, every image must decode, and a screenshot must
not be blank (Debian's ``chromium`` package; ``.ci/run`` installs it, elsewhere the test says why it
is skipped). A control page with a broken image and a console error must fail the same checks.
"""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest

from tests.tools.chromium import chromium, load_page
from vtsched.core.cli import main
from vtsched.core.demo import demo_model_path

SWEEP = """
[sweep]
name = "report-test"
models = ["demo"]
datasets = ["synthetic:2:1"]
budgets = [7]
seeds = [0]
results = "{results}"
[eval]
max_new_tokens = 4
batch_size = 16
[[policy]]
name = "full"
[[policy]]
name = "prune"
[[policy]]
name = "parvts"
params = {{ fusion = "size", drop_layer = 2 }}
"""


def cli(capsys, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Real results files of the three commands, small."""
    if demo_model_path() is None:
        pytest.skip("the shipped demo model is not installed")
    folder = tmp_path_factory.mktemp("results")
    (folder / "sweep.toml").write_text(SWEEP.format(results=folder / "results.jsonl"))
    assert main(["sweep", str(folder / "sweep.toml"), "--no-progress"]) == 0
    assert main(["eval", "--data", "synthetic:1:1", "--policies", "prune", "--budgets", "7", "--max-new-tokens", "4",
                 "--no-progress", "--out", str(folder / "eval")]) == 0
    assert main(["bench", "--shape", "tiny", "--policies", "prune", "--budgets", "2", "--repeats", "2", "--warmup",
                 "0", "--decode-tokens", "2", "--no-reference", "--no-progress", "--out", str(folder / "bench")]) == 0
    return {"sweep": folder / "results.jsonl", "eval": folder / "eval" / "results.json",
            "bench": folder / "bench" / "results.json", "folder": folder}


def test_page_is_self_contained_and_renders_in_chromium(results, capsys):
    page = results["folder"] / "report.html"
    code, err = cli(capsys, "report", str(results["bench"]), str(results["eval"]), str(results["sweep"]),
                    "--show", "1", "--out", str(page))
    assert code == 0, err
    text = page.read_text()
    sources = re.findall(r'\bsrc="([^"]*)"', text)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"<script|<link|https?://|url\(", text), "the page fetches something"
    # bench: time against FLOPs; eval: accuracy against FLOPs; sweep: against FLOPs and time, and >= 2 sheets
    assert len(sources) >= 1 + 1 + 2 + 2
    for label in ("prune@7", "parvts(drop_layer=2,fusion=size)@7", "mark_colour", "Pareto front"):
        assert label in text
    assert "what the schedules did on chosen items" in text
    executable = chromium()
    if executable is None:
        pytest.skip("headless Chromium not found (Debian: apt-get install chromium; .ci/run installs it)")
    loaded = load_page(page, executable)
    assert loaded.errors == []
    assert loaded.images == len(sources) and loaded.decoded == loaded.images
    from PIL import Image

    shot = np.asarray(Image.open(io.BytesIO(loaded.screenshot)).convert("L"), dtype=float)
    assert shot.shape[0] > 1000 and shot.std() > 10, "the screenshot is blank"


def test_chromium_check_rejects_a_broken_page(tmp_path):
    executable = chromium()
    if executable is None:
        pytest.skip("headless Chromium not found (Debian: apt-get install chromium; .ci/run installs it)")
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><body><img src="data:image/png;base64,bm90IGEgcG5n">'
                    "<script>console.error('boom')</script></body></html>")
    loaded = load_page(page, executable)
    assert any("boom" in e for e in loaded.errors)
    assert loaded.images == 1 and loaded.decoded == 0
    from PIL import Image

    blank = np.asarray(Image.open(io.BytesIO(loaded.screenshot)).convert("L"), dtype=float)
    assert blank.std() < 10, "a page showing nothing should read as blank"


def test_paper_tables(results, capsys):
    md, tex = results["folder"] / "t.md", results["folder"] / "t.tex"
    assert cli(capsys, "report", str(results["sweep"]), "--format", "markdown", "--out", str(md))[0] == 0
    assert cli(capsys, "report", str(results["sweep"]), "--format", "latex", "--out", str(tex))[0] == 0
    rows = [json.loads(line) for line in results["sweep"].read_text().splitlines()]
    markdown = md.read_text()
    for row in rows:  # each cell's accuracy, as the sweep stored it
        assert f"| {row['label']} | {row['n']} | {100 * row['accuracy']:.1f} |" in markdown
    latex = tex.read_text()
    assert "\\begin{tabular}" in latex and "parvts(drop\\_layer=2,fusion=size)@7" in latex
    assert "<img" not in markdown + latex


def test_results_of_other_commands_and_older_versions_are_one_line(results, tmp_path, capsys):
    show = tmp_path / "show.json"
    show.write_text(json.dumps({"vtsched_show": 1, "runs": []}))
    schedule = tmp_path / "schedule.json"
    assert cli(capsys, "explain", "--shape", "tiny", "--policy", "prune", "--json", str(schedule))[0] == 0
    older_sweep = tmp_path / "older.jsonl"
    older_sweep.write_text("\n".join(json.dumps({**json.loads(line), "format": 0})
                                     for line in results["sweep"].read_text().splitlines()) + "\n")
    older_eval = tmp_path / "older-eval.json"
    data = json.loads(results["eval"].read_text())
    for row in data["rows"]:
        del row["agreement"]
    older_eval.write_text(json.dumps(data))
    cases = ((show, "vtsched show"), (schedule, "a schedule"), (older_sweep, "row format 0"),
             (older_eval, "from an older vtsched"), (tmp_path / "missing.json", "not found"))
    for path, phrase in cases:
        code, err = cli(capsys, "report", str(results["sweep"]), str(path), "--out", str(tmp_path / "r.html"))
        assert code == 2 and phrase in err and len(err.strip().splitlines()) == 1, (path, err)
        assert not (tmp_path / "r.html").exists()
