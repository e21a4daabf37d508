"""Events between layers: how each schedule event changes the live streams of a run.

An event at layer ``k`` acts on the states entering layer ``k``. Removing and inserting groups,
keeping the top-ranked tokens of a group, fusing text-token states across streams, carrying them
into another stream (:mod:`.carry`, which renumbers slots) and ending a stream are each one short
function below, chosen by the event's type (``apply_event`` is a
``functools.singledispatch`` function, so there is no dispatch chain to extend).
"""

from __future__ import annotations

import dataclasses
from functools import singledispatch

import torch

from vtsched.core.engine.binding import gather
from vtsched.core.engine.carry import carry
from vtsched.core.engine.probes import rank
from vtsched.core.engine.rows import Rows, pad_stack
from vtsched.core.engine.run import PrefillRun
from vtsched.core.errors import ScheduleError
from vtsched.core.fusion import FusionInputs, check_weights
from vtsched.core.schedule import Carry, EndStream, Event, Fuse, InsertGroup, KeepTop, RemoveGroup
from vtsched.core.tokens import Role

__all__ = ["apply_event"]


@singledispatch
def apply_event(event: Event, run: PrefillRun) -> None:
    """Apply ``event`` to ``run.streams`` (before the layer it names)."""
    raise ScheduleError(f"the engine cannot execute {event!r}")  # the schedule validates event types


@apply_event.register
def _end_stream(event: EndStream, run: PrefillRun) -> None:
    del run.streams[event.stream]  # releases its states


@apply_event.register
def _carry(event: Carry, run: PrefillRun) -> None:
    """Copies of the sources' text tokens join ``event.into`` just before its own copies."""
    carry(event, run)


@apply_event.register
def _remove_group(event: RemoveGroup, run: PrefillRun) -> None:
    rows = run.streams[event.stream]
    group = run.partition.group_id(event.group)
    run.streams[event.stream] = rows.keep(run.bound.lookup(run.bound.groups, rows.index) != group)


@apply_event.register
def _insert_group(event: InsertGroup, run: PrefillRun) -> None:
    """The group's tokens join the stream with their layer-0 embeddings."""
    member = run.bound.groups == run.partition.group_id(event.group)
    run.streams[event.stream] = run.streams[event.stream].merge(gather(run.bound, member))


@apply_event.register
def _keep_top(event: KeepTop, run: PrefillRun) -> None:
    """Keep the group's tokens that the event's ranker scored highest (stable on ties).

    ``event.keep`` is a count or a ratio of the group's size in each row, or one of those per sample.
    With ``event.renumber`` the stream's tokens then take rotary ids ``0..n-1`` (:func:`_renumber`).
    """
    rows, bound = run.streams[event.stream], run.bound
    ranked_index, ranked = rank(event, run)
    by_position = torch.full(bound.roles.shape, float("-inf"), device=ranked.device)
    valid = ranked_index >= 0
    by_position[torch.nonzero(valid)[:, 0], ranked_index[valid]] = ranked[valid]
    in_group = bound.lookup(bound.groups, rows.index) == run.partition.group_id(event.group)
    scores = by_position.gather(1, rows.positions).masked_fill(~in_group, float("-inf"))
    keep = ~in_group
    amounts = event.keep if isinstance(event.keep, tuple) else (event.keep,) * rows.num_rows
    if len(amounts) != rows.num_rows:
        raise ScheduleError(f"{event.describe()}: {len(amounts)} per-sample amounts for {rows.num_rows} samples")
    for b, amount in enumerate(amounts):
        n = int(in_group[b].sum())
        k = min(n, amount) if isinstance(amount, int) else int(round(amount * n))
        top = torch.sort(-scores[b], stable=True).indices[:k]
        keep[b, top] = True
    run.streams[event.stream] = rows.keep(keep)
    if event.renumber:
        _renumber(event, run)


