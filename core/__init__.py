"""vtsched.core: the vocabulary of vision-token scheduling, and (loaded on first use) its engine.

Importing ``vtsched.core`` loads only the vocabulary a policy or partitioner plugin needs:
schedules, partitions, budgets, prompt tokens, fusion inputs, geometry and the component bases.
The engine, the front door (:class:`Scheduler`), generation and transformers' model code load the
first time one of those names is used (PEP 562), so a plugin's import stays light.
It knows no policy or partitioner by name: those reach it through the registry.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import TYPE_CHECKING, Any

from vtsched.core.budget import Budget
from vtsched.core.errors import BudgetError, InputError, PluginError, ScheduleError, VtschedError
from vtsched.core.fusion import FusionInputs, FusionRule
from vtsched.core.geometry import ModelGeometry
from vtsched.core.hookspecs import hookimpl
from vtsched.core.partition import NON_SUBJECT, SUBJECT, Partition
from vtsched.core.policy import Partitioner, Policy
from vtsched.core.events import Carry, EndStream, Fuse, InsertGroup, KeepTop, RemoveGroup
from vtsched.core.schedule import Schedule, Stream
from vtsched.core.tokens import PromptBatch, Role, Sample

if TYPE_CHECKING:  # pragma: no cover - for type checkers only; loaded lazily at run time
    from vtsched.core.engine import DecodeState, Engine, Prefill
    from vtsched.core.generation import GenerationConfig, generate
    from vtsched.core.registry import Registry, build_registry, make_plugin_manager
    from vtsched.core.scheduler import Plan, RunResult, Scheduler

try:
    __version__ = metadata.version("vtsched")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

# name -> module that defines it; imported on first attribute access
_LAZY = {
    "Engine": "vtsched.core.engine", "Prefill": "vtsched.core.engine", "DecodeState": "vtsched.core.engine",
    "GenerationConfig": "vtsched.core.generation", "generate": "vtsched.core.generation",
    "Registry": "vtsched.core.registry", "build_registry": "vtsched.core.registry",
    "make_plugin_manager": "vtsched.core.registry",
    "Scheduler": "vtsched.core.scheduler", "Plan": "vtsched.core.scheduler", "RunResult": "vtsched.core.scheduler",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vtsched.core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "Budget", "Engine", "Prefill", "DecodeState", "VtschedError", "ScheduleError", "BudgetError", "PluginError",
    "InputError", "FusionInputs", "FusionRule", "GenerationConfig", "generate", "hookimpl", "ModelGeometry",
    "Partition", "SUBJECT", "NON_SUBJECT", "Policy", "Partitioner", "Registry", "build_registry",
    "make_plugin_manager", "Schedule", "Stream", "Fuse", "Carry", "InsertGroup", "RemoveGroup", "KeepTop", "EndStream",
    "Scheduler", "Plan", "RunResult", "PromptBatch", "Role", "Sample", "__version__",
]
