"""Hook specifications: how policies, partitioners, fusion rules, adapters, commands and evaluators reach vtsched.

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

    Called once per registry, when :func:`~vtsched.core.registry.build_registry` runs (every
    ``vtsched`` command, every :class:`~vtsched.core.scheduler.Scheduler`). Call
    ``register(policy_cls)`` once per policy. ``policy_cls`` must be a frozen dataclass
    subclassing :class:`~vtsched.core.policy.Policy` with a class attribute ``name`` (and
    optionally ``aliases``), dataclass fields for its parameters (``-p NAME=VALUE`` fills them,
    converted to each field's type) and
    ``schedule(self, geometry: ModelGeometry, groups: tuple[str, ...], budget: Budget | None) -> Schedule``.
    A calibrated policy subclasses :class:`~vtsched.core.policy.CalibratedPolicy` and implements
    ``calibration_request(self) -> Calibration`` instead. A class that does not meet this contract
    is refused with a :class:`~vtsched.core.errors.PluginError` naming the plugin
    (:mod:`vtsched.core.contracts`). The return value is ignored.
    """


@hookspec
def vtsched_register_partitioners(register: Register) -> None:
    """Register partitioners.

    Called once per registry, like every hook here. Call ``register(partitioner_cls)`` for each;
    the class is a frozen dataclass subclassing :class:`~vtsched.core.policy.Partitioner` with a
    ``name`` and ``partition(self, batch: PromptBatch, budget: Budget) -> Partition``, whose
    group 0 (the subject) holds exactly ``budget.resolve(n)`` of a sample's ``n`` visual tokens.
    Contract violations are refused naming the plugin. The return value is ignored.
    """


@hookspec
def vtsched_register_fusion_rules(register: Register) -> None:
    """Register fusion rules for ``fuse`` events.

    Called once per registry. Call ``register(rule_cls)``; the class has ``name``, a boolean
    ``needs_attention_mass`` and ``weights(self, inputs: FusionInputs) -> Tensor`` returning
    ``(streams, batch, tokens)`` weights that are finite and sum to one over streams (the engine
    checks both; see :mod:`vtsched.core.fusion`). It is built with the fuse event's params as
    keyword arguments. The return value is ignored.
    """


@hookspec
def vtsched_register_adapters(register: Register) -> None:
    """Register model adapters.

    Called once per registry. Call ``register(adapter_cls)``; the class is a concrete subclass of
    :class:`~vtsched.core.adapters.base.ModelAdapter` with ``name`` and ``model_type`` (the
    transformers config ``model_type`` it reads). Adapters are asked in name order
    whether they ``accepts(model)``. The return value is ignored.
    """


@hookspec
def vtsched_register_commands(register: Register) -> None:
    """Register ``vtsched`` subcommands.

    Called once per registry; the command line builds its registry before parsing arguments, so a
    plugin's commands appear in ``vtsched --help``. Call ``register(command_cls)``; the class
    subclasses :class:`~vtsched.core.commands.Command` with ``name``, ``help``,
    ``add_arguments(parser)`` and ``run(args) -> int``. A name a built-in command already uses is
    refused naming the plugin. The return value is ignored.
    """


@hookspec
def vtsched_register_evaluators(register: Register) -> None:
    """Register evaluators: kinds of dataset ``vtsched eval`` hands to a plugin.

    Called once per registry. Call ``register(evaluator_cls)``; the class subclasses
    :class:`~vtsched.core.evaluators.Evaluator` with ``name`` (``vtsched eval --data NAME:SPEC``
    picks it; not a prefix core reads itself, ``synthetic`` or ``hf``, and without ``:``),
    ``help``, optionally ``accepts(data) -> bool`` (claims a dataset by its layout) and
    ``evaluate(request: EvalRequest) -> EvalOutcome``. Contract violations are refused naming the
    plugin. The return value is ignored.
    """


@hookspec
def vtsched_register_events(register: Register) -> None:
    """Register schedule event kinds: what the engine can do at a layer boundary.

    Called once per registry. Call ``register(event_cls)``; the class is a frozen, slotted dataclass
    subclassing :class:`~vtsched.core.events.Event`, with a ``kind`` (its name in schedule files and
    ``vtsched list``), ``layer: int`` as its first field, and its own ``describe()``, ``check(layout)``
    and ``apply(run, at)`` (optionally ``count``, ``probes``, ``per_sample``, ``draws`` and the JSON
    methods; see :mod:`vtsched.core.events.base`). Built-in events (``remove``, ``insert``,
    ``keep_top``, ``fuse``, ``end``, ``carry``) register through this hook too. A class that breaks
    the contract, or a kind another plugin registered, is refused naming the plugin. The return value
    is ignored.
    """


@hookspec
def vtsched_register_rankers(register: Register) -> None:
    """Register rankers: how a ``keep_top`` event scores the visual tokens it keeps.

    Called once per registry. Call ``register(ranker_cls)``; the class subclasses
    :class:`~vtsched.core.events.rankers.Ranker`, is built without arguments, and has a ``name`` (what
    a ``keep_top`` event's ``ranker`` names) and ``scores(event, run, at) -> (index, scores)``: two ``(rows, T)``
    tensors, the positions of the stream's tokens and their scores (higher is kept first); optionally
    ``unavailable(layer, num_layers)`` and ``probes(event, run, segment, at)`` (attention to read in
    earlier layers). The built-in ``last_token_attention`` and ``next_layer_attention`` register
    through this hook too. Scores that are not finite or of the wrong shape are refused when the event
    runs, naming the ranker; a schedule naming an unregistered ranker is refused before the model runs.
    The return value is ignored.
    """
