"""New slots in a sample's token order: copies of text tokens from other streams, and tokens an event makes.

The engine addresses every token by its slot in the sample (``index``): slots order causal
attention, masks, the cache and every per-token table of :class:`~.binding.Bound`. Two events add
tokens that have no slot of their own:

- a carried token (``carry``) is a *copy* of a text token another stream computed; it shares its
  token's rotary id with the survivor's own copy. The order between the two is the engine's
  tie-break: copies sit just before the survivor's own copy (copies of several streams in the order
  the event lists them), so the own copy and every later token see them;
- a merged token (``recycle``) stands for several visual tokens a stream dropped; it sits after the
  image and has no position in the sample as given (``origin`` -1).

Adding tokens therefore inserts slots. :func:`insert_tokens` renumbers, once, every slot the run
holds (the live streams, the shared prefix and its context, the cache collected so far, rankings
not yet used) and rebuilds the per-token tables with the new slots, each with the table entries
its event gives it (:class:`NewTokens`). Rotary ids stop being slot numbers from then on, so the
tables always carry them explicitly; decoding continues at the next slot with the rotary id the
prompt would have given it without the added tokens (a renumbering ``keep_top`` may change that).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from vtsched.core.engine.binding import Bound
from vtsched.core.engine.rows import Rows, pad_stack
from vtsched.core.engine.run import PrefillRun
from vtsched.core.tokens import Role

__all__ = ["NewTokens", "insert_tokens", "copy_text_tokens", "origin_table", "rope_table"]


@dataclass(frozen=True)
class NewTokens:
    """Tokens an event adds to one sample, and their entries in the per-token tables.

    Attributes:
        before: ``(n,)`` the (current) slot each token sits just before; the sample's length places it
            at the end. Tokens sharing a ``before`` keep the order given here.
        embeds: ``(n, hidden)`` their layer-0 embeddings (zeros for tokens that have none).
        roles, groups: ``(n,)`` their role codes and group ids (``-1``: no group).
        origin: ``(n,)`` their positions in the sample as given (``-1``: none).
        rope: ``(R, n)`` their rotary ids.
    """

    before: torch.Tensor
    embeds: torch.Tensor
    roles: torch.Tensor
    groups: torch.Tensor
    origin: torch.Tensor
    rope: torch.Tensor


def insert_tokens(run: PrefillRun, new: list[NewTokens]) -> list[torch.Tensor]:
    """Insert ``new[b]`` into sample ``b``'s slots; return per sample the ``(n,)`` new slots of its tokens.

    Renumbers every slot the run holds (see the module docstring); the caller adds the tokens'
    states to the stream that carries them (``Rows.add``).
    """
    bound = run.bound
    batch, width = bound.roles.shape
    device = bound.roles.device
    slot_of = torch.empty((batch, width), dtype=torch.long, device=device)
    placed: list[torch.Tensor] = []
    old = torch.arange(width, device=device)
    for b, tokens in enumerate(new):
        before, order = torch.sort(tokens.before.to(device), stable=True)
        # an old slot moves up by the tokens placed at or before it; a new token sits after the
        # old slots before its own ``before`` and after the new tokens sorted ahead of it
        slot_of[b] = old + torch.searchsorted(before, old, right=True)
        slots = torch.empty_like(before)
        slots[order] = before + torch.arange(before.numel(), device=device)
        placed.append(slots)
    _renumber_run(run, slot_of)
    run.bound = _grown_tables(bound, run.parts.rope_rows, slot_of, placed, new)
    return placed


def copy_text_tokens(run: PrefillRun, layer: int, sources: tuple[str, ...], into: str, tokens: str) -> None:
    """Add copies of the ``sources`` streams' text tokens of kind ``tokens`` to ``into`` before ``layer``.

    Each copy sits just before the token it copies and takes its rotary id and original position
    (role ``CARRIED``, no group); records the copies' count.
    """
    bound = run.bound
    origin, rope = origin_table(bound), rope_table(bound, run.parts.rope_rows)
    chosen = {name: bound.fused(run.streams[name].index, tokens) for name in sources}
    new, states = [], []
    for b in range(bound.roles.shape[0]):
        copied, copied_states = [], []
        for name in sources:  # in source order: copies of one token keep it (a stable sort in insert_tokens)
            rows = run.streams[name]
            copied.append(rows.index[b][chosen[name][b]])
            copied_states.append(rows.hidden[b][chosen[name][b]])
        slots = torch.cat(copied)
        new.append(NewTokens(slots, bound.embeds[b][slots], torch.full_like(slots, Role.CARRIED),
                             torch.full_like(slots, -1), origin[b][slots], rope[:, b, slots]))
        states.append(torch.cat(copied_states))
    placed = insert_tokens(run, new)
    run.streams[into] = run.streams[into].add(states, placed)
    run.stats.add_carry(layer, sources, torch.tensor([s.numel() for s in placed]))


def origin_table(bound: Bound) -> torch.Tensor:
    """``(batch, T_max)`` each slot's position in the sample as given (the slot itself until slots are inserted)."""
    if bound.origin is not None:
        return bound.origin
    batch, width = bound.roles.shape
    return torch.arange(width, device=bound.roles.device).expand(batch, -1)


def rope_table(bound: Bound, rope_rows: int) -> torch.Tensor:
    """``(R, batch, T_max)`` each slot's rotary ids (its position until slots are inserted)."""
    return bound.rope if bound.rope is not None else origin_table(bound)[None].expand(rope_rows, -1, -1)


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
    bound: Bound, rope_rows: int, slot_of: torch.Tensor, placed: list[torch.Tensor], new: list[NewTokens],
) -> Bound:
    """The per-token tables in the new numbering: old slots moved, new ones filled in from ``new``."""
    width = bound.roles.shape[1]
    device = bound.roles.device
    origin, rope = origin_table(bound), rope_table(bound, rope_rows)
    lengths = bound.lengths + torch.tensor([t.before.numel() for t in new], device=device)
    new_width = int(lengths.max())
    embeds, roles, groups, origins, ropes = [], [], [], [], []
    for b, (tokens, targets) in enumerate(zip(new, placed)):
        valid = torch.arange(width, device=device) < bound.lengths[b]
        moved = slot_of[b][valid]

        def place(table: torch.Tensor, fill: float | int, added: torch.Tensor,
                  moved: torch.Tensor = moved, valid: torch.Tensor = valid, targets: torch.Tensor = targets,
                  ) -> torch.Tensor:  # this row's slots, bound now (called within the iteration)
            out = table.new_full((new_width, *table.shape[1:]), fill)
            out[moved] = table[valid]
            out[targets] = added.to(device=out.device, dtype=out.dtype)
            return out

        embeds.append(place(bound.embeds[b], 0.0, tokens.embeds))
        roles.append(place(bound.roles[b], -1, tokens.roles))
        groups.append(place(bound.groups[b], -1, tokens.groups))
        origins.append(place(origin[b], -1, tokens.origin))
        ropes.append(place(rope[:, b].T, 0, tokens.rope.T))
    return Bound(
        embeds=pad_stack(embeds, 0.0), roles=pad_stack(roles, -1), groups=pad_stack(groups, -1), lengths=lengths,
        rope=pad_stack(ropes, 0).permute(2, 0, 1).contiguous(), next_rotary=bound.next_rotary,
        origin=pad_stack(origins, -1),
    )
