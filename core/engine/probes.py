"""Attention probes: the attention a later event needs, recomputed for the few query rows it reads.

Some events decide from attention: ``Fuse`` with a rule that weighs streams by the attention
mass question tokens gave to each stream's visual tokens, and ``KeepTop`` ranking visual tokens by
the attention the last prompt token gave them in the layer before (``last_token_attention``) or
would give them in the event's own layer (``next_layer_attention``). The model is never switched
to eager attention and no layer runs twice: a probe recomputes the rotated queries of its rows
from the layer input (``DecoderParts.query_rows``) and scores them against the keys the layer
attended over (handed out by :class:`~vtsched.core.engine.attention.KVTap`).

Which rows a probe reads, their rotary embeddings and their mask rows depend only on the
segment's layout, so :func:`plan_probes` builds them once per segment; each layer only computes
queries and scores. A stream's queries score only the key columns up to the end of its own
block: the columns after it belong to later streams, are masked for it and would only add
exact zeros, so the probabilities are the same and a small first stream costs only its own keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import singledispatch
from typing import Protocol

import torch

from vtsched.core.engine.attention import attention_probs, build_attention_mask
from vtsched.core.engine.layout import Segment
from vtsched.core.engine.rows import pad_stack
from vtsched.core.engine.run import PrefillRun
from vtsched.core.schedule import Event, Fuse, KeepTop
from vtsched.core.tokens import Role

__all__ = ["Probe", "QueryRows", "MassProbe", "RankProbe", "RANKERS", "plan_probes", "probes_for", "rank"]


@dataclass(frozen=True)
class QueryRows:
    """Query rows a probe scores, with everything about them that the segment's layers share.

    Attributes:
        slot: ``(rows, q)`` slots of the query rows in the packed row (padded with ``0``).
        row: ``(rows, 1)`` row numbers, to index ``slot`` with.
        count: ``(rows,)`` real query rows per row (what the statistics record).
        cos, sin: ``(rows, q, head_dim)`` their rotary embeddings.
        width: how many leading key columns they score (the rest is masked for them).
        mask: ``(rows, 1, q, width)`` their additive mask rows.
    """

    slot: torch.Tensor
    row: torch.Tensor
    count: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    width: int
    mask: torch.Tensor

    @classmethod
    def select(cls, segment: Segment, sel: torch.Tensor, block: slice) -> QueryRows:
        """The slots of ``segment`` where ``sel`` (``(rows, T)`` bool) holds, all in the stream at ``block``."""
        slot = pad_stack([torch.nonzero(s).flatten() for s in sel], 0)
        row = torch.arange(sel.shape[0], device=slot.device)[:, None]
        width = segment.n_context + block.stop
        inputs = segment.inputs
        if inputs.mask is not None:
            mask = inputs.mask[row, :, slot, :width].transpose(1, 2)
        elif segment.split is not None:  # streams ran split: the packed mask's rows for these queries
            assert segment.stream_of_column is not None
            query_index = segment.rows.index.gather(1, slot)
            stream = segment.blocks.index(block)
            key_stream = torch.cat((torch.full((segment.n_context,), -1, dtype=torch.long, device=slot.device),
                                    segment.stream_of_column))[:width]
            query_stream = torch.full((slot.shape[1],), stream, dtype=torch.long, device=slot.device)
            mask = build_attention_mask(query_index, segment.key_index[:, :width], segment.rows.hidden.dtype,
                                        query_stream, key_stream)
        else:  # plain causal layout: slot t sees slots <= t
            dtype = segment.rows.hidden.dtype
            allowed = torch.arange(width, device=slot.device)[None, None, :] <= slot[:, :, None]
            mask = torch.zeros(allowed.shape, dtype=dtype, device=slot.device)
            mask = mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
        return cls(slot, row, sel.sum(1), inputs.cos[row, slot], inputs.sin[row, slot], width, mask)

    def probs(self, run: PrefillRun, layer: int, layer_input: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """``(rows, heads, q, width)`` attention of these rows at ``layer``.

        ``layer_input``: ``(rows, T, hidden)`` states entering the layer; ``keys``:
        ``(rows, kv_heads, keys, head_dim)`` as the layer attended over.
        """
        queries = run.parts.query_rows(layer, layer_input[self.row, self.slot], self.cos, self.sin)
        run.stats.add_probe(layer, self.count, self.width)
        return attention_probs(queries, keys[:, :, : self.width], self.mask, run.parts.scaling)


class Probe(Protocol):
    """Reads attention at one layer and keeps what its event needs in ``run.readings``."""

    def read(self, run: PrefillRun, layer: int, layer_input: torch.Tensor, keys: torch.Tensor) -> None: ...


@dataclass(frozen=True)
class MassProbe:
    """For a ``Fuse``: the share of each fused token's attention on its own stream's visual tokens.

    ``key_is_visual``: ``(rows, width)`` float32, 1.0 where the key is a visual token.
    Cross-stream keys are masked, so the mass is on this stream's own visual tokens.
    """

    queries: QueryRows
    event: Fuse
    stream: str
    key_is_visual: torch.Tensor

    def read(self, run: PrefillRun, layer: int, layer_input: torch.Tensor, keys: torch.Tensor) -> None:
        probs = self.queries.probs(run, layer, layer_input, keys)
        mass = (probs * self.key_is_visual[:, None, None, :]).sum(-1).mean(1)  # (rows, q)
        run.readings.add_mass(self.event, self.stream, mass)


@dataclass(frozen=True)
class RankProbe:
    """For a ``KeepTop``: the attention the stream's last prompt token gives each of its tokens.

    ``own``: the stream's key columns; ``index``: ``(rows, T_s)`` their positions.
    """

    queries: QueryRows
    event: KeepTop
    own: slice
    index: torch.Tensor

    def read(self, run: PrefillRun, layer: int, layer_input: torch.Tensor, keys: torch.Tensor) -> None:
        probs = self.queries.probs(run, layer, layer_input, keys)
        run.readings.rank[id(self.event)] = (self.index, probs[..., self.own][:, :, 0].mean(1))  # by position


def plan_probes(run: PrefillRun, segment: Segment) -> dict[int, list[Probe]]:
    """Which layers of ``segment`` must read attention, and the probes they run (in event order)."""
    plan: dict[int, list[Probe]] = {}
    for event in run.schedule.events:
        for layer, probe in probes_for(event, run, segment):
            plan.setdefault(layer, []).append(probe)
    return plan


@singledispatch
def probes_for(event: Event, run: PrefillRun, segment: Segment) -> list[tuple[int, Probe]]:
    """``(layer, probe)`` pairs ``event`` needs read in ``segment``; most events read nothing."""
    return []


@probes_for.register
def _fuse_probes(event: Fuse, run: PrefillRun, segment: Segment) -> list[tuple[int, Probe]]:
    """Every layer before the fuse, while all fused streams run, for rules that weigh by attention mass."""
    if event.layer < segment.end or not run.rule(event.rule).needs_attention_mass:
        return []
    if not all(s in segment.names for s in event.streams):
        return []
    roles = segment.row_roles
    fused = run.bound.fused(segment.rows.index, event.tokens)
    visual_keys = run.bound.lookup(run.bound.roles, segment.key_index) == Role.VISUAL
    key_is_visual = visual_keys.to(torch.float32)
    probes: list[Probe] = []
    for stream in event.streams:
        block = segment.block(stream)
        sel = torch.zeros_like(roles, dtype=torch.bool)
        sel[:, block] = fused[:, block]
        queries = QueryRows.select(segment, sel, block)
        visual = key_is_visual[:, : queries.width]
        probes.append(MassProbe(queries, event=event, stream=stream, key_is_visual=visual))
    return [(layer, probe) for layer in range(segment.start, segment.end) for probe in probes]


@probes_for.register
def _keep_top_probes(event: KeepTop, run: PrefillRun, segment: Segment) -> list[tuple[int, Probe]]:
    """The layer right before the event, from the stream's last prompt token (tail excluded)."""
    layer = event.layer - 1
    if event.ranker != "last_token_attention" or not segment.start <= layer < segment.end:
        return []
    block = segment.block(event.stream)
    sel = torch.zeros_like(segment.row_roles, dtype=torch.bool)
    sel[:, block] = run.bound.fused(segment.rows.index[:, block], "last")  # every stream has the prompt's text
    own = slice(segment.n_context + block.start, segment.n_context + block.stop)
    return [(layer, RankProbe(QueryRows.select(segment, sel, block), event=event, own=own,
                              index=segment.rows.index[:, block]))]


