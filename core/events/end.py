"""``end``: a stream stops; its states and memory are released."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from vtsched.core.errors import ScheduleError
from vtsched.core.events.base import DrawState, Event, Layout, TokenCounts

if TYPE_CHECKING:  # pragma: no cover
    from vtsched.core.engine.run import PrefillRun

__all__ = ["EndStream"]


@dataclass(frozen=True, slots=True)
class EndStream(Event):
    """Stop ``stream`` before ``layer``: its states and memory are released."""

    kind: ClassVar[str] = "end"
    layer: int
    stream: str

    def describe(self) -> str:
        return f"end {self.stream}"

    def check(self, layout: Layout) -> None:
        layout.carried(self.stream)
        if self.stream == layout.survivor:
            raise ScheduleError("the surviving stream cannot end")
        del layout.alive[self.stream]

    def count(self, tokens: TokenCounts) -> None:
        tokens.visual.pop(self.stream, None)
        tokens.copies.pop(self.stream, None)

    def apply(self, run: PrefillRun, at: int) -> None:
        del run.streams[self.stream]  # releases its states

    @classmethod
    def draws(cls, state: DrawState):
        from hypothesis import strategies as st

        enders = [s for s in state.layout.alive if s != state.layout.survivor]
        return st.sampled_from(enders).map(lambda s: cls(state.layer, s)) if enders else None
