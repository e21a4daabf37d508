"""The schedule's events: one module per kind, each owning everything about it (:mod:`.base`).

The built-in kinds register through ``vtsched_register_events``, the hook a plugin's kinds use, and
the built-in rankers (:mod:`.rankers`, what ``keep_top`` ranks by) through ``vtsched_register_rankers``.
"""

from __future__ import annotations

from vtsched.core.events.base import FUSED_TOKENS, DrawState, Event, Layout, TokenCounts
from vtsched.core.events.carry import Carry
from vtsched.core.events.end import EndStream
from vtsched.core.events.fuse import Fuse
from vtsched.core.events.insert import InsertGroup
from vtsched.core.events.keep_top import KeepTop
from vtsched.core.events.merge_frames import MergeFrames
from vtsched.core.events.rankers import BUILTIN_RANKERS, Ranker
from vtsched.core.events.recycle import Recycle
from vtsched.core.events.remove import RemoveGroup
from vtsched.core.hookspecs import hookimpl

__all__ = [
    "Event", "Layout", "TokenCounts", "DrawState", "FUSED_TOKENS", "BUILTIN_EVENTS",
    "RemoveGroup", "InsertGroup", "Fuse", "KeepTop", "EndStream", "Carry", "Recycle", "MergeFrames", "Ranker",
    "BUILTIN_RANKERS",
]

BUILTIN_EVENTS: tuple[type[Event], ...] = (RemoveGroup, InsertGroup, Fuse, KeepTop, EndStream, Carry, Recycle,
                                          MergeFrames)


@hookimpl
def vtsched_register_events(register):
    for event in BUILTIN_EVENTS:
        register(event)


@hookimpl
def vtsched_register_rankers(register):
    for ranker in BUILTIN_RANKERS.values():
        register(ranker)