Ranker = Callable[[KeepTop, PrefillRun], tuple[torch.Tensor, torch.Tensor]]
"""Scores for a ``KeepTop`` at its layer: ``(index, scores)``, both ``(rows, T)``: positions and their scores."""


def _read_layer_before(event: KeepTop, run: PrefillRun) -> tuple[torch.Tensor, torch.Tensor]:
    """``last_token_attention``: what the :class:`RankProbe` read in the layer before the event."""
    return run.readings.rank.pop(id(event))


def _next_layer_attention(event: KeepTop, run: PrefillRun) -> tuple[torch.Tensor, torch.Tensor]:
    """``next_layer_attention``: the last prompt token's head-averaged attention in layer ``event.layer``,
    from that layer's own input norm and query/key projections on the states entering it (before the
    drop), over the stream's tokens and the shared prefix, under the causal rule on positions.

    The layer itself then runs once, on the kept tokens; only its key projection of the stream's
    tokens and one query row are computed here in addition.
    """
    layer, rows, context = event.layer, run.streams[event.stream], run.context
    if context is not None and layer >= len(context.keys):  # the shared prefix joins at this boundary
        assert run.prefix is not None
        rows, context = rows.merge(run.prefix), None
    rotary = run.bound.rotary_positions(rows.index)
    cos, sin = run.parts.rotary(rows.hidden, rotary)
    keys = run.parts.key_rows(layer, rows.hidden, cos, sin)
    key_index, n_context = rows.index, 0
    if context is not None:  # the prefix's keys as the layer will see them
        keys = torch.cat((context.keys[layer], keys), dim=2)
        key_index, n_context = torch.cat((context.index, rows.index), dim=1), context.index.shape[1]
    slot = run.bound.fused(rows.index, "last").to(torch.int8).argmax(1)  # (rows,) the last prompt token
    row = torch.arange(rows.num_rows, device=slot.device)
    queries = run.parts.query_rows(layer, rows.hidden[row, slot][:, None], cos[row, slot][:, None],
                                   sin[row, slot][:, None])
    mask = build_attention_mask(rows.index[row, slot][:, None], key_index, rows.hidden.dtype)
    run.stats.add_probe(layer, torch.ones_like(slot), key_index.shape[1])
    probs = attention_probs(queries, keys, mask, run.parts.scaling)  # (rows, heads, 1, C + T)
    return rows.index, probs[:, :, 0, n_context:].mean(1)


RANKERS: dict[str, Ranker] = {
    "last_token_attention": _read_layer_before,
    "next_layer_attention": _next_layer_attention,
}
"""How the engine scores tokens for ``KeepTop``, by the event's ``ranker`` (``KNOWN_RANKERS``)."""


def rank(event: KeepTop, run: PrefillRun) -> tuple[torch.Tensor, torch.Tensor]:
    """``(index, scores)`` of ``event``'s stream by its ranker."""
    return RANKERS[event.ranker](event, run)
