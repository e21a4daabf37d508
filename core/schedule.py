"""The schedule: a typed, validated, immutable description of what runs where.

Policies produce a :class:`Schedule`; the engine executes it. A schedule speaks of *groups*
(names of a partition's visual-token groups) and *streams* (parallel copies of the prompt,
each carrying every text token and some visual groups). Events happen at layer boundaries:
an event at layer ``k`` acts on the hidden states that enter layer ``k`` (``k == num_layers``
means after the last layer). Within one layer, events run in the order given.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Literal, Union

from vtsched.core.errors import ScheduleError

__all__ = [
    "KNOWN_RANKERS",
    "Stream",
    "RemoveGroup",
    "InsertGroup",
    "Fuse",
    "KeepTop",
    "EndStream",
    "Carry",
    "Event",
    "Schedule",
    "FUSED_TOKENS",
]

FUSED_TOKENS = ("question", "post_image", "last")
ParamValue = Union[int, float, str]


@dataclass(frozen=True, slots=True)
class Stream:
    """One path through the decoder: all text tokens plus the visual ``groups`` it starts with."""

    name: str
    groups: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RemoveGroup:
    """Drop ``group``'s tokens from ``stream`` before ``layer``."""

    kind: ClassVar[str] = "remove"
    layer: int
    stream: str
    group: str

    def describe(self) -> str:
        return f"remove {self.group} from {self.stream}"


@dataclass(frozen=True, slots=True)
class InsertGroup:
    """Add ``group``'s tokens to ``stream`` before ``layer``, entering with their layer-0 embeddings."""

    kind: ClassVar[str] = "insert"
    layer: int
    stream: str
    group: str

    def describe(self) -> str:
        return f"insert {self.group} into {self.stream} (layer-0 embeddings)"


@dataclass(frozen=True, slots=True)
class Fuse:
    """Merge the text-token states of ``streams`` into ``into`` with the fusion rule ``rule``.

    ``tokens`` chooses which text tokens are fused: ``"question"`` (the user's question only),
    ``"post_image"`` (every text token after the image) or ``"last"`` (the prompt's last token
    only, where the answer is read). ``params`` are the rule's
    keyword arguments, as sorted ``(name, value)`` pairs so the event stays hashable.
    """

    kind: ClassVar[str] = "fuse"
    layer: int
    streams: tuple[str, ...]
    into: str
    rule: str
    tokens: Literal["question", "post_image", "last"] = "question"
    params: tuple[tuple[str, ParamValue], ...] = ()

    @property
    def param_dict(self) -> dict[str, ParamValue]:
        return dict(self.params)

    def describe(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.params)
        rule = f"{self.rule}({args})" if args else self.rule
        return f"fuse {self.tokens} tokens of {', '.join(self.streams)} -> {self.into} by {rule}"


KNOWN_RANKERS = ("last_token_attention", "next_layer_attention")  # how the engine can score tokens for KeepTop


@dataclass(frozen=True, slots=True)
class KeepTop:
    """Keep, in ``stream``, the ``keep`` visual tokens of ``group`` that ``ranker`` scores highest.

    The kept tokens stay in ``group``; the others leave the stream. ``keep`` is a count, or
    a ratio of the group's current size when it is a float in (0, 1]; or a tuple of those, one per
    sample of the batch (a policy that solves its budget per sample, e.g. ``pdrop`` with a count
    budget on images with different token counts). ``ranker`` names how the engine scores tokens:

    - ``"last_token_attention"``: the attention the last prompt token gave them in layer ``layer - 1``
      (FastV's signal), recomputed for that one query row from what that layer attended over;
    - ``"next_layer_attention"``: the attention the last prompt token would give them in layer
      ``layer`` itself, from that layer's own input norm and query/key projections applied to its
      input, before the drop (PyramidDrop's signal); it needs ``layer < num_layers``, not a layer before.

    ``renumber``: after the drop, the stream's tokens take rotary ids ``0..n-1`` in their order
    (their causal order is unchanged) and decoded tokens continue after them at the layers that
    follow, as PyramidDrop does; for one stream without carried copies, and only where rotary ids are
    indices (Qwen2-VL's M-RoPE ids are grid coordinates and stay). By default every token keeps its
    rotary id, the engine's rule.
    """

    kind: ClassVar[str] = "keep_top"
    layer: int
    stream: str
    group: str
    keep: int | float | tuple[int | float, ...]
    ranker: str = "last_token_attention"
    renumber: bool = False

    def describe(self) -> str:
        if isinstance(self.keep, tuple):
            amount = "per sample " + "/".join(f"{k:.4g}" if isinstance(k, float) else str(k) for k in self.keep) + " of"
        else:
            amount = f"{self.keep:g} of" if isinstance(self.keep, float) else f"top {self.keep} of"
        renumbered = ", renumbered" if self.renumber else ""
        return f"keep {amount} {self.group} in {self.stream} by {self.ranker}{renumbered}"


