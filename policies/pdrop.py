"""``pdrop``: PyramidDrop (Xing et al., 2024). Visual tokens are dropped in stages inside the LLM.

At each stage layer, the visual tokens still present are ranked by the attention of the last
instruction token (recomputed for that one query row in the layer before) and a fraction
``ratio`` of them is kept. Defaults follow the paper's placement on a 32-layer model (stages
after layers 8/16/24, ratio 0.5, so 50/25/12.5% of the tokens remain after each stage) scaled
to the model's depth: stages after a quarter, half and three quarters of the layers (1/3/4 on
the 6-layer demo model).

Budget: when one is given, ``ratio`` is solved so that the visual tokens per layer, averaged over
all layers, equal the budget (the "average tokens" convention later papers compare PDrop by),
for each image's own token count (the planner schedules per sample: LLaVA-NeXT and Qwen images
of different sizes get different ratios from one count budget).
Every token runs through the layers before the first stage, so a budget below that floor cannot
be reached by any ratio: it is refused with the smallest reachable value (move the stages
earlier with ``-p layers=2/6/12`` for 64 of 576 tokens on 32 layers). No stage can come before
layer 1 (ranking reads the attention of the layer before), so no placement averages fewer than
``num_visual / num_layers`` tokens per layer: 10.7 on the 6-layer demo model, where
``--budget 11 -p layers=1`` is the smallest pdrop run.
Simplified: PDrop ranks by the last instruction token of the *prompt*; we use the last prompt
token, which in LLaVA's template is the end of "ASSISTANT:"; the lightweight attention
recomputation is ours (the same row PDrop computes).
"""

from __future__ import annotations

import math
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
    """Multi-stage drops (default after 1/4, 1/2, 3/4 of the layers, keeping half of the remaining tokens each time)."""

    name: ClassVar[str] = "pdrop"
    needs_partition: ClassVar[bool] = False
    budget_required: ClassVar[bool] = False  # without one, each stage keeps ``ratio``
    layers: tuple[int, ...] | None = None  # None: a quarter, half and three quarters of the depth
    ratio: float = 0.5

    def stage_layers(self, geometry: ModelGeometry) -> tuple[int, ...]:
        """The stage layers: the given ones, else a quarter, half and three quarters of the depth."""
        if self.layers is not None:
            return tuple(self.layers)
        depth = geometry.num_layers
        return tuple(sorted({max(1, depth * q // 4) for q in (1, 2, 3)}))

    def stage_ratio(self, geometry: ModelGeometry, budget: Budget | None) -> float:
        if budget is None:
            return self.ratio
        layers = self.stage_layers(geometry)
        target = budget.resolve(geometry.num_visual)
        floor = average_tokens(geometry.num_visual, layers, 0.0, geometry.num_layers)
        if target < floor - 1e-9:
            lowest = geometry.num_visual / geometry.num_layers  # first stage after layer 1
            hint = ("move the stages earlier (-p layers=2/6/12)" if lowest <= target + 1e-9 else
                    f"no stage placement reaches it on {geometry.num_layers} layers: use a budget of at least "
                    f"{math.ceil(lowest - 1e-9)} with one early stage, -p layers=1")
            raise BudgetError(
                f"pdrop with stages at layers {'/'.join(map(str, layers))} keeps at least {floor:.0f} visual "
                f"tokens per layer on average; budget {budget} is below that: {hint}"
            )
        lo, hi = 0.0, 1.0
        for _ in range(60):  # average_tokens grows with the ratio: bisect
            mid = (lo + hi) / 2
            if average_tokens(geometry.num_visual, layers, mid, geometry.num_layers) < target:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    def schedule(
        self, geometry: ModelGeometry, groups: tuple[str, ...] = DEFAULT_GROUPS, budget: Budget | None = None
    ) -> Schedule:
        layers = self.stage_layers(geometry)
        if list(layers) != sorted(set(layers)) or not all(1 <= k <= geometry.num_layers for k in layers):
            raise ScheduleError(f"pdrop: stage layers {layers} must increase within 1..{geometry.num_layers}")
        ratio = self.stage_ratio(geometry, budget)
        if not 0.0 < ratio <= 1.0:
            raise ScheduleError(f"pdrop: ratio {ratio} outside (0, 1]")
        events = tuple(KeepTop(k, "main", groups[0], float(ratio)) for k in layers)
        return Schedule(geometry.num_layers, groups, (Stream("main", groups),), "main", events,
                        meta=(("policy", f"pdrop(layers={'/'.join(map(str, layers))}, ratio={ratio:.4g})"),))
