"""``subject-first``: sequential scheduling, subject tokens from layer 0, the rest inserted at K.

The inserted tokens enter with their layer-0 embeddings at layer K: the representation
mismatch ParVTS (Figure 2a of the paper) argues against. ``insert_layer = L`` is prune;
``insert_layer = 0`` is full.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from vtsched.core.geometry import ModelGeometry
from vtsched.core.budget import Budget
from vtsched.core.policy import DEFAULT_GROUPS, Policy
from vtsched.core.events import InsertGroup
from vtsched.core.schedule import Schedule, Stream


@dataclass(frozen=True)
class SubjectFirst(Policy):
    """Subject tokens from layer 0; non-subject tokens join at ``insert_layer``."""

    name: ClassVar[str] = "subject-first"
    budget_counts: ClassVar[str] = "input"
    insert_layer: int = 2

    def schedule(
        self, geometry: ModelGeometry, groups: tuple[str, ...] = DEFAULT_GROUPS, budget: Budget | None = None
    ) -> Schedule:
        self.check_layer("insert_layer", self.insert_layer, geometry)
        events = tuple(InsertGroup(self.insert_layer, "main", g) for g in groups[1:])
        return Schedule(geometry.num_layers, groups, (Stream("main", groups[:1]),), "main", events,
                        meta=(("policy", self.describe()),))
