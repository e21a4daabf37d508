"""The example plugin as a third party tests it: installed, vtsched finds ``prune-at`` through the
``vtsched`` entry point (and not without autoloading), the policy passes vtsched's conformance kit,
and the console script lists it.

Skipped without the plugin (the README's test command installs it: -e plugins/vtsched-example).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

example = pytest.importorskip("vtsched_example", reason="the example plugin is not installed")

from vtsched.core.registry import build_registry, make_plugin_manager  # noqa: E402
from vtsched.core.testing import PolicyConformance  # noqa: E402
from vtsched_example import PruneAt  # noqa: E402


def test_installed_example_plugin_is_found_through_its_entry_point():
    registry = build_registry(make_plugin_manager(load_entrypoints=True))
    component = registry.components["policy"]["prune-at"]
    assert component.obj is PruneAt and component.plugin == "example"
    assert "vtsched_register_policies" in registry.plugins["example"]
    assert "prune-at" not in build_registry(make_plugin_manager(load_entrypoints=False)).components["policy"]


def test_autoload_disabled_by_environment_leaves_it_out(monkeypatch):
    monkeypatch.setenv("VTSCHED_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "prune-at" not in build_registry(make_plugin_manager()).components["policy"]
    monkeypatch.delenv("VTSCHED_DISABLE_PLUGIN_AUTOLOAD")
    assert "prune-at" in build_registry(make_plugin_manager()).components["policy"]


def test_the_console_script_lists_it_with_its_plugin():
    exe = Path(sys.executable).parent / "vtsched"
    if not exe.is_file():
        pytest.skip("the vtsched console script is not installed beside this Python")
    listed = subprocess.run([str(exe), "list"], capture_output=True, text=True, check=True, timeout=120).stdout
    line = next(line for line in listed.splitlines() if line.strip().startswith("prune-at "))
    assert line.rstrip().endswith("[example]")


class TestPruneAtConformance(PolicyConformance):
    """vtsched's policy kit on the plugin's policy, as any plugin author runs it."""

    policy_class = PruneAt
    policy_params = {"drop_layer": 1}
