"""The layout of a run of layers: packed rows, mask, rotary embeddings, built once per segment.

Between two events the set of tokens does not change, so everything that depends only on which
tokens sit where (the packed rows, the attention mask, cos/sin, roles of each slot, the columns of
the surviving stream's cache) is computed once for the segment and read by each of its layers.

Live streams are packed along the token axis, one row per sample (``(batch, T_1 + T_2 + ...)``),
so a layer costs exactly the tokens the streams carry; a block mask keeps streams apart. With
SDPA and a plain causal layout (one stream, no padding, no context) the mask is ``None`` so that
SDPA can use its causal kernels, exactly as transformers does. On long prompts (``split``) each
stream gets its own layer call on its column block instead, with its own mask (``None`` when
plain causal): the packed columns, keys and cache stay laid out as if packed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vtsched.core.engine.parts import DecoderParts
from vtsched.core.engine.attention import KVTap, build_attention_mask
from vtsched.core.engine.rows import Rows
from vtsched.core.engine.run import Context, LayerCache, PrefillRun

__all__ = ["LayerInputs", "Segment", "build_segment", "layout_mask", "layer_inputs"]


@dataclass(frozen=True)
class LayerInputs:
    """What every layer of one layout receives beside its hidden states.

    Attributes:
        mask: ``(rows, 1, T, keys)`` additive mask, or ``None`` for plain causal attention.
        cos, sin: ``(rows, T, head_dim)`` rotary embeddings of the slots' rotary ids.
        position_ids: ``(rows, T)`` what the layers get as ``position_ids`` (the 1-D rotary ids), or
            ``None`` for families whose own model passes none (``DecoderParts.layer_position_ids``).
    """

    mask: torch.Tensor | None
    cos: torch.Tensor
    sin: torch.Tensor
    position_ids: torch.Tensor | None


def layout_mask(
    parts: DecoderParts, rows: Rows, context: Context | None, stream_of_column: torch.Tensor | None
) -> torch.Tensor | None:
    """The additive mask ``(rows, 1, T, C + T)`` for ``rows`` after ``context``, or ``None`` when plain causal.

    ``stream_of_column`` (``(T,)``) numbers the stream of each packed column; context keys are
    visible to every stream.
    """
    if (
        context is None and stream_of_column is None and bool(rows.valid.all())
        and parts.attn_implementation == "sdpa"
    ):
        return None  # plain causal layout: let SDPA use its causal kernels
    if context is None:
        return build_attention_mask(rows.index, rows.index, rows.hidden.dtype, stream_of_column, stream_of_column)
    key_index = torch.cat((context.index, rows.index), dim=1)
    key_stream = None
    if stream_of_column is not None:
        shared = torch.full((context.index.shape[1],), -1, dtype=torch.long, device=key_index.device)
        key_stream = torch.cat((shared, stream_of_column))
    return build_attention_mask(rows.index, key_index, rows.hidden.dtype, stream_of_column, key_stream)


def layer_inputs(
    parts: DecoderParts, hidden: torch.Tensor, rotary: torch.Tensor, mask: torch.Tensor | None
) -> LayerInputs:
    """Rotary embeddings (computed once for all layers that share them) and ``mask``.

    ``hidden``: ``(rows, T, hidden)``; ``rotary``: ``(rows, T)`` rotary ids, or ``(R, rows, T)``.
    """
    cos, sin = parts.rotary(hidden, rotary)
    position_ids = None
    if parts.layer_position_ids:
        position_ids = rotary if rotary.dim() == 2 else rotary[0]
    return LayerInputs(mask, cos, sin, position_ids)


@dataclass(frozen=True)
class Segment:
    """Layers ``start..end-1`` with an unchanged layout: live streams packed into one row per sample.

    Attributes:
        names, blocks: the live streams and the column block each occupies in ``rows``.
        rows: ``(batch, T)`` packed rows entering layer ``start``.
        inputs: mask and rotary embeddings shared by the segment's layers.
        n_context: ``C``, the shared-context keys placed before every row's own keys.
        key_index: ``(batch, C + T)`` positions of the keys a layer attends over.
        row_roles: ``(batch, T)`` role of each slot, ``-1`` at padding.
        cache_columns: key columns of the surviving stream (context included), ``None`` for all.
        cache_index: ``(batch, C_s)`` positions of those columns: one tensor for the whole segment.
        split: per stream, the inputs of its own layer call (long prompts, see ``Engine``), or
            ``None`` when the streams run packed in one call with ``inputs``' block mask.
        stream_of_column: ``(T,)`` stream number of each packed column (``None`` for one stream).
        next_rotary: ``(batch,)`` rotary id of a token after the prompt in these layers (see ``LayerCache``).
    """

    start: int
    end: int
    names: tuple[str, ...]
    blocks: tuple[slice, ...]
    rows: Rows
    inputs: LayerInputs
    n_context: int
    key_index: torch.Tensor
    row_roles: torch.Tensor
    cache_columns: torch.Tensor | None
    cache_index: torch.Tensor
    split: tuple[LayerInputs, ...] | None = None
    stream_of_column: torch.Tensor | None = None
    next_rotary: torch.Tensor | None = None

    def block(self, stream: str) -> slice:
        return self.blocks[self.names.index(stream)]

    def cache_entry(self, tap: KVTap) -> LayerCache:
        """The surviving stream's keys/values of one layer from what the layer attended over."""
        assert tap.keys is not None and tap.values is not None
        if self.cache_columns is None:
            return LayerCache(tap.keys, tap.values, self.cache_index, self.next_rotary)
        columns = self.cache_columns
        return LayerCache(tap.keys[:, :, columns], tap.values[:, :, columns], self.cache_index, self.next_rotary)

    def unpack(self, hidden: torch.Tensor) -> dict[str, Rows]:
        """Each stream's rows from the packed ``(batch, T, hidden)`` states leaving the segment."""
        out = Rows(hidden, self.rows.index)
        return {name: out.columns(block) for name, block in zip(self.names, self.blocks)}


