"""``remove``: a group's tokens leave a stream."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from vtsched.core.errors import ScheduleError
from vtsched.core.events.base import DrawState, Event, Layout, TokenCounts

if TYPE_CHECKING:  # pragma: no cover
    from vtsched.core.engine.run import PrefillRun

__all__ = ["RemoveGroup"]


@dataclass(frozen=True, slots=True)
class RemoveGroup(Event):
    """Drop ``group``'s tokens from ``stream`` before ``layer``."""

    kind: ClassVar[str] = "remove"
    layer: int
    stream: str
    group: str

    def describe(self) -> str:
        return f"remove {self.group} from {self.stream}"

    def check(self, layout: Layout) -> None:
        carried = layout.carried(self.stream)
        if layout.group(self.group) not in carried:
            raise ScheduleError(f"{self.stream} does not carry {self.group}")
        carried.remove(self.group)

    def count(self, tokens: TokenCounts) -> None:
        tokens.visual[self.stream].pop(self.group, None)

    def apply(self, run: PrefillRun, at: int) -> None:
        rows, bound = run.streams[self.stream], run.bound
        group = run.partition.group_id(self.group)
        run.streams[self.stream] = rows.keep(bound.lookup(bound.groups, rows.index) != group)

    @classmethod
    def draws(cls, state: DrawState):
        from hypothesis import strategies as st

        carried = [(s, g) for s, gs in state.layout.alive.items() for g in gs]
        return st.sampled_from(carried).map(lambda sg: cls(state.layer, *sg)) if carried else None
