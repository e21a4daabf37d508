"""One planning path: from a policy, a partitioner and a budget to what the engine runs.

The CLI checks a request against a checkpoint's config with :meth:`Planner.check` before any
weights load, and the :class:`~vtsched.core.scheduler.Scheduler` plans every batch with
:meth:`Planner.plan`. Both ask the same questions here, so a request the check accepts is
planned the same way, and a request it refuses is refused with the same line:

- which groups a policy schedules (:meth:`Planner.groups`),
- which budget it sees (:meth:`Planner.budget_seen`: a budget a policy does not use is dropped),
- how the budget resolves per sample (counts larger than an image's tokens are refused),
- which partitioner splits the tokens (the user's, else the policy's default).

Policies and partitioners are built here, by name and parameters, in one way
(:meth:`Planner.policy`, :meth:`Planner.partitioner`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vtsched.core.budget import Budget
from vtsched.core.errors import BudgetError, InputError, ScheduleError, VtschedError
from vtsched.core.geometry import ModelGeometry
from vtsched.core.partition import NON_SUBJECT, SUBJECT, Partition
from vtsched.core.policy import CalibratedPolicy, Partitioner, Policy
from vtsched.core.schedule import Schedule
from vtsched.core.tokens import PromptBatch

__all__ = ["Planner", "Plan", "RequestCheck", "SCHEDULE_PREFIX"]

SCHEDULE_PREFIX = "schedule:"  # "schedule:PATH" names a saved schedule run exactly
SCHEDULE_FILE_POLICY = "schedule-file"


@dataclass(frozen=True)
class Plan:
    """What one batch runs: the policy (after calibration), its partition and its schedule."""

    policy: Policy
    partitioner: Partitioner | None
    budget: Budget | None
    partition: Partition
    schedule: Schedule

    def describe(self) -> str:
        """``policy ..., partitioner ..., budget ...``: what ran, as every summary line starts."""
        parts = [f"policy {dict(self.schedule.meta).get('policy') or self.policy.describe()}"]
        if self.partitioner is not None:
            parts.append(f"partitioner {self.partitioner.name}")
        if self.budget is not None:
            parts.append(f"budget {self.budget}")
        return ", ".join(parts)


@dataclass(frozen=True)
class RequestCheck:
    """A request checked against a model's geometry, before any weights load.

    ``schedule`` is the schedule for the nominal token count (``None`` for a calibrated policy,
    whose schedule depends on data); ``keep`` the subject tokens per image the budget resolves to.
    """

    policy: Policy
    groups: tuple[str, ...]
    budget: Budget | None
    keep: int | None
    partitioner: str | None
    schedule: Schedule | None


class Planner:
    """Builds components by name and plans requests for one model geometry.

    Args:
        registry: the component registry (:func:`~vtsched.core.registry.build_registry`).
        geometry: the model's sizes (from an adapter, or from a config alone).
        family_partitioner: the model family's score partitioner (its adapter's
            ``default_partitioner``): it replaces a policy's default ``cls`` on a family whose
            vision tower has no [CLS] token (``attention`` on Qwen2-VL).
    """

    def __init__(self, registry: Any, geometry: ModelGeometry, family_partitioner: str = "cls") -> None:
        self.registry = registry
        self.geometry = geometry
        self.family_partitioner = family_partitioner

    # -- building components ---------------------------------------------------------------------
    def policy(self, name: str | Policy, params: Mapping[str, Any] | None = None) -> Policy:
        """A policy by registry name, or ``"schedule:PATH"`` for a saved schedule run exactly."""
        if isinstance(name, Policy):
            return name
        if name.startswith(SCHEDULE_PREFIX):
            params = dict(params or {}, path=name[len(SCHEDULE_PREFIX):])
            name = SCHEDULE_FILE_POLICY
        if name == SCHEDULE_FILE_POLICY and params and params.get("path") and params.get("fixed") is None:
            # read here, with the registry's event kinds: a saved schedule may use a plugin's events
            reader = self.registry.policy(name).read
            params = dict(params, fixed=reader(str(params["path"]), self.registry.event_kinds()))
        policy = self.registry.policy(name).from_params(params)
        return policy  # type: ignore[no-any-return]

    def partitioner(self, name: str | Partitioner, params: Mapping[str, Any] | None = None) -> Partitioner:
        if isinstance(name, Partitioner):
            return name
        return self.registry.partitioner(name).from_params(params)  # type: ignore[no-any-return]

    # -- the rules ------------------------------------------------------------------------------
    @staticmethod
    def groups(policy: Policy, partitioner: Partitioner | None = None) -> tuple[str, ...]:
        """The groups a policy schedules: a saved schedule's own, else the partitioner's (subject /
        non-subject by default), or one group for a policy that needs no partition."""
        saved = getattr(policy, "groups", None)
        if isinstance(saved, tuple):
            return saved
        if not policy.needs_partition:
            return (SUBJECT,)
        return partitioner.group_names() if partitioner is not None else (SUBJECT, NON_SUBJECT)

    @staticmethod
    def budget_seen(policy: Policy, budget: Budget | None) -> Budget | None:
        """The budget a policy's ``schedule()`` receives: none for a policy a budget does not change."""
        return budget if policy.uses_budget else None

    def default_partitioner(self, policy: Policy, name: str | None = None) -> str | None:
        """The partitioner a run uses: the one asked for, else the policy's (its ``cls`` read as the
        family's own score partitioner); none without a partition."""
        if not policy.needs_partition:
            return None
        if name:
            return name
        return self.family_partitioner if policy.default_partitioner == "cls" else policy.default_partitioner

    def resolve(self, policy: Policy, budget: Budget | None, num_visual: Sequence[int]) -> list[int] | None:
        """Per-sample subject sizes; refuses a missing budget a policy needs and one larger than an image."""
        if not policy.uses_budget:
            return None
        if budget is None:
            if policy.needs_partition or policy.budget_required:
                raise VtschedError(f"policy {policy.name!r} needs a budget (--budget)")
            return None
        return [budget.resolve(n) for n in num_visual]

    def _schedule(self, policy: Policy, groups: tuple[str, ...], budget: Budget | None,
                  num_visual: int | None = None) -> Schedule:
        """``policy.schedule`` (for images of ``num_visual`` tokens, else the nominal count); an invalid
        schedule from a plugin's policy names the plugin."""
        geometry = self.geometry if num_visual is None else dataclasses.replace(self.geometry, num_visual=num_visual)
        try:
            return self.check_components(policy.schedule(geometry, groups, budget))
        except ScheduleError as exc:
            plugin = self.registry.plugin_of("policy", policy.name) if hasattr(self.registry, "plugin_of") else None
            if plugin is None or plugin.startswith("vtsched."):
                raise
            raise ScheduleError(f"{exc} (policy {policy.name!r} from plugin {plugin!r})") from None

    def check_components(self, schedule: Schedule) -> Schedule:
        """``schedule``, once every component its events name is registered and takes their parameters
        (an unknown fusion rule or ranker, ``alpha`` outside [0, 1]: refused here, before any weights
        load, not when the engine reaches the event). Each event kind says what it names
        (:meth:`~vtsched.core.events.Event.check_components`)."""
        for event in schedule.events:
            event.check_components(self.registry)
        return schedule

    # -- the two entry points -------------------------------------------------------------------
    def check(self, policy: Policy, budget: Budget | None, partitioner: str | None = None,
              partitioner_params: Mapping[str, Any] | None = None) -> RequestCheck:
        """Check a request against the geometry alone (no weights): what the CLI does first.

        The partitioner (the one named, else the policy's default) is built here too, so a bad
        name or parameter is refused before weights load, and its group names shape the schedule.
        """
        keep = self.resolve(policy, budget, [self.geometry.num_visual])
        name = self.default_partitioner(policy, partitioner)
        built = self.partitioner(name, partitioner_params) if name is not None else None
        groups = self.groups(policy, built)
        if built is not None and tuple(built.group_names()) != groups:  # a saved schedule names its own groups
            raise InputError(f"the schedule names groups {list(groups)}, but partitioner {name!r} splits the image "
                             f"into {list(built.group_names())}; use a partitioner that makes those groups "
                             "(--partitioner)")
        if isinstance(policy, CalibratedPolicy):
            request = policy.calibration_request()
            self.policy(request.base, dict(request.params))  # the base must exist and take its params
            schedule = None
        else:
            schedule = self._schedule(policy, groups, self.budget_seen(policy, budget))
        return RequestCheck(policy, groups, self.budget_seen(policy, budget), keep[0] if keep else None,
                            self.default_partitioner(policy, partitioner), schedule)

    def plan(self, batch: PromptBatch, policy: Policy, partitioner: Partitioner | None,
             budget: Budget | None) -> Plan:
        """Partition ``batch`` and schedule it. A calibrated policy must be calibrated first."""
        if isinstance(policy, CalibratedPolicy):
            raise VtschedError(f"policy {policy.name!r} must be calibrated before planning (Scheduler.plan does it)")
        self.resolve(policy, budget, batch.num_visual)
        if policy.needs_partition:
            assert budget is not None  # resolve() refused a missing one
            name = self.default_partitioner(policy)
            partitioner = partitioner or self.partitioner(name or self.family_partitioner)
            partition = partitioner.partition(batch, budget)
        else:
            partitioner = None
            partition = Partition.single(batch.num_visual)
        seen = self.budget_seen(policy, budget)
        schedule = self._batch_schedule(policy, partition.groups, seen, batch.num_visual)
        return Plan(policy, partitioner, seen, partition, schedule)

    def _batch_schedule(self, policy: Policy, groups: tuple[str, ...], budget: Budget | None,
                        num_visual: Sequence[int]) -> Schedule:
        """The schedule of a batch: a policy that applies its budget inside the LLM solves it for each
        sample's own token count (not the nominal one), and so does one that runs without a budget
        (``pdrop`` keeps counts of each image's own tokens). Samples whose counts give different keep
        amounts share one schedule with per-sample amounts (``Event.per_sample``); any other difference is refused."""
        if (budget is None and policy.budget_required) or not policy.uses_budget or policy.needs_partition \
                or not num_visual:
            return self._schedule(policy, groups, budget)
        by_count = {n: self._schedule(policy, groups, budget, n) for n in sorted(set(num_visual))}
        schedules = [by_count[n] for n in num_visual]
        first = schedules[0]
        if all(s == first for s in schedules):
            return first
        counts = ", ".join(map(str, sorted(by_count)))
        refusal = BudgetError(f"{policy.name}: budget {budget} schedules images of {counts} visual tokens "
                              "differently; batch images with equal token counts or give a ratio budget")
        frame = (first.num_layers, first.groups, first.streams, first.survivor, len(first.events))
        if any((s.num_layers, s.groups, s.streams, s.survivor, len(s.events)) != frame for s in schedules):
            raise refusal
        events = []
        for i, event in enumerate(first.events):
            merged = event.per_sample([s.events[i] for s in schedules])  # the event's kind says how
            if merged is None:
                raise refusal
            events.append(merged)
        return dataclasses.replace(first, events=tuple(events))
