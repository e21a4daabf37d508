"""Comparing methods at equal cost (``--match avg-tokens|flops|input-tokens``).

"64 tokens" is a different cost under each policy (``Policy.budget_counts``), so a table that runs
every method at budget 64 compares unequal things. With ``--match``, the budget a case is given is a
*target*, and each policy's own integer budget is solved so that its row meets it:

- ``avg-tokens``: the average visual tokens per layer over every stream (the field's "equivalent
  tokens", ``visual_tokens_per_layer``) equals the target budget resolved to tokens (``64``);
- ``input-tokens``: the visual tokens entering the LLM (``visual_tokens_input``) equal it (methods
  that send every token in, ``fastv`` or ``parvts``, cannot meet a target below the image's tokens);
- ``flops``: the prefill FLOPs (the field's accounting plus the partitioner's selection) equal those
  of ``prune`` keeping the target budget's tokens on the same sample (``prune`` with its default
  partitioner, which adds no scoring FLOPs).

The solve uses the nominal cost of a schedule (:func:`vtsched.core.cost.nominal_run`: token counts
walked through the events, no weights), per sample (its own visual token count and text lengths),
by bisection over the integer budget (:func:`solve_budget`); the executed statistics then report
what each row achieved beside its target (``match_target``, ``match_achieved``). In-LLM probes and
ranker projections are not in the nominal FLOPs (they are known once the engine ran), so under
``flops`` a ranker's scoring shows as the gap between target and achieved.

A policy a budget does not change (``full``, ``vtw``) is not solved; its row still reports the target
and what it achieved. A target no budget of a policy can meet is refused in one line naming the
policy, the target and the nearest value it can achieve.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from vtsched.core.budget import Budget
from vtsched.core.cost import NominalRun, nominal_group_sizes, nominal_run
from vtsched.core.errors import InputError, VtschedError
from vtsched.core.policy import CalibratedPolicy, Partitioner, Policy
from vtsched.core.tokens import PromptBatch, Role, Sample

__all__ = ["MATCH_KINDS", "MatchError", "solve_budget", "closest_budget", "SampleText", "sample_text", "Matcher",
           "achieved", "split_by_budget"]

#: What ``--match`` can hold equal, and the results column each reads.
MATCH_KINDS: dict[str, str] = {
    "avg-tokens": "visual_tokens_per_layer",
    "flops": "prefill_gflops",
    "input-tokens": "visual_tokens_input",
}

#: Relative slack when deciding whether a target lies outside what a policy can achieve (rounding only).
_SLACK = 1e-9


class MatchError(InputError):
    """A target no budget of a policy can meet (one line, exit status 2)."""


def solve_budget(cost: Callable[[int], float], target: float, low: int, high: int) -> int:
    """The budget in ``low..high`` whose ``cost`` is closest to ``target``, by bisection.

    ``cost`` must not decrease as the budget grows (more tokens never cost less). Tie rule: among
    budgets equally close to the target, the one with the lower cost (a row never costs more than
    the target when a cheaper one is as close), and among budgets of equal cost the smallest. Calls
    ``cost`` O(log(high - low)) times.
    """
    if low > high:
        raise ValueError(f"empty budget range {low}..{high}")

    def first_reaching(value: float) -> int:
        """The smallest budget whose cost is at least ``value`` (``high`` if none)."""
        lo, hi = low, high
        while lo < hi:
            mid = (lo + hi) // 2
            if cost(mid) >= value:
                hi = mid
            else:
                lo = mid + 1
        return lo

    above = first_reaching(target)
    upper = cost(above)
    if upper < target or above == low:  # every budget is below the target, or the first already reaches it
        return first_reaching(upper)
    lower = cost(above - 1)
    best = lower if target - lower <= upper - target else upper
    return first_reaching(best)


def closest_budget(costs: Sequence[float], target: float, low: int = 0) -> int:
    """The brute-force answer :func:`solve_budget` must give: ``costs[i]`` is budget ``low + i``'s cost;
    closest to ``target``, then the lower cost, then the smallest budget."""
    return low + min(range(len(costs)), key=lambda i: (abs(costs[i] - target), costs[i], i))


@dataclass(frozen=True)
class SampleText:
    """One sample's sizes for the nominal cost: visual tokens and text tokens before and after the image."""

    num_visual: int
    prefix: int
    suffix: int


def sample_text(sample: Sample) -> SampleText:
    """The sizes of a prepared sample (text before the first visual token, the rest after)."""
    visual = (sample.roles == Role.VISUAL).nonzero().flatten()
    first = int(visual[0]) if visual.numel() else sample.length
    return SampleText(sample.num_visual, first, sample.length - first - sample.num_visual)


