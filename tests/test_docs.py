"""Every ```python block of the tutorials runs, in order, so the docs never rot."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
EXECUTED = sorted(p for p in DOCS.glob("*.md") if p.name.startswith(("tutorial", "quickstart")))


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.parametrize("path", EXECUTED, ids=lambda p: p.name)
def test_tutorial_runs(path, monkeypatch):
    blocks = python_blocks(path)
    assert blocks, f"{path.name} has no python blocks"
    module = types.ModuleType(f"vtsched_docs_{path.stem.replace('-', '_')}")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # dataclasses look their module up
    for i, block in enumerate(blocks):
        exec(compile(block, f"{path.name}[block {i}]", "exec"), module.__dict__)
