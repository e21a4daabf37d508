"""``carry``: copies of other streams' text-token states join a stream as extra tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

from vtsched.core.errors import ScheduleError
from vtsched.core.events.base import FUSED_TOKENS, DrawState, Event, Layout, TokenCounts

if TYPE_CHECKING:  # pragma: no cover
    from vtsched.core.engine.run import PrefillRun

__all__ = ["Carry"]


@dataclass(frozen=True, slots=True)
class Carry(Event):
    """Copy the text-token states of ``streams`` into ``into`` as extra tokens, instead of averaging them.

    ``tokens`` chooses which text tokens travel (as for :class:`~vtsched.core.events.fuse.Fuse`). Each
    copy keeps its token's rotary position id and sits in the causal order just before ``into``'s own
    copy of that token (copies of several streams in the order listed), so from this layer on every
    later token of ``into`` attends to both views. The copies run through the remaining layers like
    any other token and live in the decode cache (the engine's :mod:`~vtsched.core.engine.copies`).
    Typically the sources end at the same layer (an ``end`` event after this one).
    """

    kind: ClassVar[str] = "carry"
    layer: int
    streams: tuple[str, ...]
    into: str
    tokens: Literal["question", "post_image", "last"] = "post_image"

    def describe(self) -> str:
        return f"carry {self.tokens} tokens of {', '.join(self.streams)} -> {self.into} (as extra tokens)"

    def check(self, layout: Layout) -> None:
        for name in (*self.streams, self.into):
            layout.carried(name)
        if not self.streams or len(set(self.streams)) != len(self.streams):
            raise ScheduleError("carry needs one or more distinct source streams")
        if self.into in self.streams:
            raise ScheduleError(f"a stream cannot carry its own tokens ({self.into!r})")
        if self.tokens not in FUSED_TOKENS:
            raise ScheduleError(f"tokens must be one of {FUSED_TOKENS}")

    def count(self, tokens: TokenCounts) -> None:
        copies = sum(tokens.text[self.tokens] for _ in self.streams)
        tokens.copies[self.into] = tokens.copies.get(self.into, 0) + copies

    def apply(self, run: PrefillRun, at: int) -> None:
        from vtsched.core.engine.copies import copy_text_tokens

        copy_text_tokens(run, self.layer, self.streams, self.into, self.tokens)

    @classmethod
    def draws(cls, state: DrawState):
        from hypothesis import strategies as st

        alive = list(state.layout.alive)
        if len(alive) < 2:
            return None

        @st.composite
        def carry(draw):
            into = draw(st.sampled_from(alive))
            others = [s for s in alive if s != into]
            sources = tuple(draw(st.lists(st.sampled_from(others), min_size=1, max_size=len(others), unique=True)))
            return cls(state.layer, sources, into, draw(st.sampled_from(FUSED_TOKENS)))

        return carry()
