"""Every import points down: the engine owns the interface it calls, the front door (scheduler,
planner, calibration) and the parts below it never reach up into the application layer, tools, the
CLI, the demo or the testing kit, and the built-in policies and partitioners import only core's
vocabulary and services. The application layer (``core/app``) uses the front door and the demo's
model and data, never the tools, the CLI or the testing kit; the tools use the application layer,
never the CLI; the demo uses neither. And no module imports another's private (``_``) name.

The layers (docs/design.md, "Layers"): vocabulary < engine < adapters, shapes, pixels < planner,
calibration, scheduler < demo < app < tools < cli (testing beside tools). Every import of every
module counts, including those inside functions (a lazy import is still an edge) and those only for
type checkers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"vtsched.core": ROOT / "core", "vtsched.policies": ROOT / "policies",
            "vtsched.partitioners": ROOT / "partitioners"}
ABOVE_THE_FRONT_DOOR = ("app", "tools", "cli", "demo", "testing")
VOCABULARY = ("schedule", "partition", "budget", "tokens", "fusion", "geometry", "policy", "errors")

# (modules the rule governs, as prefixes of dotted names) -> what they must not import (prefixes)
RULES: list[tuple[tuple[str, ...], tuple[str, ...]]] = [
    (("vtsched.core.engine",),
     tuple(f"vtsched.core.{p}" for p in ("adapters", "scheduler", "planner", "calibration", "shapes",
                                         *ABOVE_THE_FRONT_DOOR))),
    (tuple(f"vtsched.core.{m}" for m in ("scheduler", "planner", "calibration", "generation", "registry",
                                          "contracts", "adapters", "shapes", "pixels", "events")),
     tuple(f"vtsched.core.{p}" for p in ABOVE_THE_FRONT_DOOR)),
    (tuple(f"vtsched.core.{m}" for m in VOCABULARY),
     tuple(f"vtsched.core.{p}" for p in ("engine", "adapters", "scheduler", "planner", "calibration", "shapes",
                                         "pixels", *ABOVE_THE_FRONT_DOOR))),
    (("vtsched.policies", "vtsched.partitioners"), tuple(f"vtsched.core.{p}" for p in ABOVE_THE_FRONT_DOOR)),
    (("vtsched.core.demo",), tuple(f"vtsched.core.{p}" for p in ("app", "tools", "cli"))),
    (("vtsched.core.app",), tuple(f"vtsched.core.{p}" for p in ("tools", "cli", "testing"))),
    (("vtsched.core.tools",), ("vtsched.core.cli",)),
]


def module_name(package: str, folder: Path, path: Path) -> str:
    parts = list(path.relative_to(folder).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package, *parts])


def imports_of(source: str, name: str, is_package: bool) -> list[tuple[int, str]]:
    """``(line, dotted module)`` of every import in ``source`` (module ``name``), relative ones resolved;
    ``from X import Y`` counts as ``X.Y`` so that importing a submodule by name is seen."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def governed(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations() -> list[str]:
    out = []
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            name = module_name(package, folder, path)
            edges = imports_of(path.read_text(encoding="utf-8"), name, path.name == "__init__.py")
            for subjects, forbidden in RULES:
                if not governed(name, subjects):
                    continue
                out += [f"{path.relative_to(ROOT)}:{line} imports {target}" for line, target in edges
                        if governed(target, forbidden)]
    return out


def test_every_import_points_down():
    found = violations()
    assert not found, "imports that point up a layer:\n" + "\n".join(found)


# Package code whose imports of private names are checked: core, the built-ins, every plugin's package.
PUBLIC_ONLY = [ROOT / "core", ROOT / "policies", ROOT / "partitioners",
               *sorted(p for p in (ROOT / "plugins").glob("*/vtsched_*") if p.is_dir())]
def private_imports() -> set[str]:
    """``"path imports module.name"`` for every ``from X import _name`` (dunders aside) in package code."""
    out = set()
    for folder in PUBLIC_ONLY:
        for path in sorted(folder.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                    out |= {f"{path.relative_to(ROOT)} imports {node.module}.{alias.name}" for alias in node.names
                            if alias.name.startswith("_") and not alias.name.endswith("__")}
    return out


def test_no_module_imports_a_private_name():
    found = private_imports()
    assert not found, "imports of another module's private name:\n" + "\n".join(sorted(found))


@pytest.mark.parametrize(("source", "name", "is_package", "expected"), [
    ("def f():\n    from vtsched.core.demo.shapes import x\n", "vtsched.core.scheduler", False,
     "vtsched.core.demo.shapes.x"),
    ("from ..adapters.base import DecoderParts\n", "vtsched.core.engine.loop", False,
     "vtsched.core.adapters.base.DecoderParts"),
    ("from ..demo import synthetic\n", "vtsched.core.pixels", True, "vtsched.core.demo.synthetic"),
    ("if TYPE_CHECKING:\n    import vtsched.core.tools.search\n", "vtsched.core.planner", False,
     "vtsched.core.tools.search"),
    ("def f():\n    from vtsched.core.cli.common import x\n", "vtsched.core.tools.sweep.run", False,
     "vtsched.core.cli.common.x"),
    ("from ..tools.bench import Case\n", "vtsched.core.app.request", False, "vtsched.core.tools.bench.Case"),
])
def test_the_walk_sees_lazy_relative_and_type_only_imports(source, name, is_package, expected):
    """What the layering test relies on: an upward edge hidden in a function, written relative, or
    imported for type checkers only is still found (so moving one back up fails the test above)."""
    targets = [target for _, target in imports_of(source, name, is_package)]
    assert expected in targets
    rule = next(forbidden for subjects, forbidden in RULES if governed(name, subjects))
    assert governed(expected, rule)
