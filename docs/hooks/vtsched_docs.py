"""Build helpers for the docs site (an mkdocs hook and a griffe extension); not part of the site.

1. Source lookup. The import package ``vtsched`` has no folder of its own: ``vtsched.core`` is
   ``core/``, ``vtsched.policies`` is ``policies/``, ``vtsched.partitioners`` is
   ``partitioners/`` (``package-dir`` in pyproject.toml). Griffe, which reads the sources for
   mkdocstrings, finds a package by its folder name, so before each build this hook lays out a
   temporary ``vtsched/`` folder of symlinks to those three folders and puts it first on the
   python handler's search paths. Nothing is imported; the sources are read as they are.
2. Pages that draw their own figures. ``looking-at-a-schedule.md`` shows figures its python blocks
   draw (into the git-ignored ``docs/images/show/``); before each build this hook runs those blocks
   from the repository root, so the site always shows figures of the code it documents, never a
   stale copy. The tests run the same blocks and check the figures.
3. Sphinx roles. Docstrings cross-reference in reST (``:class:`~vtsched.core.schedule.Schedule```).
   :class:`SphinxRoles` turns each role into an optional cross-reference: a link where the target
   is documented on the site, plain code where it is not, never a broken link.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import griffe
from mkdocs.plugins import event_priority

# import package name -> folder of the repository that holds it (pyproject.toml's package-dir)
PACKAGE_DIRS = {"core": "core", "policies": "policies", "partitioners": "partitioners"}

_trees: list[Path] = []


@event_priority(100)  # before mkdocstrings' on_config, which builds the python handler
def on_config(config: Any) -> Any:
    root = Path(config.config_file_path).resolve().parent
    tree = Path(tempfile.mkdtemp(prefix="vtsched-docs-"))
    (tree / "vtsched").mkdir()
    for name, folder in PACKAGE_DIRS.items():
        (tree / "vtsched" / name).symlink_to(root / folder, target_is_directory=True)
    _trees.append(tree)
    handlers = config.plugins["mkdocstrings"].config.handlers
    python = handlers.setdefault("python", {})
    python["paths"] = [str(tree), *python.get("paths", [])]
    return config


PAGES_THAT_DRAW = ("looking-at-a-schedule.md",)
_BLOCK = re.compile(r"^```python([^\n]*)\n(.*?)^```", flags=re.S | re.M)


def on_pre_build(config: Any) -> None:
    root = Path(config.config_file_path).resolve().parent
    for name in PAGES_THAT_DRAW:
        run_page(root / "docs" / name, root)


def run_page(page: Path, root: Path) -> None:
    """Execute ``page``'s python blocks in order, in one fresh module, from ``root``."""
    module = types.ModuleType(f"vtsched_docs_build_{page.stem.replace('-', '_')}")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    cwd = os.getcwd()
    os.chdir(root)
    try:
        for i, (_, code) in enumerate(_BLOCK.findall(page.read_text())):
            exec(compile(code, f"{page.name}[block {i}]", "exec"), module.__dict__)
    finally:
        os.chdir(cwd)
        sys.modules.pop(module.__name__, None)


def on_post_build(config: Any) -> None:
    while _trees:
        shutil.rmtree(_trees.pop(), ignore_errors=True)


def on_shutdown() -> None:
    on_post_build(None)


_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):`(~?)([\w.]+)(?:\(\))?`")


def _optional_ref(match: re.Match[str]) -> str:
    short, identifier = match.group(1), match.group(2)
    title = identifier.rsplit(".", 1)[-1] if short else identifier
    return f'<autoref identifier="{identifier}" optional><code>{title}</code></autoref>'


class SphinxRoles(griffe.Extension):
    """Rewrite reST cross-reference roles in docstrings as optional autorefs cross-references."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None and ":`" in obj.docstring.value:
            obj.docstring.value = _ROLE.sub(_optional_ref, obj.docstring.value)
