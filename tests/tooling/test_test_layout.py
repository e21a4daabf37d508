"""The suite's own layout: tests live in folders by concern, import cleanly, and say what they test.

core's ``tests/`` is a package (every folder has ``__init__.py``, imports are ``from tests.helpers
import ...``), so two folders may hold modules of the same name; each plugin's ``plugins/NAME/tests/``
has no ``__init__.py``, so pytest imports its modules by their bare names, which must differ across
all plugins.
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
SHARED = {"__init__.py", "conftest.py", "helpers.py"}  # what may sit at tests/ itself


def test_no_test_module_sits_flat_in_tests():
    flat = sorted(p.name for p in TESTS.glob("*.py") if p.name not in SHARED)
    assert not flat, f"put these in the folder of their concern under tests/: {flat}"


def test_every_folder_of_core_tests_is_a_package():
    folders = [d for d in TESTS.rglob("*") if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py"))]
    missing = sorted(str(d.relative_to(ROOT)) for d in folders if not (d / "__init__.py").exists())
    assert folders and not missing, f"folders without __init__.py: {missing}"


def test_plugin_test_modules_have_distinct_names():
    modules = list(ROOT.glob("plugins/*/tests/*.py"))
    assert modules, "no plugin tests found: the glob is wrong, and this test would pass vacuously"
    assert not [p for p in modules if p.name == "__init__.py"], "plugin test folders import by bare module name"
    twice = sorted(name for name, n in Counter(p.stem for p in modules).items() if n > 1)
    assert not twice, f"plugin test modules sharing a name (pytest would import one for the other): {twice}"


def test_module_docstrings_say_what_is_tested_not_which_issue():
    named = []
    for path in [*TESTS.rglob("test_*.py"), *ROOT.glob("plugins/*/tests/test_*.py")]:
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if doc.lower().startswith("issue"):
            named.append(str(path.relative_to(ROOT)))
    assert not named, f"module docstrings that start with an issue number instead of what they test: {named}"
