"""The docs never rot: tutorials run, examples register, the site builds strictly, every hook is documented."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from vtsched.core import hookspecs
from vtsched.core.registry import build_registry, make_plugin_manager

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
EXECUTED = sorted(p for p in DOCS.glob("*.md") if p.name.startswith(("tutorial", "quickstart")))
EXAMPLE_PLUGIN = ROOT / "plugins" / "vtsched-example" / "vtsched_example.py"
HOOKS = sorted(name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("vtsched_"))

# ```python, optionally with attributes (```python title="path/to/file.py"), up to the closing fence
_BLOCK = re.compile(r"^```python([^\n]*)\n(.*?)^```", flags=re.S | re.M)


def python_blocks(path: Path) -> list[str]:
    return [code for _, code in _BLOCK.findall(path.read_text())]


def titled_block(path: Path, title: str) -> str:
    found = [code for attrs, code in _BLOCK.findall(path.read_text()) if f'title="{title}"' in attrs]
    assert len(found) == 1, f"{path.name} should have exactly one python block titled {title!r}"
    return found[0]


def run_blocks(path: Path, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """Execute every python block of ``path``, in order, in one fresh module; return the module."""
    blocks = python_blocks(path)
    assert blocks, f"{path.name} has no python blocks"
    module = types.ModuleType(f"vtsched_docs_{path.stem.replace('-', '_')}")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # dataclasses look their module up
    for i, block in enumerate(blocks):
        exec(compile(block, f"{path.name}[block {i}]", "exec"), module.__dict__)
    return module


@pytest.mark.parametrize("path", EXECUTED, ids=lambda p: p.name)
def test_tutorial_runs(path, monkeypatch):
    run_blocks(path, monkeypatch)


def test_new_tutorials_are_executed():
    names = {p.name for p in EXECUTED}
    assert {"quickstart.md", "tutorial-write-a-policy.md", "tutorial-write-a-partitioner.md",
            "tutorial-write-a-fusion-rule.md"} <= names


def test_policy_tutorial_finishes_with_the_example_plugin():
    """The tutorial's finished plugin and plugins/vtsched-example/vtsched_example.py are the same code."""
    title = "plugins/vtsched-example/vtsched_example.py"
    assert titled_block(DOCS / "tutorial-write-a-policy.md", title) == EXAMPLE_PLUGIN.read_text(), (
        f"the finished plugin in docs/tutorial-write-a-policy.md differs from {title}; make them equal"
    )


def test_every_hook_is_documented_on_the_hooks_page():
    """Each hook of vtsched.core.hookspecs has a datasette-style section on the site's hooks page."""
    assert HOOKS, "no vtsched_ hooks found in vtsched.core.hookspecs"
    text = (DOCS / "plugins.md").read_text()
    sections = dict(re.findall(r"^### (vtsched_\w+)\(register\)\n(.*?)(?=^#{1,3} |\Z)", text, flags=re.S | re.M))
    for name in HOOKS:
        assert name in sections, f"{name} has no '### {name}(register)' section in docs/plugins.md"
        section = sections[name]
        for part in ("When", "Arguments", "Return", "Example", "Used by"):
            assert f"**{part}" in section, f"the section of {name} in docs/plugins.md lacks '**{part}...'"
        assert "```python" in section, f"the section of {name} in docs/plugins.md has no python example"
    assert not set(sections) - set(HOOKS), f"docs/plugins.md documents hooks that do not exist: {set(sections) - set(HOOKS)}"


def test_hook_examples_register(monkeypatch):
    """The examples on the hooks page, run as one plugin module, register through every hook."""
    module = run_blocks(DOCS / "plugins.md", monkeypatch)
    registry = build_registry(make_plugin_manager(load_entrypoints=False, extra=[module]))
    assert sorted(registry.plugins[module.__name__]) == HOOKS
    provided = {kind: [c.name for c in registry.entries(kind) if c.plugin == module.__name__] for kind in registry.components}
    assert all(provided.values()), f"every example registers something: {provided}"


def test_site_builds_strictly(tmp_path):
    """`mkdocs build --strict` (API reference from the docstrings included) passes, offline."""
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, (
        f"mkdocs build --strict failed (the dev extras install mkdocs: pip install -e '.[dev]'):\n"
        f"{done.stdout}\n{done.stderr}"
    )
    assert (tmp_path / "index.html").exists()
    assert (tmp_path / "api" / "engine" / "index.html").exists()


@pytest.mark.parametrize(("tutorial", "module"), [("tutorial-write-a-ranker.md", "ranker.py"),
                                                  ("tutorial-write-an-event.md", "event.py")])
def test_ranker_and_event_tutorials_finish_with_the_example_plugin(tutorial, module):
    title = f"plugins/vtsched-example-events/vtsched_example_events/{module}"
    assert titled_block(DOCS / tutorial, title) == (ROOT / title).read_text(), (
        f"the finished file in docs/{tutorial} differs from {title}; make them equal")
