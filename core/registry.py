"""The registry: every component by kind and name, and the plugin that provided it.

Use :func:`make_plugin_manager` (no module-global singleton) and :func:`build_registry`.
Autoloading of installed plugins can be switched off with ``load_entrypoints=False``, the
CLI's ``--no-plugins`` or ``VTSCHED_DISABLE_PLUGIN_AUTOLOAD=1``, for reproducible runs.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from vtsched.core import hookspecs
from vtsched.core.contracts import PROBLEMS_OF_KIND
from vtsched.core.errors import InputError, PluginError

__all__ = ["Registry", "Component", "make_plugin_manager", "build_registry", "BUILTIN_PLUGINS", "KINDS"]

ENTRY_POINT_GROUP = "vtsched"
BUILTIN_PLUGINS = (
    "vtsched.core.adapters",
    "vtsched.core.events",
    "vtsched.policies",
    "vtsched.partitioners",
    # the procedural data set: its masks answer ``masks=synthetic:...`` wherever a registry is built
    "vtsched.core.demo.synthetic",
    "vtsched.core.tools.video_eval",  # the procedural video QA set's evaluator: --data video:SEED:CLIPS[:FRAMES]
)
KINDS = ("policy", "partitioner", "fusion_rule", "adapter", "command", "evaluator", "event", "ranker")
_HOOK_OF_KIND = {
    "policy": "vtsched_register_policies",
    "partitioner": "vtsched_register_partitioners",
    "fusion_rule": "vtsched_register_fusion_rules",
    "adapter": "vtsched_register_adapters",
    "command": "vtsched_register_commands",
    "evaluator": "vtsched_register_evaluators",
    "event": "vtsched_register_events",
    "ranker": "vtsched_register_rankers",
}


@dataclass(frozen=True)
class Component:
    kind: str
    name: str
    obj: Any
    plugin: str
    aliases: tuple[str, ...] = ()

    @property
    def summary(self) -> str:
        doc = (getattr(self.obj, "__doc__", None) or "").strip()
        return doc.splitlines()[0] if doc else ""


@dataclass
class Registry:
    components: dict[str, dict[str, Component]] = field(default_factory=lambda: {k: {} for k in KINDS})
    plugins: dict[str, list[str]] = field(default_factory=dict)  # plugin -> hooks it implements

    def add(self, kind: str, obj: Any, plugin: str) -> None:
        name = getattr(obj, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {plugin!r} registered a {kind} without a 'name'")
        problems = PROBLEMS_OF_KIND[kind](obj)
        if problems:
            raise PluginError(f"plugin {plugin!r} registered {kind.replace('_', ' ')} {name!r}, which cannot run: "
                              + "; ".join(problems))
        aliases = tuple(getattr(obj, "aliases", ()))
        table = self.components[kind]
        for key in (name, *aliases):
            if key in table:
                raise PluginError(
                    f"{kind} {key!r} is provided by both {table[key].plugin!r} and {plugin!r}; "
                    "uninstall one or disable autoloading"
                )
        component = Component(kind, name, obj, plugin, aliases)
        for key in (name, *aliases):
            table[key] = component

    def plugin_of(self, kind: str, name: str) -> str | None:
        """The plugin that registered ``name`` (``None`` if nothing did)."""
        component = self.components[kind].get(name)
        return component.plugin if component is not None else None

    def get(self, kind: str, name: str) -> Any:
        try:
            return self.components[kind][name].obj
        except KeyError:
            known = ", ".join(self.names(kind)) or "none"
            raise PluginError(f"unknown {kind.replace('_', ' ')} {name!r}; known: {known}") from None

    def names(self, kind: str) -> list[str]:
        return sorted({c.name for c in self.components[kind].values()})

    def entries(self, kind: str) -> list[Component]:
        seen: dict[str, Component] = {}
        for c in self.components[kind].values():
            seen.setdefault(c.name, c)
        return [seen[n] for n in sorted(seen)]

    def policy(self, name: str) -> Any:
        return self.get("policy", name)

    def partitioner(self, name: str) -> Any:
        return self.get("partitioner", name)

    def fusion_rules(self) -> dict[str, Any]:
        return {k: c.obj for k, c in self.components["fusion_rule"].items()}

    def rankers(self) -> dict[str, Any]:
        """Ranker classes by name: what a ``keep_top`` event may rank by."""
        return {k: c.obj for k, c in self.components["ranker"].items()}

    def event_kinds(self) -> dict[str, Any]:
        """Event classes by kind: what a schedule file may name (``Schedule.from_dict(..., kinds=)``)."""
        return {k: c.obj for k, c in self.components["event"].items()}

    def adapter_for_config(self, config: Any) -> Any:
        for component in self.entries("adapter"):
            if getattr(component.obj, "model_type", None) == config.model_type:
                return component.obj
        known = ", ".join(sorted(getattr(c.obj, "model_type", "?") for c in self.entries("adapter")))
        raise InputError(f"{getattr(config, 'name_or_path', '') or 'this'!r} is a {config.model_type!r} model, "
                         f"which no adapter reads (supported: {known})")

    def adapter_for(self, model: Any) -> Any:
        for component in self.entries("adapter"):
            if component.obj.accepts(model):
                return component.obj
        raise PluginError(
            f"no adapter knows {type(model).__name__}; installed adapters: {', '.join(self.names('adapter'))}"
        )


def autoload_disabled() -> bool:
    return os.environ.get("VTSCHED_DISABLE_PLUGIN_AUTOLOAD", "") not in ("", "0")


def make_plugin_manager(load_entrypoints: bool | None = None, extra: Sequence[Any] = ()) -> pluggy.PluginManager:
    """A fresh plugin manager with the built-ins, installed plugins and ``extra`` plugin objects."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for module_name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
    if load_entrypoints is None:
        load_entrypoints = not autoload_disabled()
    if load_entrypoints:
        _load_entrypoints(pm)
    for plugin in extra:
        pm.register(plugin, name=getattr(plugin, "__name__", None))
    check_hook_names(pm)
    return pm


