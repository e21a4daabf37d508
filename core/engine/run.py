"""The state of one prefill call, in one object.

A prefill threads the same things through every step: the bound batch, the live streams' rows,
the shared-prefix context, attention read by probes, statistics and the cache being collected.
Holding them in one :class:`PrefillRun` lets the loop, the probes and the events be short
functions of ``run`` instead of methods passing ten arguments to each other. A run lives for
one call; nothing in it is shared with another call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from dataclasses import dataclass, field

import torch

from vtsched.core.engine.parts import DecoderParts
from vtsched.core.engine.binding import Bound
from vtsched.core.engine.rows import Rows
from vtsched.core.engine.stats import RunStats
from vtsched.core.errors import ScheduleError
from vtsched.core.fusion import FusionRule
from vtsched.core.partition import Partition
from vtsched.core.schedule import Schedule

__all__ = ["PrefillRun", "Context", "LayerCache", "Readings"]


@dataclass(frozen=True)
class Context:
    """Tokens every row may attend to without carrying them: the shared text prefix.

    Attributes:
        keys, values: per layer ``(batch, kv_heads, C, head_dim)``, as the layer computed them.
        index: ``(batch, C)`` their positions, ``-1`` for padding.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    index: torch.Tensor

    def past(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys[layer], self.values[layer]


@dataclass(frozen=True)
class LayerCache:
    """The surviving stream's keys/values of one layer, and their positions.

    ``index`` is one tensor shared by all layers of a segment (``(batch, C)``, ``-1`` = padding),
    so decoding can tell which layers share a key layout without comparing tensors.
    ``next_rotary``: ``(batch,)`` the rotary id a token after the prompt takes at this layer (it
    differs between layers only where a ``keep_top`` renumbered the tokens), ``None``: the prompt's.
    """

    keys: torch.Tensor  # (batch, kv_heads, C, head_dim)
    values: torch.Tensor
    index: torch.Tensor
    next_rotary: torch.Tensor | None = None


@dataclass
class Readings:
    """Attention read by probes, kept until the event that needs it.

    Keyed by the event's place in the schedule (``at``: stable for one run, unlike an object's
    identity) and, for attention mass, the stream: ``(at, stream)``.
    """

    mass_sum: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)  # (batch, q) summed over layers
    mass_layers: dict[tuple[int, str], int] = field(default_factory=dict)
    rank: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # (positions, scores)

    def add_mass(self, key: tuple[int, str], mass: torch.Tensor) -> None:
        self.mass_sum[key] = self.mass_sum.get(key, 0) + mass
        self.mass_layers[key] = self.mass_layers.get(key, 0) + 1

    def mean_mass(self, key: tuple[int, str], token_valid: torch.Tensor) -> torch.Tensor:
        """``(batch, tokens)`` attention mass averaged over the layers read (zeros if none ran)."""
        if key not in self.mass_sum:  # fuse at layer 0: no layer has run, so no attention yet
            return torch.zeros(token_valid.shape, device=token_valid.device)
        mass = self.mass_sum[key] / self.mass_layers[key]
        return mass[:, : token_valid.shape[1]]


@dataclass
class PrefillRun:
    """Everything one prefill works on.

    Attributes:
        parts: the decoder pieces.
        rules: fusion rule classes by name.
        rankers: ranker classes by name (what ``keep_top`` events rank by).
        schedule, partition: what runs.
        bound: the batch's per-token tables.
        streams: live streams' rows by name, ``(batch, T_s)`` each, sorted by position.
        stats: token counts of what ran.
        use_cache: whether to collect the surviving stream's keys/values.
        context: the shared prefix's keys/values while streams run in parallel, else ``None``.
        prefix: the shared prefix's states entering the first layer a single stream runs.
        readings: attention read by probes for later events.
        cache: the surviving stream's :class:`LayerCache` per layer run so far.
        split: parallel streams run one layer call each (long prompts), not packed into one.
    """

    parts: DecoderParts
    rules: Mapping[str, type[FusionRule]]
    rankers: Mapping[str, type]
    schedule: Schedule
    partition: Partition
    bound: Bound
    streams: dict[str, Rows]
    stats: RunStats
    use_cache: bool
    context: Context | None = None
    prefix: Rows | None = None
    readings: Readings = field(default_factory=Readings)
    cache: list[LayerCache] = field(default_factory=list)
    split: bool = False

    def ranker(self, name: str) -> Any:
        """An instance of the ranker called ``name``."""
        try:
            return self.rankers[name]()
        except KeyError:
            raise ScheduleError(f"unknown ranker {name!r}; known: {', '.join(sorted(self.rankers))}") from None

    def rule(self, name: str) -> type[FusionRule]:
        try:
            return self.rules[name]
        except KeyError:
            raise ScheduleError(f"unknown fusion rule {name!r}; known: {', '.join(sorted(self.rules))}") from None

    def join_prefix(self) -> None:
        """One stream left: the shared prefix joins it as ordinary tokens, and the context ends.

        The remaining layers then run the plain layout (no context, no mask where nothing is padded).
        """
        if self.prefix is not None:
            survivor = self.schedule.survivor
            self.streams[survivor] = self.streams[survivor].merge(self.prefix)
        self.context = None
        self.prefix = None
