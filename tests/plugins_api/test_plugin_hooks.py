"""Plugins: built-ins and third parties register through the same hooks; failures name the plugin."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import ClassVar

import pytest

from vtsched.core import PluginError, Schedule, Stream, hookimpl
from vtsched.core import hookspecs
from vtsched.core.policy import Policy
from vtsched.core.registry import build_registry, make_plugin_manager

DOCS = Path(__file__).resolve().parents[2] / "docs"


@dataclass(frozen=True)
class Keep0(Policy):
    """Toy policy: the subject stream only."""

    name: ClassVar[str] = "keep0"

    def schedule(self, geometry, groups=("subject", "non_subject"), budget=None):
        return Schedule(geometry.num_layers, groups, (Stream("main", groups[:1]),), "main")


class ToyPlugin:
    __name__ = "toy"

    @hookimpl
    def vtsched_register_policies(self, register):
        register(Keep0)


class ClashingPlugin:
    __name__ = "clash"

    @hookimpl
    def vtsched_register_policies(self, register):
        @dataclass(frozen=True)
        class Full2(Keep0):
            name: ClassVar[str] = "full"

        register(Full2)


def test_inline_plugin_registers_a_policy_with_its_name():
    registry = build_registry(make_plugin_manager(load_entrypoints=False, extra=[ToyPlugin()]))
    assert registry.policy("keep0") is Keep0
    assert registry.components["policy"]["keep0"].plugin == "toy"
    assert registry.components["policy"]["full"].plugin == "vtsched.policies"  # built-ins go through hooks too


def test_duplicate_name_names_both_plugins():
    with pytest.raises(PluginError, match=r"policy 'full' is provided by both 'vtsched.policies' and 'clash'"):
        build_registry(make_plugin_manager(load_entrypoints=False, extra=[ClashingPlugin()]))


def test_plugin_that_fails_to_import_is_named(monkeypatch):
    broken = metadata.EntryPoint(name="broken", value="vtsched_no_such_module_xyz", group="vtsched")
    monkeypatch.setattr(metadata, "entry_points", lambda group=None: [broken] if group == "vtsched" else [])
    with pytest.raises(PluginError, match=r"plugin 'broken' \(distribution .*\) failed to import: ModuleNotFoundError"):
        make_plugin_manager(load_entrypoints=True)


def test_plugin_whose_hook_raises_is_named():
    class Raising:
        __name__ = "raising"

        @hookimpl
        def vtsched_register_partitioners(self, register):
            raise RuntimeError("boom")

    with pytest.raises(PluginError, match="plugin 'raising' failed in vtsched_register_partitioners: RuntimeError"):
        build_registry(make_plugin_manager(load_entrypoints=False, extra=[Raising()]))


def test_unknown_component_lists_the_known_ones():
    registry = build_registry(make_plugin_manager(load_entrypoints=False))
    known = "dart, fastv, framefusion, full, non-subject-first, parvts"
    with pytest.raises(PluginError, match=f"unknown policy 'nope'; known: {known}"):
        registry.policy("nope")


TOY = ToyPlugin()  # what a distribution's entry point names: a module or an object with hooks


def _installed(monkeypatch, value: str) -> None:
    """Pretend one distribution is installed, its ``vtsched`` entry point ``toy-dist = VALUE`` (the
    real ones are tested in each plugin's own tests, e.g. plugins/vtsched-example/tests)."""
    entry = metadata.EntryPoint(name="toy-dist", value=value, group="vtsched")
    monkeypatch.setattr(metadata, "entry_points", lambda group=None: [entry] if group == "vtsched" else [])


def test_an_installed_plugin_is_found_through_its_entry_point(monkeypatch):
    _installed(monkeypatch, f"{__name__}:TOY")
    registry = build_registry(make_plugin_manager(load_entrypoints=True))
    assert registry.components["policy"]["keep0"].plugin == "toy-dist"
    assert "vtsched_register_policies" in registry.plugins["toy-dist"]
    assert "keep0" not in build_registry(make_plugin_manager(load_entrypoints=False)).components["policy"]


def test_autoload_can_be_disabled_by_environment(monkeypatch):
    _installed(monkeypatch, f"{__name__}:TOY")
    monkeypatch.setenv("VTSCHED_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "keep0" not in build_registry(make_plugin_manager()).components["policy"]
    monkeypatch.delenv("VTSCHED_DISABLE_PLUGIN_AUTOLOAD")
    assert "keep0" in build_registry(make_plugin_manager()).components["policy"]  # autoloading finds it


def test_every_hook_is_documented():
    """Each hookspec has a docstring and a section in docs/plugins.md headed by its signature."""
    text = (DOCS / "plugins.md").read_text()
    hooks = [name for name, obj in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("vtsched_")]
    assert len(hooks) == 8
    for name in hooks:
        assert getattr(hookspecs, name).__doc__, name
        assert f"### {name}(register)" in text, f"{name} is not documented in docs/plugins.md"


def _registry_with(plugin):
    return build_registry(make_plugin_manager(load_entrypoints=False, extra=[plugin]))


def _plugin(hook_name, component, *, marked=True):
    """A throwaway plugin object named 'bad' that registers ``component`` through ``hook_name``."""
    def hook(register):
        register(component)

    hook.__name__ = hook_name
    return type("Bad", (), {"__name__": "bad", hook_name: staticmethod(hookimpl(hook) if marked else hook)})()


def test_misspelt_hook_is_refused_with_the_real_name():
    plugin = _plugin("vtsched_register_policy", Keep0)  # singular: pluggy would keep it pending forever
    with pytest.raises(PluginError, match=r"plugin 'bad' implements vtsched_register_policy, which is not a "
                                          r"vtsched hook; did you mean vtsched_register_policies\?"):
        make_plugin_manager(load_entrypoints=False, extra=[plugin])


def test_hook_without_hookimpl_marker_is_refused():
    plugin = _plugin("vtsched_register_policies", Keep0, marked=False)
    with pytest.raises(PluginError, match=r"plugin 'bad' defines vtsched_register_policies without @hookimpl"):
        make_plugin_manager(load_entrypoints=False, extra=[plugin])


@dataclass(frozen=True)
class NoBudget(Policy):
    """Breaks the contract: schedule() cannot receive the budget."""

    name: ClassVar[str] = "no-budget"

    def schedule(self, geometry, groups=("subject", "non_subject")):
        return Schedule(geometry.num_layers, groups, (Stream("main", groups[:1]),), "main")


class NameOnly:
    """A 'policy' with only a name (accepted before registration checked contracts)."""

    name = "name-only"


@dataclass
class Mutable(Policy):
    """Not frozen: a policy must be a hashable value."""

    name: ClassVar[str] = "mutable"

    def schedule(self, geometry, groups=("subject", "non_subject"), budget=None):
        return Schedule(geometry.num_layers, groups, (Stream("main", groups[:1]),), "main")


@pytest.mark.parametrize(
    ("hook", "component", "message"),
    [
        ("vtsched_register_policies", NoBudget, r"policy 'no-budget', which cannot run: schedule\(\) must accept "
                                                r"\(geometry, groups, budget\); it lacks budget"),
        ("vtsched_register_policies", NameOnly, "policy 'name-only', which cannot run: is not a class subclassing"),
        ("vtsched_register_policies", Mutable, "policy 'mutable', which cannot run: is not frozen"),
        ("vtsched_register_partitioners", Keep0, "partitioner 'keep0', which cannot run: is not a class subclassing"),
        ("vtsched_register_fusion_rules", NameOnly, "fusion rule 'name-only', which cannot run: has no boolean"),
        ("vtsched_register_adapters", NameOnly, "adapter 'name-only', which cannot run: is not a class subclassing"),
    ],
)
def test_components_that_break_their_kind_contract_are_refused_naming_the_plugin(hook, component, message):
    with pytest.raises(PluginError, match=r"^plugin 'bad' registered " + message) as info:
        _registry_with(_plugin(hook, component))
    assert "\n" not in str(info.value)


def test_every_built_in_component_meets_its_contract():
    from vtsched.core.contracts import PROBLEMS_OF_KIND

    registry = build_registry(make_plugin_manager(load_entrypoints=False))
    for kind, check in PROBLEMS_OF_KIND.items():
        for component in registry.entries(kind):
            assert check(component.obj) == [], (kind, component.name)


def test_keep_top_with_a_ranker_the_registry_does_not_know_is_refused():
    """Rankers are a registry kind: a schedule may name a plugin's; the registry refuses an unknown one."""
    from vtsched.core import KeepTop, ScheduleError

    event = KeepTop(2, "main", "subject", 3, ranker="by_magic")
    Schedule(4, ("subject",), (Stream("main", ("subject",)),), "main", (event,))  # a plugin's ranker, maybe
    with pytest.raises(ScheduleError, match="unknown ranker 'by_magic'; known: dart_duplication, last_token_attention"):
        event.check_components(build_registry(make_plugin_manager(load_entrypoints=False)))
    with pytest.raises(ScheduleError, match="ranker must be a ranker's name"):
        Schedule(4, ("subject",), (Stream("main", ("subject",)),), "main", (KeepTop(2, "main", "subject", 3, ""),))


def test_a_plugin_policy_whose_schedule_uses_an_unknown_ranker_is_refused_naming_the_plugin():
    from vtsched.core import KeepTop, ScheduleError
    from vtsched.core.demo import llava_config
    from vtsched.core.planner import Planner

    @dataclass(frozen=True)
    class Magic(Policy):
        name: ClassVar[str] = "magic"
        needs_partition: ClassVar[bool] = False
        uses_budget: ClassVar[bool] = False

        def schedule(self, geometry, groups=("subject",), budget=None):
            return Schedule(geometry.num_layers, groups, (Stream("main", groups),), "main",
                            (KeepTop(1, "main", groups[0], 3, ranker="by_magic"),))

    registry = _registry_with(_plugin("vtsched_register_policies", Magic))
    config = llava_config("tiny")
    planner = Planner(registry, registry.adapter_for_config(config).geometry_from_config(config))
    with pytest.raises(ScheduleError, match=r"unknown ranker 'by_magic'.*\(policy 'magic' from plugin 'bad'\)"):
        planner.check(planner.policy("magic"), None)


def test_a_plugin_command_runs_from_the_command_line(monkeypatch, capsys):
    from vtsched.core import VtschedError
    from vtsched.core import registry as registry_module
    from vtsched.core.cli import main
    from vtsched.core.commands import Command

    class Greet(Command):
        name = "greet"
        help = "say hello"

        @classmethod
        def add_arguments(cls, parser):
            parser.add_argument("--who", default="world")

        @classmethod
        def run(cls, args):
            if args.who == "nobody":
                raise VtschedError("nobody to greet")
            print(f"hello {args.who}")
            return 0

    real = registry_module.make_plugin_manager
    monkeypatch.setattr(registry_module, "make_plugin_manager",
                        lambda load_entrypoints=None, extra=(): real(load_entrypoints, [*extra, _plugin(
                            "vtsched_register_commands", Greet)]))
    assert main(["greet", "--who", "you"]) == 0
    assert capsys.readouterr().out == "hello you\n"
    assert main(["greet", "--who", "nobody"]) == 2
    assert capsys.readouterr().err.strip() == "vtsched: error: nobody to greet"
    assert main(["list"]) == 0
    assert "greet" in capsys.readouterr().out

    class Clash(Greet):
        name = "run"

    monkeypatch.setattr(registry_module, "make_plugin_manager",
                        lambda load_entrypoints=None, extra=(): real(load_entrypoints, [*extra, _plugin(
                            "vtsched_register_commands", Clash)]))
    assert main(["run", "--help"]) == 2
    assert "plugin 'bad' registered command 'run', which is a built-in" in capsys.readouterr().err
