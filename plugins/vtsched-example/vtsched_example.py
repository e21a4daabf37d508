"""prune-at: every visual token until layer K, then only the subject group.

A static-partition cousin of FastV (which re-ranks by attention at K): the partition comes from
the partitioner before the LLM, the drop happens inside it. This file is the finished plugin of
docs/tutorial-write-a-policy.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from vtsched.core import RemoveGroup, Schedule, Stream, hookimpl
from vtsched.core.policy import DEFAULT_GROUPS, Policy


@dataclass(frozen=True)
class PruneAt(Policy):
    """All visual tokens for layers < K, then only the subject group."""

    name: ClassVar[str] = "prune-at"
    drop_layer: int = 2

    def schedule(self, geometry, groups: tuple[str, ...] = DEFAULT_GROUPS, budget=None) -> Schedule:
        self.check_layer("drop_layer", self.drop_layer, geometry)
        events = tuple(RemoveGroup(self.drop_layer, "main", g) for g in groups[1:])
        return Schedule(geometry.num_layers, groups, (Stream("main", groups),), "main", events)


@hookimpl
def vtsched_register_policies(register):
    register(PruneAt)