def check_hook_names(pm: pluggy.PluginManager) -> None:
    """Refuse hook implementations vtsched would silently ignore, naming the plugin.

    Two mistakes look like a working plugin and do nothing: a misspelt hook name (pluggy keeps an
    implementation of an unknown hook pending) and a hook function without ``@hookimpl`` (pluggy
    never sees it). Both are refused here with the closest real hook name.
    """
    specs = sorted(name for name in dir(hookspecs) if name.startswith(f"{hookspecs.PROJECT}_"))
    for plugin_name, plugin in pm.list_name_plugin():
        for attr in dir(plugin):
            if not attr.startswith(f"{hookspecs.PROJECT}_") or not callable(getattr(plugin, attr, None)):
                continue
            function = getattr(plugin, attr)
            if attr not in specs:
                close = difflib.get_close_matches(attr, specs, n=1)
                hint = f"; did you mean {close[0]}?" if close else f"; hooks: {', '.join(specs)}"
                raise PluginError(f"plugin {plugin_name!r} implements {attr}, which is not a vtsched hook{hint}")
            marked = pm.parse_hookimpl_opts(plugin, attr) is not None
            if not marked and (inspect.isfunction(function) or inspect.ismethod(function)):
                raise PluginError(f"plugin {plugin_name!r} defines {attr} without @hookimpl, so vtsched would "
                                  "never call it; decorate it with vtsched.core.hookimpl")
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {getattr(exc, 'plugin_name', '?')!r}: {exc}") from None


def _load_entrypoints(pm: pluggy.PluginManager) -> None:
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        dist = getattr(ep.dist, "name", "?") if ep.dist else "?"
        try:
            plugin = ep.load()
        except Exception as exc:
            raise PluginError(
                f"plugin {ep.name!r} (distribution {dist}) failed to import: {type(exc).__name__}: {exc}"
            ) from exc
        try:
            pm.register(plugin, name=ep.name)
        except ValueError as exc:
            raise PluginError(f"plugin {ep.name!r} (distribution {dist}) cannot be registered: {exc}") from exc


def build_registry(pm: pluggy.PluginManager | None = None) -> Registry:
    """Ask every plugin to register its components; refuse duplicates naming both plugins."""
    pm = pm or make_plugin_manager()
    registry = Registry()
    for plugin_name, plugin in pm.list_name_plugin():
        registry.plugins[plugin_name] = [h.name for h in pm.get_hookcallers(plugin) or []]
    for kind, hook_name in _HOOK_OF_KIND.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            def register(obj: Any, _kind: str = kind, _plugin: str = impl.plugin_name) -> None:
                registry.add(_kind, obj, _plugin)
            try:
                impl.function(register=register)
            except PluginError:
                raise
            except Exception as exc:
                raise PluginError(
                    f"plugin {impl.plugin_name!r} failed in {hook_name}: {type(exc).__name__}: {exc}"
                ) from exc
    return registry
