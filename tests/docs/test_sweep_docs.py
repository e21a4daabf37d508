"""docs/ablations.md runs: its sweep is interrupted and resumed, and the table it shows is what it computes."""

from __future__ import annotations

import re
import signal
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "ablations.md"


def _block(text: str, language: str, title: str | None = None) -> list[str]:
    attrs = rf'[^\n]*title="{re.escape(title)}"[^\n]*' if title else r"[^\n]*"
    return re.findall(rf"^```{language}{attrs}\n(.*?)^```", text, flags=re.S | re.M)


def test_ablations_page_runs_and_shows_what_it_computes(monkeypatch):
    text = PAGE.read_text()
    (config,) = _block(text, "toml", "docs/ablation.toml")
    assert config == (ROOT / "docs" / "ablation.toml").read_text(), "docs/ablations.md shows docs/ablation.toml as it is"
    monkeypatch.chdir(ROOT)
    module = types.ModuleType("vtsched_docs_ablations")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    blocks = _block(text, "python")
    assert len(blocks) == 3
    # the page interrupts a child sweep with SIGINT: a SIGINT disposition that an earlier test or library
    # left ignored would be inherited by the child, so the page runs under Python's default handler
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        for i, block in enumerate(blocks):
            exec(compile(block, f"ablations.md[block {i}]", "exec"), module.__dict__)
    finally:
        signal.signal(signal.SIGINT, previous)
    computed = {r["label"]: r for r in module.outcome.rows}
    (table,) = [b for b in _block(text, "text") if "prefill ms" in b]
    shown = {}
    for line in table.splitlines():
        parts = line.split()
        if len(parts) == 8 and parts[-1] == "ok":
            shown[parts[0]] = (float(parts[2]), float(parts[5]))
    assert set(shown) == set(computed)
    for label, (accuracy, gflops) in shown.items():
        assert accuracy == round(100 * computed[label]["accuracy"], 1), label
        assert gflops == round(computed[label]["prefill_gflops"], 4), label
    assert (ROOT / "docs" / "images" / "ablations-demo.png").exists()
    assert "MEASUREMENTS" not in text
