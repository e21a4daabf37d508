"""``full``: no scheduling; every visual token through every layer (the reference)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from vtsched.core.geometry import ModelGeometry
from vtsched.core.budget import Budget
from vtsched.core.policy import DEFAULT_GROUPS, Policy
from vtsched.core.schedule import Schedule, Stream


@dataclass(frozen=True)
class Full(Policy):
    """Run the unmodified model: one stream carrying every group from layer 0."""

    name: ClassVar[str] = "full"
    budget_counts: ClassVar[str] = "none"
    needs_partition: ClassVar[bool] = False
    uses_budget: ClassVar[bool] = False

    def schedule(
        self, geometry: ModelGeometry, groups: tuple[str, ...] = DEFAULT_GROUPS, budget: Budget | None = None
    ) -> Schedule:
        return Schedule(geometry.num_layers, groups, (Stream("main", groups),), survivor="main")
