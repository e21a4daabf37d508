"""``insert``: a group's tokens join a stream, entering with their layer-0 embeddings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from vtsched.core.errors import ScheduleError
from vtsched.core.events.base import DrawState, Event, Layout, TokenCounts

if TYPE_CHECKING:  # pragma: no cover
    from vtsched.core.engine.run import PrefillRun

__all__ = ["InsertGroup"]


@dataclass(frozen=True, slots=True)
class InsertGroup(Event):
    """Add ``group``'s tokens to ``stream`` before ``layer``, entering with their layer-0 embeddings.

    Only the image's own tokens enter: tokens another stream's ``recycle`` merged into the group have
    no layer-0 embedding (and the dry run counts the group's size).
    """

    kind: ClassVar[str] = "insert"
    layer: int
    stream: str
    group: str

    def describe(self) -> str:
        return f"insert {self.group} into {self.stream} (layer-0 embeddings)"

    def check(self, layout: Layout) -> None:
        carried = layout.carried(self.stream)
        if layout.group(self.group) in carried:
            raise ScheduleError(f"{self.stream} already carries {self.group}")
        carried.append(self.group)

    def count(self, tokens: TokenCounts) -> None:
        tokens.visual[self.stream][self.group] = tokens.group_sizes.get(self.group, 0)

    def apply(self, run: PrefillRun, at: int) -> None:
        from vtsched.core.engine.binding import gather

        member = (run.bound.groups == run.partition.group_id(self.group)) & run.bound.given()  # not merged tokens
        run.streams[self.stream] = run.streams[self.stream].merge(gather(run.bound, member))

    @classmethod
    def draws(cls, state: DrawState):
        from hypothesis import strategies as st

        layout = state.layout
        missing = [(s, g) for s, gs in layout.alive.items() for g in layout.groups if g not in gs]
        return st.sampled_from(missing).map(lambda sg: cls(state.layer, *sg)) if missing else None
