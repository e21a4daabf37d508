"""Models and what is known about them: the registry, a model's config and planner (no weights), a
loaded scheduler.

Without ``model`` every function here means the shipped demo model where it is installed, else the
random ``demo`` shape (said plainly when it loads): what ``vtsched run`` answers with by default.
"""

from __future__ import annotations

import sys
from typing import Any

from vtsched.core.io import read_config
from vtsched.core.planner import Planner
from vtsched.core.registry import Registry
from vtsched.core.scheduler import Scheduler

__all__ = ["config_and_source", "load_scheduler", "model_config", "planner_for_config", "planner_for_model",
           "registry"]


def registry(no_plugins: bool = False) -> Registry:
    """The component registry: the built-ins, and the installed plugins unless ``no_plugins``."""
    from vtsched.core import registry as components  # looked up per call: tests hand in their own manager

    return components.build_registry(components.make_plugin_manager(load_entrypoints=False if no_plugins else None))


def model_config(model: str | None) -> Any:
    """The config of ``model``, else of the shipped demo model (else the random demo shape): no weights."""
    from vtsched.core.demo import demo_model_path, llava_config

    path = model or demo_model_path()
    return llava_config("demo") if path is None else read_config(str(path))


def config_and_source(model: str | None, shape: str) -> tuple[Any, str]:
    """The config of ``model`` if given, else of the named random shape; and what to call it.

    ``demo`` names the shipped demo model where it is installed (what ``run`` answers with when no
    model is given), so a schedule saved from it runs there; the random ``demo`` shape otherwise.
    """
    from vtsched.core.demo import demo_model_path, llava_config

    if model:
        return read_config(model), model
    shipped = demo_model_path() if shape == "demo" else None
    if shipped is not None:
        return read_config(str(shipped)), "the shipped demo model"
    return llava_config(shape), f"shape {shape}"


def planner_for_config(config: Any, registry: Registry) -> Planner:
    """A planner for a model of this config (its adapter's geometry and score partitioner)."""
    adapter = registry.adapter_for_config(config)
    return Planner(registry, adapter.geometry_from_config(config), adapter.default_partitioner)


def planner_for_model(model: str | None, registry: Registry) -> Planner:
    """A planner for ``model`` (else the shipped demo model) from its config alone: no weights load."""
    return planner_for_config(model_config(model), registry)


def load_scheduler(model: str | None, registry: Registry, device: str = "cpu", **kwargs: Any) -> Scheduler:
    """The checkpoint asked for; else the shipped demo model; else a random one (said plainly)."""
    from vtsched.core.demo import demo_model_path

    if model is None:
        shipped = demo_model_path()
        if shipped is None:
            print("note: no --model given and no demo model installed; using a LLaVA with random weights: "
                  "its answers are meaningless.", file=sys.stderr)
            return Scheduler.random("demo", device=device, registry=registry, **kwargs)
        model = str(shipped)
    return Scheduler.from_pretrained(str(model), device=device, registry=registry, **kwargs)
