"""vtsched.core: the engine and its vocabulary. It knows no policy or partitioner by name."""

from __future__ import annotations

from importlib import metadata

from .budget import Budget
from .engine import DecodeState, Engine, Prefill
from .errors import BudgetError, InputError, PluginError, ScheduleError, VtschedError
from .fusion import FusionInputs, FusionRule
from .generation import GenerationConfig, generate
from .hookspecs import hookimpl
from .partition import NON_SUBJECT, SUBJECT, Partition
from .policy import Partitioner, Policy
from .registry import Registry, build_registry, make_plugin_manager
from .schedule import EndStream, Fuse, InsertGroup, KeepTop, RemoveGroup, Schedule, Stream
from .scheduler import Plan, RunResult, Scheduler
from .tokens import PromptBatch, Role, Sample

try:
    __version__ = metadata.version("vtsched")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "Budget", "Engine", "Prefill", "DecodeState", "VtschedError", "ScheduleError", "BudgetError", "PluginError",
    "InputError", "FusionInputs", "FusionRule", "GenerationConfig", "generate", "hookimpl", "Partition", "SUBJECT",
    "NON_SUBJECT", "Policy", "Partitioner", "Registry", "build_registry", "make_plugin_manager", "Schedule", "Stream",
    "Fuse", "InsertGroup", "RemoveGroup", "KeepTop", "EndStream", "Scheduler", "Plan", "RunResult", "PromptBatch",
    "Role", "Sample", "__version__",
]
