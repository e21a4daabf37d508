"""The schedule: a typed, validated, immutable description of what runs where.

Policies produce a :class:`Schedule`; the engine executes it. A schedule speaks of *groups*
(names of a partition's visual-token groups) and *streams* (parallel copies of the prompt,
each carrying every text token and some visual groups). Events happen at layer boundaries:
an event at layer ``k`` acts on the hidden states that enter layer ``k`` (``k == num_layers``
means after the last layer). Within one layer, events run in the order given.

What an event does is its own class's business (:mod:`vtsched.core.events`, one module per kind,
registered like any plugin component); a schedule only walks its events in order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from vtsched.core.errors import ScheduleError
from vtsched.core.events import BUILTIN_EVENTS, FUSED_TOKENS, Event, Layout
from vtsched.core.events.base import ParamValue

__all__ = ["Stream", "Event", "Schedule", "FUSED_TOKENS", "BUILTIN_KINDS"]

BUILTIN_KINDS: dict[str, type[Event]] = {cls.kind: cls for cls in BUILTIN_EVENTS}
"""Event classes by kind when no registry is given (a registry adds its plugins': ``Registry.event_kinds()``)."""


@dataclass(frozen=True, slots=True)
class Stream:
    """One path through the decoder: all text tokens plus the visual ``groups`` it starts with."""

    name: str
    groups: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Schedule:
    """What runs: streams, events at layer boundaries, and the stream that survives into decoding.

    Construction validates the whole timeline; an invalid schedule raises :class:`ScheduleError`
    naming the offending event.
    """

    num_layers: int
    groups: tuple[str, ...]
    streams: tuple[Stream, ...]
    survivor: str
    events: tuple[Event, ...] = ()
    meta: tuple[tuple[str, ParamValue], ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        _validate(self)

    # -- queries -----------------------------------------------------------------------------
    @property
    def stream_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.streams)

    def boundaries(self) -> list[int]:
        """Layers at which at least one event happens, plus 0 and ``num_layers``, sorted."""
        return sorted({0, self.num_layers, *(e.layer for e in self.events)})

    def events_at(self, layer: int) -> tuple[Event, ...]:
        return tuple(e for e in self.events if e.layer == layer)

    def segments(self) -> Iterator[tuple[int, int, tuple[Event, ...]]]:
        """``(start, end, events_at_start)`` for each run of layers with no event inside."""
        marks = self.boundaries()
        for start, end in zip(marks[:-1], marks[1:]):
            yield start, end, self.events_at(start)
        if self.events_at(self.num_layers):
            yield self.num_layers, self.num_layers, self.events_at(self.num_layers)

    def layout_at(self, layer: int) -> dict[str, tuple[str, ...]]:
        """Live streams entering ``layer`` (after its events) and the groups each carries.

        A ``keep_top`` keeps the group's name, so this is the *nominal* layout; the engine reports
        the exact token counts of what ran.
        """
        return _simulate(self, upto=layer)

    # -- JSON --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "vtsched_schedule": 1,
            "num_layers": self.num_layers,
            "groups": list(self.groups),
            "streams": [{"name": s.name, "groups": list(s.groups)} for s in self.streams],
            "survivor": self.survivor,
            "events": [e.to_json() for e in self.events],
            "meta": dict(self.meta),
            # where each event kind from outside core comes from, so that loading the file without
            # it can say which plugin to install
            "providers": {e.kind: type(e).__module__.split(".")[0] for e in self.events if e.kind not in BUILTIN_KINDS},
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], kinds: Mapping[str, type[Event]] | None = None) -> Schedule:
        """The schedule of :meth:`to_dict`; ``kinds``: event classes by kind (default: the built-ins)."""
        if data.get("vtsched_schedule") != 1:
            raise ScheduleError("not a vtsched schedule (missing 'vtsched_schedule': 1)")
        try:
            return cls(
                num_layers=int(data["num_layers"]),
                groups=tuple(data["groups"]),
                streams=tuple(Stream(s["name"], tuple(s.get("groups", ()))) for s in data["streams"]),
                survivor=data["survivor"],
                events=tuple(_event_from_dict(e, BUILTIN_KINDS if kinds is None else kinds, data.get("providers", {}))
                             for e in data.get("events", ())),
                meta=tuple(sorted(dict(data.get("meta", {})).items())),
            )
        except (KeyError, TypeError) as exc:
            raise ScheduleError(f"malformed schedule JSON: {exc!r}") from None

    @classmethod
    def from_json(cls, text: str, kinds: Mapping[str, type[Event]] | None = None) -> Schedule:
        try:
            return cls.from_dict(json.loads(text), kinds)
        except json.JSONDecodeError as exc:
            raise ScheduleError(f"schedule file is not JSON: {exc}") from None

    # -- printing ----------------------------------------------------------------------------
    def explain(self) -> str:
        """Readable timeline, one block per run of layers with an unchanged layout."""
        lines = [
            f"schedule over {self.num_layers} layers; groups: {', '.join(self.groups) or '-'}; "
            f"survivor: {self.survivor}"
        ]
        for key, value in self.meta:
            lines.append(f"  {key}: {value}")
        for start, end, events in self.segments():
            for e in events:
                lines.append(f"  @{start:<3d} {e.describe()}")
            if start == end:
                continue
            span = f"layer {start}" if end - start == 1 else f"layers {start}-{end - 1}"
            for name, groups in self.layout_at(start).items():
                carried = " + ".join(("text", *groups))
                mark = " *" if name == self.survivor else ""
                lines.append(f"  {span:<13s} {name:<14s} [{carried}]{mark}")
        lines.append("  (* the surviving stream, whose KV cache decodes)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.explain()


def _event_from_dict(data: Mapping[str, Any], kinds: Mapping[str, type[Event]], providers: Mapping[str, str]) -> Event:
    data = dict(data)
    kind = data.pop("kind", None)
    cls = kinds.get(kind)  # type: ignore[arg-type]
    if cls is None:
        source = (f" (it comes from {providers[kind]!r}: install that plugin, and do not disable plugins)"
                  if kind in providers else "")
        raise ScheduleError(f"unknown event kind {kind!r}{source}; known: {', '.join(sorted(kinds))}")
    return cls.from_json(data)


def walk(schedule: Schedule, upto: int | None = None) -> Layout:
    """Walk the events in order, each checking itself against the layout and applying its effect;
    return the layout entering layer ``upto`` (after its events), or after the last event."""
    layout = Layout(schedule.num_layers, schedule.groups, schedule.stream_names, schedule.survivor,
                    {s.name: list(s.groups) for s in schedule.streams})
    last_layer = 0
    for event in schedule.events:
        if upto is not None and event.layer > upto:
            break
        where = f"event '{event.describe()}' at layer {event.layer}"
        if not 0 <= event.layer <= schedule.num_layers:
            raise ScheduleError(f"{where}: layer outside 0..{schedule.num_layers}")
        if event.layer < last_layer:
            raise ScheduleError(f"{where}: events must be listed in layer order")
        last_layer = event.layer
        try:
            event.check(layout)
        except ScheduleError as exc:
            raise ScheduleError(f"{where}: {exc}") from None
    return layout


def _simulate(schedule: Schedule, upto: int | None = None) -> dict[str, tuple[str, ...]]:
    return {name: tuple(groups) for name, groups in walk(schedule, upto).alive.items()}


def _validate(schedule: Schedule) -> None:
    if schedule.num_layers < 1:
        raise ScheduleError("a schedule needs at least one layer")
    if len(set(schedule.groups)) != len(schedule.groups):
        raise ScheduleError(f"group names repeat: {list(schedule.groups)}")
    if not schedule.streams:
        raise ScheduleError("a schedule needs at least one stream")
    names = schedule.stream_names
    if len(set(names)) != len(names):
        raise ScheduleError(f"stream names repeat: {list(names)}")
    for stream in schedule.streams:
        for group in stream.groups:
            if group not in schedule.groups:
                raise ScheduleError(f"stream {stream.name!r} carries unknown group {group!r}")
        if len(set(stream.groups)) != len(stream.groups):
            raise ScheduleError(f"stream {stream.name!r} carries a group twice")
    odd = [e for e in schedule.events if not isinstance(e, Event)]
    if odd:
        raise ScheduleError(f"{odd[0]!r} is not a schedule event (a subclass of vtsched.core.events.Event)")
    if schedule.survivor not in names:
        raise ScheduleError(f"surviving stream {schedule.survivor!r} is not one of {list(names)}")
    final = _simulate(schedule)
    stray = [name for name in final if name != schedule.survivor]
    if stray:
        raise ScheduleError(
            f"stream(s) {stray} run to the last layer but only {schedule.survivor!r} survives; end them"
        )
