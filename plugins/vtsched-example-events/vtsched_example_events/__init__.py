"""An example plugin that teaches vtsched's engine something core does not know: a ranker
(:mod:`.ranker`, ``key_norm``), an event (:mod:`.event`, ``dampen``) and a policy using both.

``keynorm-prune``: the non-subject group is dampened by ``factor`` from layer 0 (1.0 leaves it as is),
then at ``drop_layer`` every visual token but the budget's highest key norms leaves, as FastV's
schedule does with another ranker. Registered through the ``vtsched`` entry point like any
third party's plugin; core was not edited to add any of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from vtsched.core import KeepTop, Schedule, Stream, hookimpl
from vtsched.core.policy import DEFAULT_GROUPS, Policy

from .event import Dampen
from .ranker import KeyNorm

__all__ = ["Dampen", "KeyNorm", "KeyNormPrune"]


@dataclass(frozen=True)
class KeyNormPrune(Policy):
    """Dampen the non-subject tokens, then keep the budget's visual tokens with the longest keys at layer K."""

    name: ClassVar[str] = "keynorm-prune"
    drop_layer: int = 2
    factor: float = 1.0

    def schedule(self, geometry, groups: tuple[str, ...] = DEFAULT_GROUPS, budget=None) -> Schedule:
        self.check_layer("drop_layer", self.drop_layer, geometry)
        keep = budget.resolve(geometry.num_visual) if budget is not None else geometry.num_visual
        events = [Dampen(0, "main", g, self.factor) for g in groups[1:] if self.factor != 1.0]
        if self.drop_layer < geometry.num_layers:
            events += [KeepTop(self.drop_layer, "main", g, keep if i == 0 else 0, "key_norm")
                       for i, g in enumerate(groups)]
        return Schedule(geometry.num_layers, groups, (Stream("main", groups),), "main", tuple(events))


@hookimpl
def vtsched_register_policies(register):
    register(KeyNormPrune)


@hookimpl
def vtsched_register_rankers(register):
    register(KeyNorm)


@hookimpl
def vtsched_register_events(register):
    register(Dampen)
