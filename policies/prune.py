"""``prune``: keep the subject group from layer 0 on and drop the rest before the LLM.

With the ``cls`` partitioner this is the FasterVLM / VisionZip-dominant baseline: the top-R
visual tokens by the vision tower's [CLS] attention, nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from vtsched.core.geometry import ModelGeometry
from vtsched.core.budget import Budget
from vtsched.core.policy import DEFAULT_GROUPS, Policy
from vtsched.core.schedule import Schedule, Stream


@dataclass(frozen=True)
class Prune(Policy):
    """Keep only the subject group (the budget's R tokens) in every layer."""

    name: ClassVar[str] = "prune"
    budget_counts: ClassVar[str] = "input"

    def schedule(
        self, geometry: ModelGeometry, groups: tuple[str, ...] = DEFAULT_GROUPS, budget: Budget | None = None
    ) -> Schedule:
        return Schedule(geometry.num_layers, groups, (Stream("main", groups[:1]),), survivor="main")
