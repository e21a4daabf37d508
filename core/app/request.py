"""The request: what a user asks to run, read from their words once, at the edge that received them.

Every edge (the CLI, a sweep cell, the lmms-eval plugin's model arguments, the LISA plugin's
commands, a Python script) builds one :class:`Request` from what the user wrote: the model, the
policy and its parameters, the partitioner and its parameters, and the budget, parsed here into a
:class:`~vtsched.core.budget.Budget` (:func:`parse_budget`, the one place the words become one).
What the budget counts is the policy's to declare (``Policy.budget_counts``); nothing below the
edge reads a budget's text again.

:func:`check_request` then builds the request's components against a model's planner, before any
weights load: ``-p`` parameters routed to the policy or its partitioner (:func:`route_params`), and
the budget a run uses when none was given (:func:`budget_for`: a saved schedule's own, else
:data:`DEFAULT_BUDGET`), decided here and nowhere else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vtsched.core.budget import Budget
from vtsched.core.planner import RequestCheck
from vtsched.core.policy import Partitioner, Policy

__all__ = ["DEFAULT_BUDGET", "CheckedRequest", "Request", "budget_for", "check_request", "parse_budget",
           "parse_budgets", "route_params"]

DEFAULT_BUDGET = "0.111"  # 64 of LLaVA-1.5's 576 tokens: 88.9% pruned


def parse_budget(text: str | float | Budget | None) -> Budget | None:
    """The user's budget words (``"64"``, ``"0.111"``, ``"11.1%"``) as a :class:`Budget`; ``None`` or ``""``:
    none given. The one place the request's budget is read."""
    if text is None or text == "":
        return None
    return Budget.parse(text)


def parse_budgets(words: Sequence[str | float | Budget]) -> list[Budget]:
    """A list of budget words (``--budgets 7 11%``), each read once; an empty or bad one refused in one line."""
    return [Budget.parse(word) for word in words]


def _pairs(params: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    return tuple(dict(params or {}).items())


@dataclass(frozen=True)
class Request:
    """What to run: model, policy and its parameters, partitioner and its parameters, budget.

    ``policy`` is a registry name or ``"schedule:PATH"`` (a saved schedule run exactly);
    ``partitioner`` ``None`` means the policy's own (the model family's score partitioner for
    ``cls``); ``budget`` ``None`` means none given (:func:`budget_for` says which one runs);
    ``model`` ``None`` the shipped demo model. Build one with :meth:`from_words`.
    """

    policy: str = "full"
    params: tuple[tuple[str, Any], ...] = ()
    partitioner: str | None = None
    partitioner_params: tuple[tuple[str, Any], ...] = ()
    budget: Budget | None = None
    model: str | None = None

    @classmethod
    def from_words(cls, policy: str = "full", *, params: Mapping[str, Any] | None = None,
                   partitioner: str | None = None, partitioner_params: Mapping[str, Any] | None = None,
                   budget: str | float | Budget | None = None, model: str | None = None) -> Request:
        """The request a user's words make, the budget parsed (a bad one refused in one line)."""
        return cls(policy, _pairs(params), partitioner or None, _pairs(partitioner_params), parse_budget(budget),
                   model)

    def with_budget(self, budget: Budget | None) -> Request:
        return dataclasses.replace(self, budget=budget)


def budget_for(policy: Policy, budget: Budget | None, default: str | Budget | None = DEFAULT_BUDGET) -> Budget | None:
    """The budget a request runs at: the one given, else a saved schedule's own (the budget its file
    records), else ``default`` (``None``: no budget, the planner refuses a policy that needs one)."""
    if budget is not None:
        return budget
    saved = getattr(policy, "saved_budget", None)
    return parse_budget(saved if saved is not None else default)


def route_params(planner: Any, policy_name: str, partitioner_name: str | None, params: Mapping[str, Any],
                 partitioner_params: Mapping[str, Any]) -> tuple[Policy, dict[str, Any]]:
    """The policy from ``-p`` parameters, and the partitioner's parameters.

    ``-p NAME=VALUE`` goes to the policy when the policy has that parameter; otherwise to the
    partitioner the run uses if it has it (so ``--partitioner sam -p checkpoint=PATH`` works); a
    name neither has is refused by the policy's usual one-line error. ``--partitioner-param``
    always goes to the partitioner (use it when both have a parameter of that name).
    """
    if policy_name.startswith("schedule:"):
        policy_fields: set[str] = set()
    else:
        policy_fields = {f.name for f in dataclasses.fields(planner.registry.policy(policy_name))}
    own = {k: v for k, v in params.items() if k.replace("-", "_") in policy_fields}
    rest = {k: v for k, v in params.items() if k not in own}
    policy = planner.policy(policy_name, own)
    name = planner.default_partitioner(policy, partitioner_name)
    routed = dict(partitioner_params)
    if rest:
        fields = ({f.name for f in dataclasses.fields(planner.registry.partitioner(name))}
                  if name is not None else set())
        unknown = {k: v for k, v in rest.items() if k.replace("-", "_") not in fields}
        if unknown:
            planner.policy(policy_name, {**own, **unknown})  # raises "<policy> has no parameter ..."
        routed = {**rest, **routed}
    return policy, routed


@dataclass(frozen=True)
class CheckedRequest:
    """A request built and checked against a model's planner (no weights): the policy, the budget it
    runs at, the partitioner it uses (name and routed parameters) and the planner's check."""

    request: Request
    policy: Policy
    budget: Budget | None
    partitioner: str | None
    partitioner_params: dict[str, Any]
    check: RequestCheck

    def make_partitioner(self, planner: Any) -> Partitioner | None:
        """The partitioner, built by ``planner`` (a scheduler's ``planner``); ``None`` for a policy without one."""
        if self.partitioner is None or not self.policy.needs_partition:
            return None
        return planner.partitioner(self.partitioner, self.partitioner_params)  # type: ignore[no-any-return]

def check_request(planner: Any, request: Request, *, default_budget: str | None = DEFAULT_BUDGET) -> CheckedRequest:
    """Build ``request``'s policy and partitioner and check them against ``planner``'s geometry: a bad
    name, parameter or budget is refused in one line before any weights load."""
    policy, routed = route_params(planner, request.policy, request.partitioner, dict(request.params),
                                  dict(request.partitioner_params))
    budget = budget_for(policy, request.budget, default_budget)
    check = planner.check(policy, budget, request.partitioner, routed)
    return CheckedRequest(request, policy, budget, check.partitioner, routed, check)
