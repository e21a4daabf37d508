"""Every built-in component of every registry kind has a conformance subclass in core's suite.

A component added without one would otherwise pass CI untested by its kit. The test imports every
module of core's ``tests/`` and collects the subclasses of each kit, then compares the classes they
name (``policy_class``, ``partitioner_class``, ...) with what core's built-in plugin modules register.
Commands and evaluators have no kit: they are tested through the CLI.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from vtsched.core.registry import BUILTIN_PLUGINS, build_registry, make_plugin_manager
from vtsched.core.testing import (
    AdapterConformance, EventConformance, FusionRuleConformance, PartitionerConformance, PolicyConformance,
    RankerConformance,
)

# kind -> (kit, the attribute a subclass names its component by)
KITS = {
    "policy": (PolicyConformance, "policy_class"),
    "partitioner": (PartitionerConformance, "partitioner_class"),
    "fusion_rule": (FusionRuleConformance, "fusion_rule_class"),
    "adapter": (AdapterConformance, "adapter_class"),
    "event": (EventConformance, "event_class"),
    "ranker": (RankerConformance, "ranker_class"),
}


def _all_subclasses(cls: type) -> set[type]:
    found: set[type] = set()
    for sub in cls.__subclasses__():
        found |= {sub} | _all_subclasses(sub)
    return found


@pytest.fixture(scope="module")
def tested() -> dict[str, set[type]]:
    suite = Path(__file__).resolve().parents[1]  # tests/, every concern's folder below it
    for path in sorted(suite.rglob("test_*.py")):
        importlib.import_module(".".join(("tests", *path.relative_to(suite).with_suffix("").parts)))
    out: dict[str, set[type]] = {}
    for kind, (kit, attribute) in KITS.items():
        named = {getattr(sub, attribute, None) for sub in _all_subclasses(kit) if sub.__name__.startswith("Test")}
        if kind == "event":  # a ranker's kit runs keep_top events: it tests the ranker, not the event
            named = {getattr(sub, attribute, None) for sub in _all_subclasses(kit)
                     if sub.__name__.startswith("Test") and not issubclass(sub, RankerConformance)}
        out[kind] = {c for c in named if c is not None}
    return out


def _builtins(kind: str) -> dict[str, type]:
    registry = build_registry(make_plugin_manager(load_entrypoints=False))
    return {name: registry.get(kind, name) for name in registry.names(kind)
            if registry.plugin_of(kind, name) in BUILTIN_PLUGINS}


@pytest.mark.parametrize("kind", list(KITS))
def test_every_builtin_of_every_kind_has_a_conformance_subclass(kind, tested):
    builtins = _builtins(kind)
    assert builtins, f"no built-in {kind} found: the registry lookup is wrong, and this test would pass vacuously"
    missing = sorted(name for name, cls in builtins.items() if cls not in tested[kind])
    assert not missing, f"built-in {kind}s without a {KITS[kind][0].__name__} subclass in tests/: {missing}"
