"""The layer loop: unmodified decoder layers called once per layer on the packed rows.

Each decoder layer of the transformers model is called as transformers calls it (hidden states,
mask, ``(cos, sin)``, position ids, a cache), with a :class:`KVTap` standing in for the cache:
it prepends shared-context keys/values and hands back what the layer attended over, which is
what the decode cache and the attention probes need.

Shared prefix: when several streams run at layer 0, the text before the image is the same in
every stream and, with causal attention, so are its states. :func:`run_prefix` runs it once
through the parallel layers and keeps its keys/values as every stream's context.
"""

from __future__ import annotations

import torch

from vtsched.core.engine.parts import DecoderParts
from vtsched.core.engine.attention import KVBuffer, KVTap
from vtsched.core.engine.binding import gather
from vtsched.core.engine.layout import LayerInputs, Segment, build_segment, layer_inputs, layout_mask
from vtsched.core.engine.probes import plan_probes
from vtsched.core.engine.rows import Rows
from vtsched.core.engine.run import Context, PrefillRun
from vtsched.core.tokens import Role

__all__ = ["call_layer", "run_prefix", "run_segment"]


def call_layer(
    parts: DecoderParts, layer: int, hidden: torch.Tensor, inputs: LayerInputs, tap: KVTap | KVBuffer
) -> torch.Tensor:
    """Decoder layer ``layer`` on ``(rows, T, hidden)`` states; returns its ``(rows, T, hidden)`` output.

    ``tap`` stands in for transformers' cache: it supplies past keys/values and keeps what the layer attended over.
    """
    out = parts.layers[layer](
        hidden,
        attention_mask=inputs.mask,
        position_embeddings=(inputs.cos, inputs.sin),
        position_ids=inputs.position_ids,
        cache=tap,
    )
    return out[0] if isinstance(out, tuple) else out


def run_prefix(run: PrefillRun, until: int) -> None:
    """Run the text before the image through layers ``[0, until)`` once, for every stream.

    Sets ``run.context`` (its keys/values per layer) and ``run.prefix`` (its states entering
    layer ``until``, where it joins the surviving stream); both stay ``None`` without a prefix.
    """
    rows = gather(run.bound, run.bound.roles == Role.PREFIX)
    if rows.index.shape[1] == 0:
        return
    run.stats.add_prefix(rows.valid.sum(1), until)
    rotary = run.bound.rotary_positions(rows.index)
    inputs = layer_inputs(run.parts, rows.hidden, rotary, layout_mask(run.parts, rows, None, None))
    keys: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    hidden = rows.hidden
    for layer in range(until):
        tap = KVTap()
        hidden = call_layer(run.parts, layer, hidden, inputs, tap)
        assert tap.keys is not None and tap.values is not None
        keys.append(tap.keys)
        values.append(tap.values)
    run.context = Context(keys, values, rows.index)
    run.prefix = Rows(hidden, rows.index)


def run_segment(run: PrefillRun, start: int, end: int) -> None:
    """Layers ``start..end-1`` (no event between them) on the live streams, packed one row per sample."""
    segment = build_segment(run, start, end)
    probes = plan_probes(run, segment)
    hidden = segment.rows.hidden
    for layer in range(start, end):
        past = None if run.context is None else run.context.past(layer)
        if segment.split is None:
            tap = KVTap(past)
            layer_input, hidden = hidden, call_layer(run.parts, layer, hidden, segment.inputs, tap)
        else:
            needs_kv = run.use_cache or layer in probes  # else nobody reads the packed keys/values
            layer_input, hidden, tap = hidden, *_split_call(run.parts, layer, hidden, segment, past, needs_kv)
        if run.use_cache:
            run.cache.append(segment.cache_entry(tap))
        for probe in probes.get(layer, ()):
            assert tap.keys is not None
            probe.read(run, layer, layer_input, tap.keys)
    run.streams.update(segment.unpack(hidden))


def _split_call(
    parts: DecoderParts, layer: int, hidden: torch.Tensor, segment: Segment,
    past: tuple[torch.Tensor, torch.Tensor] | None, needs_kv: bool = True,
) -> tuple[torch.Tensor, KVTap]:
    """Layer ``layer`` once per stream on its column block; the outputs and (when ``needs_kv``) the
    keys/values laid out as one packed call would leave them (context, then each block), for the
    cache and the probes. Without ``needs_kv`` the packing copy is skipped."""
    assert segment.split is not None
    outputs, keys, values = [], [], []
    n_context = 0 if past is None else past[0].shape[2]
    for block, inputs in zip(segment.blocks, segment.split):
        tap = KVTap(past)
        outputs.append(call_layer(parts, layer, hidden[:, block], inputs, tap))
        assert tap.keys is not None and tap.values is not None
        keys.append(tap.keys[:, :, n_context:])
        values.append(tap.values[:, :, n_context:])
    packed = KVTap()
    if not needs_kv:
        return torch.cat(outputs, dim=1), packed
    packed.keys = torch.cat(([past[0]] if past is not None else []) + keys, dim=2)
    packed.values = torch.cat(([past[1]] if past is not None else []) + values, dim=2)
    return torch.cat(outputs, dim=1), packed