def build_segment(run: PrefillRun, start: int, end: int) -> Segment:
    """Pack the live streams of ``run`` and compute what layers ``start..end-1`` share; record their work."""
    names = tuple(run.streams)
    rows, blocks = Rows.pack([run.streams[n] for n in names])
    device = rows.index.device
    stream_of_column = None
    if len(names) > 1:
        stream_of_column = torch.cat([
            torch.full((b.stop - b.start,), i, dtype=torch.long, device=device) for i, b in enumerate(blocks)
        ])
    context = run.context
    n_context = 0 if context is None else context.index.shape[1]
    key_index = rows.index if context is None else torch.cat((context.index, rows.index), dim=1)
    row_roles = run.bound.lookup(run.bound.roles, rows.index)
    split = run.split and len(names) > 1
    run.stats.add_segment(start, end, list(names), rows, list(blocks), key_index[:, :n_context], row_roles,
                          split=split)

    cache_columns = None
    cache_index = key_index
    if len(names) > 1:  # the survivor's cache: shared context columns + its own block
        survivor = blocks[names.index(run.schedule.survivor)]
        own = torch.arange(survivor.start, survivor.stop) + n_context
        cache_columns = torch.cat((torch.arange(n_context), own)).to(device)
        cache_index = key_index[:, cache_columns]
    rotary = run.bound.rotary_positions(rows.index)
    if not split:
        inputs = layer_inputs(run.parts, rows.hidden, rotary, layout_mask(run.parts, rows, context, stream_of_column))
        per_stream = None
    else:  # rotary embeddings once for all streams; each stream's own mask (none where plain causal)
        inputs = layer_inputs(run.parts, rows.hidden, rotary, None)
        per_stream = tuple(
            LayerInputs(layout_mask(run.parts, Rows(rows.hidden[:, b], rows.index[:, b]), context, None),
                        inputs.cos[:, b], inputs.sin[:, b],
                        None if inputs.position_ids is None else inputs.position_ids[:, b])
            for b in blocks
        )
    return Segment(
        start=start, end=end, names=names, blocks=tuple(blocks), rows=rows, inputs=inputs,
        n_context=n_context, key_index=key_index, row_roles=row_roles,
        cache_columns=cache_columns, cache_index=cache_index, split=per_stream, stream_of_column=stream_of_column,
        next_rotary=run.bound.next_rotary,
    )
