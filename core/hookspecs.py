"""Hook specifications: how policies, partitioners, fusion rules and adapters reach vtsched.

Every hook receives a ``register`` callable owned by the host, so the host can refuse a
duplicate name and say which two plugins claimed it. Built-in components register through
these same hooks. Third-party plugins expose a module under the ``vtsched`` entry-point group.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

__all__ = ["hookspec", "hookimpl", "PROJECT"]

PROJECT = "vtsched"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[..., None]


@hookspec
def vtsched_register_policies(register: Register) -> None:
    """Register scheduling policies.

    Called once, when the registry is built. Call ``register(policy_cls)`` for each policy, where
    ``policy_cls`` is a frozen dataclass with a class attribute ``name`` (and optional
    ``aliases``) whose fields are the policy's parameters and whose ``schedule(geometry, groups)``
    returns a :class:`~vtsched.core.schedule.Schedule`. The return value is ignored.
    """


@hookspec
def vtsched_register_partitioners(register: Register) -> None:
    """Register partitioners.

    Called once, when the registry is built. Call ``register(partitioner_cls)`` for each; the
    class has a ``name`` and ``partition(batch, budget, groups)`` returning a
    :class:`~vtsched.core.partition.Partition`. The return value is ignored.
    """


@hookspec
def vtsched_register_fusion_rules(register: Register) -> None:
    """Register fusion rules for ``Fuse`` events.

    Called once, when the registry is built. Call ``register(rule_cls)``; the class has ``name``,
    ``needs_attention_mass`` and ``weights(inputs)`` (see :mod:`vtsched.core.fusion`), and is
    built with the Fuse event's params as keyword arguments. The return value is ignored.
    """


@hookspec
def vtsched_register_adapters(register: Register) -> None:
    """Register model adapters.

    Called once, when the registry is built. Call ``register(adapter_cls)``; the class subclasses
    :class:`~vtsched.core.adapters.base.ModelAdapter`. Adapters are asked in registration order
    whether they ``accepts(model)``. The return value is ignored.
    """
