"""dampen: scale the states of a group's tokens in a stream, from one layer on.

An ablation the built-in events cannot express: not removing a group, but turning its voice down
(``factor`` 0 silences the states it passes on, 1 changes nothing). This file is the finished event
of docs/tutorial-write-an-event.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from vtsched.core.errors import ScheduleError
from vtsched.core.events import Event, Layout


@dataclass(frozen=True, slots=True)
class Dampen(Event):
    """Scale the states of ``group``'s tokens in ``stream`` by ``factor`` before ``layer``."""

    kind: ClassVar[str] = "dampen"
    layer: int
    stream: str
    group: str
    factor: float = 0.5

    def describe(self) -> str:
        return f"dampen {self.group} in {self.stream} by {self.factor:g}"

    def check(self, layout: Layout) -> None:
        if layout.group(self.group) not in layout.carried(self.stream):
            raise ScheduleError(f"{self.stream} does not carry {self.group}")
        if not 0.0 <= self.factor <= 1.0:
            raise ScheduleError(f"factor {self.factor} outside [0, 1]")

    def apply(self, run, at: int) -> None:
        from vtsched.core.engine.rows import Rows

        rows, bound = run.streams[self.stream], run.bound
        member = bound.lookup(bound.groups, rows.index) == run.partition.group_id(self.group)
        scale = torch.where(member, self.factor, 1.0).to(rows.hidden.dtype)
        run.streams[self.stream] = Rows(rows.hidden * scale[..., None], rows.index)

    @classmethod
    def draws(cls, state):
        from hypothesis import strategies as st

        carried = [(s, g) for s, gs in state.layout.alive.items() for g in gs]
        if not carried:
            return None
        return st.builds(lambda sg, f: cls(state.layer, sg[0], sg[1], f), st.sampled_from(carried),
                         st.floats(0.0, 1.0, allow_subnormal=False))
