"""The contract of each kind of component, checked when it registers.

A plugin that registers something the engine cannot run is refused at registration, in one
line naming the plugin, instead of failing later inside a run (or, worse, running something
else silently). These checks read classes only: nothing is built or run. The conformance kit
(:mod:`vtsched.core.testing.conformance`) goes further and runs the component.

Each ``*_problems`` function returns a list of what is wrong (empty when the class conforms).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

__all__ = [
    "policy_problems", "partitioner_problems", "fusion_rule_problems", "adapter_problems", "command_problems",
    "evaluator_problems", "event_problems", "ranker_problems", "PROBLEMS_OF_KIND",
]


def _name_problems(obj: Any) -> list[str]:
    name = getattr(obj, "name", None)
    if not isinstance(name, str) or not name:
        return ["has no 'name' (a non-empty string class attribute)"]
    aliases = getattr(obj, "aliases", ())
    if not isinstance(aliases, tuple) or not all(isinstance(a, str) and a for a in aliases):
        return [f"'aliases' of {name!r} must be a tuple of names"]
    return []


def _method_problems(cls: Any, method: str, params: tuple[str, ...]) -> list[str]:
    """``cls.method`` exists, is concrete, and accepts ``params`` by name (after ``self``)."""
    function = getattr(cls, method, None)
    if not callable(function):
        return [f"has no {method}() method"]
    if getattr(function, "__isabstractmethod__", False):
        return [f"does not implement {method}()"]
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return []
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    names = [n for n in signature.parameters if n not in ("self", "cls")]
    missing = [p for p in params if p not in names and not accepts_any]
    if missing:
        wanted = ", ".join(params)
        return [f"{method}() must accept ({wanted}); it lacks {', '.join(missing)}"]
    return []


def _dataclass_problems(cls: Any, kind: str) -> list[str]:
    if not dataclasses.is_dataclass(cls):
        return [f"is not a dataclass (a {kind}'s fields are its parameters: use @dataclass(frozen=True))"]
    params = getattr(cls, "__dataclass_params__", None)
    if params is not None and not params.frozen:
        return [f"is not frozen (use @dataclass(frozen=True): a {kind} is a value, hashed and compared)"]
    return []


def policy_problems(cls: Any) -> list[str]:
    """A policy: a frozen dataclass subclassing :class:`~vtsched.core.policy.Policy`, with
    ``schedule(geometry, groups, budget)``."""
    from vtsched.core.policy import CalibratedPolicy, Policy

    problems = _name_problems(cls)
    if not (isinstance(cls, type) and issubclass(cls, Policy)):
        return problems + ["is not a class subclassing vtsched.core.policy.Policy"]
    problems += _dataclass_problems(cls, "policy")
    if issubclass(cls, CalibratedPolicy):
        problems += _method_problems(cls, "calibration_request", ())
    else:
        problems += _method_problems(cls, "schedule", ("geometry", "groups", "budget"))
    return problems


def partitioner_problems(cls: Any) -> list[str]:
    """A partitioner: a frozen dataclass subclassing :class:`~vtsched.core.policy.Partitioner`,
    with ``partition(batch, budget)``."""
    from vtsched.core.policy import Partitioner

    problems = _name_problems(cls)
    if not (isinstance(cls, type) and issubclass(cls, Partitioner)):
        return problems + ["is not a class subclassing vtsched.core.policy.Partitioner"]
    return problems + _dataclass_problems(cls, "partitioner") + _method_problems(cls, "partition", ("batch", "budget"))


def fusion_rule_problems(cls: Any) -> list[str]:
    """A fusion rule: a class with ``name``, a boolean ``needs_attention_mass`` and ``weights(inputs)``."""
    problems = _name_problems(cls)
    if not isinstance(cls, type):
        return problems + ["is not a class"]
    if not isinstance(getattr(cls, "needs_attention_mass", None), bool):
        problems.append("has no boolean 'needs_attention_mass' class attribute")
    return problems + _method_problems(cls, "weights", ("inputs",))


def _subclass_problems(cls: Any, base: type, where: str) -> list[str]:
    """A concrete subclass of ``base`` (``where``: its import path, for the message)."""
    if not (isinstance(cls, type) and issubclass(cls, base)):
        return [f"is not a class subclassing {where}"]
    abstract = sorted(getattr(cls, "__abstractmethods__", ()))
    return [f"does not implement {', '.join(abstract)}"] if abstract else []


def adapter_problems(cls: Any) -> list[str]:
    """An adapter: a concrete subclass of :class:`~vtsched.core.adapters.base.ModelAdapter`."""
    from vtsched.core.adapters.base import ModelAdapter

    problems = _name_problems(cls) + _subclass_problems(cls, ModelAdapter, "vtsched.core.adapters.base.ModelAdapter")
    if not (isinstance(cls, type) and issubclass(cls, ModelAdapter)):
        return problems
    if not isinstance(getattr(cls, "model_type", None), str):
        problems.append("has no 'model_type' (the transformers config model_type it reads)")
    return problems


def command_problems(cls: Any) -> list[str]:
    """A command: a concrete subclass of :class:`~vtsched.core.commands.Command`."""
    from vtsched.core.commands import Command

    return _name_problems(cls) + _subclass_problems(cls, Command, "vtsched.core.commands.Command")


def evaluator_problems(cls: Any) -> list[str]:
    """An evaluator: a concrete subclass of :class:`~vtsched.core.evaluators.Evaluator` whose name
    (``--data NAME:SPEC``) holds no ``:`` and is not a prefix ``vtsched eval`` reads itself."""
    from vtsched.core.evaluators import RESERVED_DATA_PREFIXES, Evaluator

    problems = _name_problems(cls) + _subclass_problems(cls, Evaluator, "vtsched.core.evaluators.Evaluator")
    if not (isinstance(cls, type) and issubclass(cls, Evaluator)):
        return problems
    for name in (getattr(cls, "name", ""), *getattr(cls, "aliases", ())):
        if isinstance(name, str) and (":" in name or name in RESERVED_DATA_PREFIXES):
            problems.append(f"name {name!r} cannot prefix --data (no ':', not {' or '.join(RESERVED_DATA_PREFIXES)})")
    return problems


def event_problems(cls: Any) -> list[str]:
    """A schedule event kind: a frozen dataclass subclassing ``Event`` with ``kind``, ``layer`` first,
    and its own ``describe``, ``check`` and ``apply``."""
    from vtsched.core.events import Event

    if not (inspect.isclass(cls) and issubclass(cls, Event)):
        return ["is not a subclass of vtsched.core.events.Event"]
    kind = cls.__dict__.get("kind")
    if not isinstance(kind, str) or not kind:
        return ["has no 'kind' (a non-empty string class attribute)"]
    problems = _dataclass_problems(cls, "event")
    if not problems and [f.name for f in dataclasses.fields(cls)][:1] != ["layer"]:  # type: ignore[arg-type]
        problems.append("must have 'layer: int' as its first field")
    for method, params in (("describe", ()), ("check", ("layout",)), ("apply", ("run", "at"))):
        if getattr(cls, method, None) is getattr(Event, method):
            problems.append(f"does not implement {method}()")
        else:
            problems += _method_problems(cls, method, params)
    return problems


def ranker_problems(cls: Any) -> list[str]:
    """A ranker: a subclass of ``Ranker`` with ``name`` and its own ``scores(event, run, at)``."""
    from vtsched.core.events import Ranker

    problems = _name_problems(cls)
    if not (inspect.isclass(cls) and issubclass(cls, Ranker)):
        return problems + ["is not a subclass of vtsched.core.events.Ranker"]
    if cls.scores is Ranker.scores:
        return problems + ["does not implement scores()"]
    return problems + _method_problems(cls, "scores", ("event", "run", "at"))


PROBLEMS_OF_KIND: dict[str, Callable[[Any], list[str]]] = {
    "policy": policy_problems,
    "partitioner": partitioner_problems,
    "fusion_rule": fusion_rule_problems,
    "adapter": adapter_problems,
    "command": command_problems,
    "evaluator": evaluator_problems,
    "event": event_problems,
    "ranker": ranker_problems,
}
