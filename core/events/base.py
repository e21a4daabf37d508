"""What every schedule event is: the base class an event kind subclasses, built-in or a plugin's.

An event happens at a layer boundary (``layer``: it acts on the states entering that layer). Its
class owns everything about its kind, so that adding a kind touches one file:

- its fields (a frozen, slotted dataclass with ``layer`` first) and :meth:`Event.describe`;
- :meth:`Event.check`: its validation and its effect on the nominal layout (which stream carries
  which groups), what :class:`~vtsched.core.schedule.Schedule` walks to validate a timeline and
  what ``explain`` prints;
- :meth:`Event.count`: its effect on token counts, what the dry-run FLOPs estimate
  (``vtsched sweep --dry-run``) adds up without weights;
- :meth:`Event.apply` and :meth:`Event.probes`: its execution on the live streams of a prefill
  (:class:`~vtsched.core.engine.run.PrefillRun`), and the attention it needs read before;
- its JSON form (:meth:`Event.to_json` / :meth:`Event.from_json`: the dataclass fields, lists for
  tuples, by default);
- :meth:`Event.draws`: a hypothesis strategy of events valid in a layout, so
  :func:`vtsched.core.testing.schedules` and every conformance kit draw every registered kind;
- :meth:`Event.per_sample`: how events of one schedule solved per sample merge into one;
- :meth:`Event.check_components`: the components it names (a fusion rule), checked against the
  registry before any weights load.

Kinds are registered through ``vtsched_register_events``; the built-ins go through the same hook.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from vtsched.core.errors import ScheduleError

if TYPE_CHECKING:  # pragma: no cover
    from hypothesis.strategies import SearchStrategy

    from vtsched.core.engine.layout import Segment
    from vtsched.core.engine.probes import Probe
    from vtsched.core.engine.run import PrefillRun

__all__ = ["Event", "Layout", "TokenCounts", "DrawState", "FUSED_TOKENS", "ParamValue"]

FUSED_TOKENS = ("question", "post_image", "last")
"""Kinds of text tokens an event can act on: the question, every text token after the image, the last one."""
ParamValue = int | float | str


@dataclass
class Layout:
    """The nominal layout while a schedule's events are walked: the live streams and their groups.

    ``alive`` maps each running stream to the groups it carries (a ``KeepTop`` keeps the group's
    name: counts are the engine's to report). An event's :meth:`Event.check` reads it and applies its
    effect; it raises :class:`ScheduleError` (without naming itself: the walker adds that).
    """

    num_layers: int
    groups: tuple[str, ...]
    stream_names: tuple[str, ...]
    survivor: str
    alive: dict[str, list[str]]

    def carried(self, stream: str) -> list[str]:
        """The groups ``stream`` carries; refuses a stream that is unknown or has ended."""
        if stream not in self.alive:
            raise ScheduleError(f"{'stream already ended' if stream in self.stream_names else 'no such stream'}: "
                                f"{stream!r}")
        return self.alive[stream]

    def group(self, name: str) -> str:
        if name not in self.groups:
            raise ScheduleError(f"unknown group {name!r}; groups are {list(self.groups)}")
        return name


@dataclass
class TokenCounts:
    """Nominal tokens of one sample while a schedule's events are walked (no weights, no batch).

    ``visual``: per live stream, visual tokens per group; ``copies``: per stream, extra text tokens
    an event added (copies of other streams' text); ``text``: how many text tokens each kind of
    :data:`FUSED_TOKENS` has in the prompt.
    """

    visual: dict[str, dict[str, int]]
    text: Mapping[str, int]
    copies: dict[str, int] = field(default_factory=dict)
    group_sizes: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class DrawState:
    """What :meth:`Event.draws` may draw from: the layout entering ``layer`` and the names in use."""

    layer: int
    layout: Layout
    fusion_rules: tuple[str, ...]
    rankers: Mapping[str, type]  # ranker classes by name


class Event:
    """Base class of every event kind (see the module docstring for what a kind owns).

    Subclasses are frozen, slotted dataclasses whose first field is ``layer: int`` and which set the
    class attribute ``kind`` (the name in JSON and in ``vtsched list``).
    """

    __slots__ = ()
    kind: ClassVar[str]
    name: ClassVar[str]  # the registry's name for the kind: ``kind``
    layer: int

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if isinstance(cls.__dict__.get("kind"), str):
            cls.name = cls.kind

    # -- the vocabulary ---------------------------------------------------------------------------
    def describe(self) -> str:
        """One line for ``explain``: what the event does, without its layer."""
        raise NotImplementedError

    def check(self, layout: Layout) -> None:
        """Validate against the layout entering ``self.layer`` and apply the event's effect to it."""
        raise NotImplementedError

    def count(self, tokens: TokenCounts) -> None:
        """Apply the event's effect to the nominal token counts (default: none)."""

    def check_components(self, registry: Any) -> None:
        """Refuse, before any model loads, a component the event names that ``registry`` lacks or that
        refuses the event's parameters (default: the event names none)."""

    def per_sample(self, each: Sequence[Event]) -> Event | None:
        """One event standing for ``each`` (this event solved per sample), or ``None`` if they differ."""
        return self if all(e == self for e in each) else None

    # -- the engine -------------------------------------------------------------------------------
    def probes(self, run: PrefillRun, segment: Segment, at: int) -> list[tuple[int, Probe]]:
        """``(layer, probe)`` pairs to read in ``segment`` before this event runs (default: none).

        ``at``: the event's place in the schedule, the key of its readings in ``run.readings``.
        """
        return []

    def apply(self, run: PrefillRun, at: int) -> None:
        """Change ``run.streams`` (the live streams' rows) before ``self.layer``; ``at`` as in :meth:`probes`."""
        raise NotImplementedError

    # -- JSON -------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """``{"kind": ..., field: value, ...}`` with tuples as lists."""
        return {"kind": self.kind,
                **{f.name: _lists(getattr(self, f.name)) for f in dataclasses.fields(self)}}  # type: ignore[arg-type]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Event:
        """The event from :meth:`to_json`'s fields (``kind`` removed); lists become tuples."""
        allowed = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - allowed
        if unknown:
            raise ScheduleError(f"event {cls.kind!r} has unknown fields {sorted(unknown)}")
        return cls(**{k: _tuples(v) for k, v in data.items()})

    # -- testing ----------------------------------------------------------------------------------
    @classmethod
    def draws(cls, state: DrawState) -> SearchStrategy[Event] | None:
        """A hypothesis strategy of events of this kind valid at ``state`` (``None``: none is)."""
        return None


def _lists(value: Any) -> Any:
    return [_lists(v) for v in value] if isinstance(value, tuple) else value


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value