def _renumber(event: KeepTop, run: PrefillRun) -> None:
    """The stream's tokens take rotary ids ``0..n-1`` in causal order, and the next token ``n``.

    Only the rotary ids change: positions (the causal order, the mask) stay. Layers already run keep
    the keys they cached with the old ids; :class:`~.layout.Segment` records each layer's next rotary
    id, so decoded tokens continue after the tokens of each layer's own cache. Defined for one
    stream, no shared prefix apart and no carried copies. Multi-row rotary ids (Qwen2-VL's M-RoPE) are
    grid coordinates, not indices: there is nothing to renumber, and tokens keep them.
    """
    bound, rows = run.bound, run.streams[event.stream]
    if run.parts.rope_rows > 1:
        return
    if len(run.streams) > 1 or run.context is not None or bound.origin is not None:
        raise ScheduleError(f"{event.describe()}: renumbering needs one stream, no shared prefix apart and no "
                            "carried copies")
    valid = rows.valid
    table = (bound.rope[0] if bound.rope is not None
             else torch.arange(bound.roles.shape[1], device=valid.device).expand_as(bound.roles)).clone()
    b_idx, t_idx = torch.nonzero(valid, as_tuple=True)
    table[b_idx, rows.index[b_idx, t_idx]] = (valid.cumsum(1) - 1)[b_idx, t_idx]
    run.bound = dataclasses.replace(bound, rope=table[None], next_rotary=valid.sum(1))


@apply_event.register
def _fuse(event: Fuse, run: PrefillRun) -> None:
    """Replace the fused text tokens of ``event.into`` by the rule-weighted sum over ``event.streams``."""
    slots, states = _fused_slots(event, run)
    token_valid = pad_stack([torch.ones(s.numel(), dtype=torch.bool, device=s.device) for s in slots[0]], False)
    weights = _fusion_weights(event, run, token_valid)
    fused = sum(w[..., None] * s.float() for w, s in zip(weights, states)).to(states[0].dtype)
    target = run.streams[event.into]
    into_slot = slots[event.streams.index(event.into)]
    b_idx = torch.cat([torch.full_like(s, b) for b, s in enumerate(into_slot)])
    t_idx = torch.cat(into_slot)
    values = torch.cat([fused[b, : s.numel()] for b, s in enumerate(into_slot)])
    run.streams[event.into] = Rows(target.hidden.index_put((b_idx, t_idx), values), target.index)


def _fused_slots(event: Fuse, run: PrefillRun) -> tuple[list[list[torch.Tensor]], list[torch.Tensor]]:
    """Per stream: the fused tokens' slots per row, and their states ``(batch, tokens, hidden)``."""
    slots, states = [], []
    for name in event.streams:
        rows = run.streams[name]
        sel = run.bound.fused(rows.index, event.tokens)
        slot = [torch.nonzero(s).flatten() for s in sel]
        slots.append(slot)
        states.append(pad_stack([rows.hidden[b, s] for b, s in enumerate(slot)], 0.0))
    return slots, states


def _fusion_weights(event: Fuse, run: PrefillRun, token_valid: torch.Tensor) -> torch.Tensor:
    """``(streams, batch, tokens)`` weights from the event's rule, checked and recorded."""
    bound = run.bound
    counts = torch.stack([
        (bound.lookup(bound.roles, run.streams[n].index) == Role.VISUAL).sum(1).float() for n in event.streams
    ])
    mass = None
    rule_cls = run.rule(event.rule)
    if rule_cls.needs_attention_mass:
        mass = torch.stack([run.readings.mean_mass(event, n, token_valid) for n in event.streams])
    inputs = FusionInputs(counts, mass, token_valid, event.streams.index(event.into))
    try:
        rule = rule_cls(**event.param_dict)
    except TypeError as exc:
        raise ScheduleError(f"fusion rule {event.rule!r}: bad parameters {event.param_dict}: {exc}") from None
    weights = check_weights(event.rule, rule.weights(inputs), inputs)
    run.stats.add_fusion(event.layer, event.streams, weights)
    return weights
