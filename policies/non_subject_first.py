"""``non-subject-first``: sequential scheduling, non-subject tokens for layers < K, then the subject.

At layer K the non-subject tokens leave and the subject tokens enter with their layer-0
embeddings (the paper's Figure 2a example). ``switch_layer = 0`` is prune to the subject;
``switch_layer = L`` is prune to the non-subject tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from vtsched.core.geometry import ModelGeometry
from vtsched.core.budget import Budget
from vtsched.core.policy import DEFAULT_GROUPS, Policy
from vtsched.core.events import InsertGroup, RemoveGroup
from vtsched.core.schedule import Schedule, Stream


@dataclass(frozen=True)
class NonSubjectFirst(Policy):
    """Non-subject tokens in layers ``< switch_layer``, subject tokens from there on."""

    name: ClassVar[str] = "non-subject-first"
    budget_counts: ClassVar[str] = "input"
    switch_layer: int = 2

    def schedule(
        self, geometry: ModelGeometry, groups: tuple[str, ...] = DEFAULT_GROUPS, budget: Budget | None = None
    ) -> Schedule:
        k = self.check_layer("switch_layer", self.switch_layer, geometry)
        events = (*(RemoveGroup(k, "main", g) for g in groups[1:]), InsertGroup(k, "main", groups[0]))
        return Schedule(geometry.num_layers, groups, (Stream("main", groups[1:]),), "main", events,
                        meta=(("policy", self.describe()),))
