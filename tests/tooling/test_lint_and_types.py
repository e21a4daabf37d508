"""The tree is lint-clean (``ruff check``) and type-clean (``mypy`` on core, policies, partitioners).

Both run as the environment's own executables (beside this Python) with pyproject.toml's settings;
a test skips, saying why, only when its tool is not installed. mypy keeps its cache in
``.mypy_cache/``: a cold run takes about half a minute, a warm one a few seconds.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _tool(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed beside {sys.executable} (pip install -e '.[dev]' installs it)")
    return path


def test_ruff_check_is_clean():
    ruff = _tool("ruff")
    done = subprocess.run([str(ruff), "check", "--no-cache", "--output-format", "concise", "."], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"ruff check found problems:\n{done.stdout[-6000:]}{done.stderr[-2000:]}"


def test_mypy_is_clean():
    _tool("mypy")
    done = subprocess.run([sys.executable, str(ROOT / ".ci" / "typecheck")], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"mypy found problems:\n{done.stdout[-6000:]}{done.stderr[-2000:]}"
    assert "Success" in done.stdout, done.stdout
