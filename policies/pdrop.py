"""``pdrop``: PyramidDrop (Xing et al., 2024). Visual tokens are dropped in stages inside the LLM.

At each stage layer, the visual tokens still present are ranked by the attention of the last
instruction token (recomputed for that one query row in the layer before) and a fraction
``ratio`` of them is kept. Defaults are the paper's: stages after layers 8/16/24, ratio 0.5,
so 50/25/12.5% of the tokens remain after each stage.

Budget: when one is given, ``ratio`` is solved so that the visual tokens per layer, averaged over
all layers, equal the budget (the "average tokens" convention later papers compare PDrop by). A
budget below what the first stage layer allows (every token before it) is refused with the
smallest reachable value; move the stages earlier with ``-p layers=2/6/12``.
Simplified: PDrop ranks by the last instruction token of the *prompt*; we use the last prompt
token, which in LLaVA's template is the end of "ASSISTANT:"; the lightweight attention
recomputation is ours (the same row PDrop computes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from vtsched.core.geometry import ModelGeometry
from vtsched.core.budget import Budget
from vtsched.core.errors import BudgetError, ScheduleError
from vtsched.core.policy import DEFAULT_GROUPS, Policy
from vtsched.core.schedule import KeepTop, Schedule, Stream


def average_tokens(num_visual: float, layers: tuple[int, ...], ratio: float, depth: int) -> float:
    """Visual tokens per layer averaged over ``depth`` layers for stages at ``layers``."""
    marks = (0, *layers, depth)
    return sum(num_visual * ratio**i * (marks[i + 1] - marks[i]) for i in range(len(marks) - 1)) / depth


@dataclass(frozen=True)
class PDrop(Policy):
    """Multi-stage drops (default after layers 8/16/24, keeping half of the remaining tokens each time)."""

    name: ClassVar[str] = "pdrop"
    needs_partition: ClassVar[bool] = False
    layers: tuple[int, ...] = (8, 16, 24)
    ratio: float = 0.5

    def stage_ratio(self, geometry: ModelGeometry, budget: Budget | None) -> float:
        if budget is None:
            return self.ratio
        target = budget.resolve(geometry.num_visual)
        floor = average_tokens(geometry.num_visual, self.layers, 0.0, geometry.num_layers)
        if target < floor - 1e-9:
            raise BudgetError(
                f"pdrop with stages at layers {'/'.join(map(str, self.layers))} keeps at least {floor:.0f} visual "
                f"tokens per layer on average; budget {budget} is below that: move the stages earlier "
                "(-p layers=2/6/12)"
            )
        lo, hi = 0.0, 1.0
        for _ in range(60):  # average_tokens grows with the ratio: bisect
            mid = (lo + hi) / 2
            if average_tokens(geometry.num_visual, self.layers, mid, geometry.num_layers) < target:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    def schedule(
        self, geometry: ModelGeometry, groups: tuple[str, ...] = DEFAULT_GROUPS, budget: Budget | None = None
    ) -> Schedule:
        if list(self.layers) != sorted(set(self.layers)) or not all(1 <= k <= geometry.num_layers for k in self.layers):
            raise ScheduleError(f"pdrop: stage layers {self.layers} must increase within 1..{geometry.num_layers}")
        ratio = self.stage_ratio(geometry, budget)
        if not 0.0 < ratio <= 1.0:
            raise ScheduleError(f"pdrop: ratio {ratio} outside (0, 1]")
        events = tuple(KeepTop(k, "main", groups[0], float(ratio)) for k in self.layers)
        return Schedule(geometry.num_layers, groups, (Stream("main", groups),), "main", events,
                        meta=(("policy", f"pdrop(layers={'/'.join(map(str, self.layers))}, ratio={ratio:.4g})"),))