@dataclass(frozen=True, slots=True)
class EndStream:
    """Stop ``stream`` before ``layer``: its states and memory are released."""

    kind: ClassVar[str] = "end"
    layer: int
    stream: str

    def describe(self) -> str:
        return f"end {self.stream}"


@dataclass(frozen=True, slots=True)
class Carry:
    """Copy the text-token states of ``streams`` into ``into`` as extra tokens, instead of averaging them.

    ``tokens`` chooses which text tokens travel (as for :class:`Fuse`). Each copy keeps its
    token's rotary position id and sits in the causal order just before ``into``'s own copy of
    that token (copies of several streams in the order listed), so from this layer on every
    later token of ``into`` attends to both views. The copies run through the remaining layers
    like any other token and live in the decode cache. Typically the sources end at the same
    layer (an :class:`EndStream` after this event).
    """

    kind: ClassVar[str] = "carry"
    layer: int
    streams: tuple[str, ...]
    into: str
    tokens: Literal["question", "post_image", "last"] = "post_image"

    def describe(self) -> str:
        return f"carry {self.tokens} tokens of {', '.join(self.streams)} -> {self.into} (as extra tokens)"


Event = Union[RemoveGroup, InsertGroup, Fuse, KeepTop, EndStream, Carry]
_EVENT_KINDS: dict[str, type] = {
    cls.kind: cls for cls in (RemoveGroup, InsertGroup, Fuse, KeepTop, EndStream, Carry)
}


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

        ``KeepTop`` keeps the group's name, so this is the *nominal* layout; the engine reports
        the exact token counts of what ran.
        """
        return _simulate(self, upto=layer)

    def max_parallel(self) -> int:
        return max(len(self.layout_at(layer)) for layer in range(self.num_layers)) if self.num_layers else 1

    # -- JSON --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "vtsched_schedule": 1,
            "num_layers": self.num_layers,
            "groups": list(self.groups),
            "streams": [{"name": s.name, "groups": list(s.groups)} for s in self.streams],
            "survivor": self.survivor,
            "events": [_event_to_dict(e) for e in self.events],
            "meta": dict(self.meta),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Schedule:
        if data.get("vtsched_schedule") != 1:
            raise ScheduleError("not a vtsched schedule (missing 'vtsched_schedule': 1)")
        try:
            return cls(
                num_layers=int(data["num_layers"]),
                groups=tuple(data["groups"]),
                streams=tuple(Stream(s["name"], tuple(s.get("groups", ()))) for s in data["streams"]),
                survivor=data["survivor"],
                events=tuple(_event_from_dict(e) for e in data.get("events", ())),
                meta=tuple(sorted(dict(data.get("meta", {})).items())),
            )
        except (KeyError, TypeError) as exc:
            raise ScheduleError(f"malformed schedule JSON: {exc!r}") from None

    @classmethod
    def from_json(cls, text: str) -> Schedule:
        try:
            return cls.from_dict(json.loads(text))
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


def _event_to_dict(event: Event) -> dict[str, Any]:
    data = asdict(event)
    if isinstance(event, (Fuse, Carry)):
        data["streams"] = list(event.streams)
    if isinstance(event, Fuse):
        data["params"] = dict(event.params)
    return {"kind": event.kind, **data}


def _event_from_dict(data: Mapping[str, Any]) -> Event:
    data = dict(data)
    kind = data.pop("kind", None)
    cls = _EVENT_KINDS.get(kind)  # type: ignore[arg-type]
    if cls is None:
        raise ScheduleError(f"unknown event kind {kind!r}; known: {sorted(_EVENT_KINDS)}")
    allowed = {f.name for f in fields(cls)}
    unknown = set(data) - allowed
    if unknown:
        raise ScheduleError(f"event {kind!r} has unknown fields {sorted(unknown)}")
    if cls in (Fuse, Carry):
        data["streams"] = tuple(data["streams"])
    if cls is Fuse:
        data["params"] = tuple(sorted(dict(data.get("params", {})).items()))
    if cls is KeepTop and isinstance(data.get("keep"), list):  # one keep per sample
        data["keep"] = tuple(data["keep"])
    return cls(**data)


def _simulate(schedule: Schedule, upto: int | None = None) -> dict[str, tuple[str, ...]]:
    """Walk the events (validating them) and return the layout entering layer ``upto``."""
    alive: dict[str, list[str]] = {s.name: list(s.groups) for s in schedule.streams}
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
        if isinstance(event, Carry):
            targets = (*event.streams, event.into)
        elif isinstance(event, Fuse):
            targets = event.streams
        else:
            targets = (event.stream,)
        for name in targets:
            if name not in alive:
                known = "no such stream" if name not in schedule.stream_names else "stream already ended"
                raise ScheduleError(f"{where}: {known}: {name!r}")
        if isinstance(event, (RemoveGroup, InsertGroup, KeepTop)):
            if event.group not in schedule.groups:
                raise ScheduleError(f"{where}: unknown group {event.group!r}; groups are {list(schedule.groups)}")
            carried = alive[event.stream]
            if isinstance(event, InsertGroup):
                if event.group in carried:
                    raise ScheduleError(f"{where}: {event.stream} already carries {event.group}")
                carried.append(event.group)
            elif event.group not in carried:
                raise ScheduleError(f"{where}: {event.stream} does not carry {event.group}")
            elif isinstance(event, RemoveGroup):
                carried.remove(event.group)
            elif not all(_valid_keep(k) for k in (event.keep if isinstance(event.keep, tuple) else (event.keep,))):
                raise ScheduleError(f"{where}: keep must be a count >= 0 or a ratio in (0, 1] (or one per sample)")
            elif event.ranker not in KNOWN_RANKERS:
                raise ScheduleError(f"{where}: the engine knows no ranker {event.ranker!r}; rankers: {list(KNOWN_RANKERS)}")
            elif event.ranker == "last_token_attention" and event.layer == 0:
                raise ScheduleError(f"{where}: ranking by attention needs a layer before it (layer >= 1)")
            elif event.ranker == "next_layer_attention" and event.layer >= schedule.num_layers:
                raise ScheduleError(f"{where}: ranking by the next layer's attention needs a layer after it "
                                    f"(layer < {schedule.num_layers})")
        elif isinstance(event, Fuse):
            if len(set(event.streams)) != len(event.streams) or len(event.streams) < 2:
                raise ScheduleError(f"{where}: fuse needs at least two distinct streams")
            if event.into not in event.streams:
                raise ScheduleError(f"{where}: fuse target {event.into!r} is not among the fused streams")
            if event.tokens not in FUSED_TOKENS:
                raise ScheduleError(f"{where}: tokens must be one of {FUSED_TOKENS}")
        elif isinstance(event, Carry):
            if not event.streams or len(set(event.streams)) != len(event.streams):
                raise ScheduleError(f"{where}: carry needs one or more distinct source streams")
            if event.into in event.streams:
                raise ScheduleError(f"{where}: a stream cannot carry its own tokens ({event.into!r})")
            if event.tokens not in FUSED_TOKENS:
                raise ScheduleError(f"{where}: tokens must be one of {FUSED_TOKENS}")
        elif isinstance(event, EndStream):
            if event.stream == schedule.survivor:
                raise ScheduleError(f"{where}: the surviving stream cannot end")
            del alive[event.stream]
    return {name: tuple(groups) for name, groups in alive.items()}


def _valid_keep(keep: object) -> bool:
    if isinstance(keep, bool):
        return False
    if isinstance(keep, float):
        return 0.0 < keep <= 1.0
    return isinstance(keep, int) and keep >= 0


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
    if schedule.survivor not in names:
        raise ScheduleError(f"surviving stream {schedule.survivor!r} is not one of {list(names)}")
    final = _simulate(schedule)
    stray = [name for name in final if name != schedule.survivor]
    if stray:
        raise ScheduleError(
            f"stream(s) {stray} run to the last layer but only {schedule.survivor!r} survives; end them"
        )