class Matcher:
    """Solves one policy's budget per sample so its row meets a target (see the module docstring).

    ``planner``: the model's planner (geometry and registry); ``kind``: a key of :data:`MATCH_KINDS`.
    """

    def __init__(self, planner: Any, kind: str) -> None:
        if kind not in MATCH_KINDS:
            raise InputError(f"--match {kind!r}: expected one of {', '.join(MATCH_KINDS)}")
        self.planner, self.kind = planner, kind
        self._prune = planner.policy("prune")

    def nominal(self, policy: Policy, partitioner: Partitioner | None, budget: int | None, text: SampleText) -> NominalRun:
        """The nominal cost of ``policy`` at an integer ``budget`` (``None``: none) on a sample of ``text``'s sizes."""
        geometry = dataclasses.replace(self.planner.geometry, num_visual=text.num_visual)
        seen = Budget(count=budget) if budget is not None and policy.uses_budget else None
        if partitioner is None and policy.needs_partition:  # the one the planner would use
            partitioner = self.planner.partitioner(self.planner.default_partitioner(policy))
        groups = self.planner.groups(policy, partitioner)
        schedule = policy.schedule(geometry, groups, seen)
        keep = budget if policy.needs_partition else None
        run = nominal_run(schedule, geometry, nominal_group_sizes(groups, keep, text.num_visual),
                          prefix=text.prefix, suffix=text.suffix)
        if policy.needs_partition and partitioner is not None and budget is not None:
            return dataclasses.replace(run, selection_flops=float(partitioner.selection_flops(
                text.num_visual, budget, geometry)))
        return run

    def measure(self, run: NominalRun) -> float:
        """The value ``kind`` holds equal, in the unit of its results column (GFLOPs for ``flops``)."""
        if self.kind == "avg-tokens":
            return run.visual_tokens_per_layer
        if self.kind == "input-tokens":
            return run.visual_tokens_input
        return run.flops / 1e9

    def target(self, budget: Budget, text: SampleText) -> float:
        """What the target ``budget`` means on a sample: tokens, or ``prune``'s GFLOPs at that many tokens."""
        tokens = budget.resolve(text.num_visual)
        if self.kind != "flops":
            return float(tokens)
        partitioner = self.planner.partitioner(self.planner.default_partitioner(self._prune))
        return self.measure(self.nominal(self._prune, partitioner, tokens, text))

    def solve(self, policy: Policy, partitioner: Partitioner | None, budget: Budget, text: SampleText,
              label: str) -> int | None:
        """The integer budget of ``policy`` meeting ``budget``'s target on a sample (``None`` for a policy a
        budget does not change); a target outside what any budget achieves is a :class:`MatchError`."""
        if isinstance(policy, CalibratedPolicy) or getattr(policy, "groups", None) is not None:
            raise InputError(f"--match: {label} chooses its schedule from data or a file; it has no budget to solve")
        if not policy.uses_budget:
            return None
        high = text.num_visual
        target = self.target(budget, text)
        cache: dict[int, float | None] = {}

        def attempt(b: int) -> float | None:
            """The cost at ``b``, or ``None`` where the policy refuses the budget (``pdrop`` below its floor)."""
            if b not in cache:
                try:
                    cache[b] = self.measure(self.nominal(policy, partitioner, b, text))
                except VtschedError:
                    cache[b] = None
            return cache[b]

        def cost(b: int) -> float:
            value = attempt(b)
            assert value is not None, b
            return value

        low = _first_accepted(attempt, 1, high)
        if low is None:
            raise MatchError(f"--match {self.kind}: {label} refuses every budget from 1 to {high}")

        slack = _SLACK * max(1.0, abs(target))
        for edge in (low, high):
            if (edge == low and target < cost(low) - slack) or (edge == high and target > cost(high) + slack):
                raise MatchError(f"--match {self.kind}: {label} cannot meet the target {target:.4g} of budget "
                                 f"{budget}; the nearest it achieves is {cost(edge):.4g} (its budget {edge})")
        return solve_budget(cost, target, low, high)

    def solve_batch(self, policy: Policy, partitioner: Partitioner | None, budget: Budget, batch: PromptBatch,
                    label: str) -> tuple[list[int | None], list[float]]:
        """Per sample: the solved budget and the target."""
        texts = [sample_text(s) for s in batch.samples]
        return ([self.solve(policy, partitioner, budget, t, label) for t in texts],
                [self.target(budget, t) for t in texts])


def _first_accepted(attempt: Callable[[int], float | None], low: int, high: int) -> int | None:
    """The smallest budget a policy accepts (a policy that accepts a budget accepts every larger one:
    a floor like ``pdrop``'s), by bisection; ``None`` if it accepts none up to ``high``."""
    if attempt(high) is None:
        return None
    while low < high:
        mid = (low + high) // 2
        if attempt(mid) is not None:
            high = mid
        else:
            low = mid + 1
    return low


def achieved(kind: str, row: dict[str, float]) -> float:
    """What a results row achieved of what ``kind`` matches (its column, :data:`MATCH_KINDS`)."""
    return float(row[MATCH_KINDS[kind]])


def split_by_budget(budgets: Sequence[int | None]) -> list[tuple[list[int], int | None]]:
    """Sample indices grouped by their solved budget, in order of first appearance: each group plans as one
    batch (the planner takes one budget per batch)."""
    groups: dict[int | None, list[int]] = {}
    for i, b in enumerate(budgets):
        groups.setdefault(b, []).append(i)
    return [(idx, b) for b, idx in groups.items()]
