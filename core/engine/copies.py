"""Copies of text tokens from other streams joining a stream: where a sample's token order grows.

The engine addresses every token by its slot in the sample (``index``): slots order causal
attention, masks, the cache and every per-token table of :class:`~.binding.Bound`. A carried
token is a *copy* of a text token another stream computed, so it has no slot of its own; it
shares its token's rotary id with the survivor's own copy. The order between the two is the
engine's tie-break: copies sit just before the survivor's own copy (copies of several streams
in the order the event lists them), so the own copy and every later token see them.

Copying therefore inserts slots. :func:`copy_text_tokens` renumbers, once, every slot the run holds (the
live streams, the shared prefix and its context, the cache collected so far, rankings not yet
used) and rebuilds the per-token tables with the new slots: role ``Role.CARRIED``, the rotary id
and original position of the token they copy. Rotary ids stop being slot numbers from then on,
so the tables always carry them explicitly; decoding continues at the next slot with the rotary
id the prompt would have given it without copies.
"""

from __future__ import annotations

import dataclasses

import torch

from vtsched.core.engine.binding import Bound
from vtsched.core.engine.rows import Rows, pad_stack
from vtsched.core.engine.run import LayerCache, PrefillRun
from vtsched.core.tokens import Role

__all__ = ["copy_text_tokens"]


def copy_text_tokens(run: PrefillRun, layer: int, sources: tuple[str, ...], into: str, tokens: str) -> None:
    """Add copies of the ``sources`` streams' text tokens of kind ``tokens`` to ``into`` before ``layer``.

    Renumbers every slot the run holds (see the module docstring) and records the copies' count.
    """
    bound = run.bound
    copies: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(bound.roles.shape[0])]
    for name in sources:
        rows = run.streams[name]
        chosen = bound.fused(rows.index, tokens)
        for b in range(rows.num_rows):
            copies[b].append((rows.index[b][chosen[b]], rows.hidden[b][chosen[b]]))
    slot_of, copy_slots = _renumbering(bound, copies)
    _renumber_run(run, slot_of)
    run.bound = _grown_tables(bound, run.parts.rope_rows, slot_of, copy_slots, copies)
    states = [torch.cat([s for _, s in per_sample]) for per_sample in copies]
    slots = [torch.cat(per_sample) for per_sample in copy_slots]
    run.streams[into] = run.streams[into].add(states, slots)
    run.stats.add_carry(layer, sources, torch.tensor([s.numel() for s in slots]))


def _renumbering(
    bound: Bound, copies: list[list[tuple[torch.Tensor, torch.Tensor]]]
) -> tuple[torch.Tensor, list[list[torch.Tensor]]]:
    """``(batch, T_max)`` new slot of every old slot, and per sample and source the new slots of its copies.

    An old slot ``p`` moves up by the number of copies placed at or before it; copies of ``p`` take
    the slots just below ``p``'s new one, in source order.
    """
    batch, width = bound.roles.shape
    device = bound.roles.device
    slot_of = torch.empty((batch, width), dtype=torch.long, device=device)
    copy_slots: list[list[torch.Tensor]] = []
    for b in range(batch):
        before = torch.zeros(width, dtype=torch.long, device=device)  # copies placed just before each slot
        ranks = []
        for slots, _ in copies[b]:
            ranks.append(before[slots].clone())  # this source's copy comes after earlier sources' copies
            before.index_add_(0, slots, torch.ones_like(slots))
        through = before.cumsum(0)  # copies at or before each slot
        slot_of[b] = torch.arange(width, device=device) + through
        copy_slots.append([slot_of[b][slots] - before[slots] + rank for (slots, _), rank in zip(copies[b], ranks)])
    return slot_of, copy_slots


def _renumber(slot_of: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``(rows, T)`` slots in the new numbering (padding stays ``-1``); one row per sample."""
    return slot_of.gather(1, index.clamp(min=0)).masked_fill(index < 0, -1)


def _renumber_run(run: PrefillRun, slot_of: torch.Tensor) -> None:
    """Every slot number the run holds, in the new numbering (order within rows is unchanged)."""
    run.streams = {name: Rows(rows.hidden, _renumber(slot_of, rows.index)) for name, rows in run.streams.items()}
    if run.prefix is not None:
        run.prefix = Rows(run.prefix.hidden, _renumber(slot_of, run.prefix.index))
    if run.context is not None:
        run.context = dataclasses.replace(run.context, index=_renumber(slot_of, run.context.index))
    renumbered: dict[int, torch.Tensor] = {}  # layers of one segment share one index tensor: keep it shared
    for i, entry in enumerate(run.cache):
        if id(entry.index) not in renumbered:
            renumbered[id(entry.index)] = _renumber(slot_of, entry.index)
        run.cache[i] = dataclasses.replace(entry, index=renumbered[id(entry.index)])
    run.readings.rank = {key: (_renumber(slot_of, index), scores) for key, (index, scores) in run.readings.rank.items()}


def _grown_tables(
    bound: Bound, rope_rows: int, slot_of: torch.Tensor, copy_slots: list[list[torch.Tensor]],
    copies: list[list[tuple[torch.Tensor, torch.Tensor]]],
) -> Bound:
    """The per-token tables in the new numbering: old slots moved, copies filled in from the token they copy."""
    batch, width = bound.roles.shape
    device = bound.roles.device
    origin = bound.origin if bound.origin is not None else torch.arange(width, device=device).expand(batch, -1)
    rope = bound.rope if bound.rope is not None else origin[None].expand(rope_rows, -1, -1)
    lengths = bound.lengths + torch.tensor([sum(s.numel() for s in c) for c in copy_slots], device=device)
    new_width = int(lengths.max())
    embeds, roles, groups, origins, ropes = [], [], [], [], []
    for b in range(batch):
        valid = torch.arange(width, device=device) < bound.lengths[b]
        moved = slot_of[b][valid]
        sources = torch.cat([slots for slots, _ in copies[b]])
        targets = torch.cat(copy_slots[b])

        def place(table: torch.Tensor, fill: float | int, copied: torch.Tensor) -> torch.Tensor:
            out = table.new_full((new_width, *table.shape[1:]), fill)
            out[moved] = table[valid]
            out[targets] = copied
            return out

        embeds.append(place(bound.embeds[b], 0.0, bound.embeds[b][sources]))
        roles.append(place(bound.roles[b], -1, torch.full_like(sources, Role.CARRIED)))
        groups.append(place(bound.groups[b], -1, torch.full_like(sources, -1)))
        origins.append(place(origin[b], -1, origin[b][sources]))
        ropes.append(place(rope[:, b].T, 0, rope[:, b, sources].T))
    return Bound(
        embeds=pad_stack(embeds, 0.0), roles=pad_stack(roles, -1), groups=pad_stack(groups, -1), lengths=lengths,
        rope=pad_stack(ropes, 0).permute(2, 0, 1).contiguous(), next_rotary=bound.next_rotary,
        origin=pad_stack(origins, -1),
    )
