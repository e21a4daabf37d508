"""Attention probes: the attention a later event needs, recomputed for the few query rows it reads.

Some events decide from attention (a fuse whose rule weighs streams by the attention mass the
fused tokens gave each stream's visual tokens; a keep-top whose ranker reads the last prompt
token's attention in the layer before). The event says which rows it needs read at which layers
(:meth:`~vtsched.core.events.Event.probes`), with the pieces here. The model is never switched
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

from dataclasses import dataclass
from typing import Protocol

import torch

from vtsched.core.engine.attention import attention_probs, build_attention_mask
from vtsched.core.engine.layout import Segment
from vtsched.core.engine.rows import pad_stack
from vtsched.core.engine.run import PrefillRun

__all__ = ["Probe", "QueryRows", "plan_probes"]


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


def plan_probes(run: PrefillRun, segment: Segment) -> dict[int, list[Probe]]:
    """Which layers of ``segment`` must read attention, and the probes they run (in event order).

    Each event says what it needs (:meth:`~vtsched.core.events.Event.probes`); its place in the
    schedule keys what its probes leave in ``run.readings``.
    """
    plan: dict[int, list[Probe]] = {}
    for at, event in enumerate(run.schedule.events):
        for layer, probe in event.probes(run, segment, at):
            plan.setdefault(layer, []).append(probe)
    return plan
