"""The engine: executes a :class:`Schedule` on an unmodified decoder, layer by layer.

This module is the only place that does sequence surgery: it builds the rows of every stream,
their position ids, masks and rotary embeddings, batches the live streams into one call per
layer, applies events between layers, keeps the surviving stream's KV cache and decodes from
it. Policies and partitioners never touch these tensors.

Parallel streams are packed into one row per sample (a block mask keeps them apart), so a layer
costs exactly the tokens the streams carry. Shared prefix: when more than one stream runs at
layer 0, the text before the image is the same in every stream and, with causal attention, so
are its states. The engine runs that prefix once through the parallel layers, hands its
keys/values to every stream as context, and lets it join the surviving stream as ordinary
tokens when that stream is left alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from vtsched.core.adapters.base import DecoderParts
from vtsched.core.engine.attention import KVTap, attention_probs, build_attention_mask
from vtsched.core.errors import ScheduleError
from vtsched.core.fusion import FusionInputs, FusionRule, check_weights
from vtsched.core.partition import Partition
from vtsched.core.engine.rows import Rows, pad_stack
from vtsched.core.schedule import EndStream, Event, Fuse, InsertGroup, KeepTop, RemoveGroup, Schedule
from vtsched.core.engine.stats import RunStats
from vtsched.core.tokens import PromptBatch, Role

__all__ = ["Engine", "Prefill", "DecodeState"]

SUPPORTED_ATTENTION = ("sdpa", "eager")


@dataclass
class _Context:
    """Keys/values (per layer) and position ids of tokens every row may attend to."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    index: torch.Tensor  # (rows, C)



@dataclass
class DecodeState:
    """The surviving stream's cache after prefill: what decoding continues from."""

    keys: list[torch.Tensor]  # per layer (batch, kv_heads, C_l, head_dim)
    values: list[torch.Tensor]
    key_index: list[torch.Tensor]  # per layer (batch, C_l) positions, -1 = padding
    next_position: torch.Tensor  # (batch,) position id of the next token


@dataclass
class Prefill:
    """Result of a prefill.

    Attributes:
        logits: ``(batch, vocab)`` next-token logits at each sample's last token.
        hidden: ``(batch, T, hidden)`` last-layer states of the surviving stream, before the final
            norm (when asked); ``all_logits`` are their logits.
        index: ``(batch, T)`` positions of those states, ``-1`` for padding (when asked).
        state: the decode cache (when asked).
        stats: token counts of what ran, per layer and stream.
    """

    logits: torch.Tensor
    stats: RunStats
    state: DecodeState | None = None
    hidden: torch.Tensor | None = None
    index: torch.Tensor | None = None
    all_logits: torch.Tensor | None = None


@dataclass
class _Bound:
    """A prompt batch bound to a partition: per-token lookup tables on the model's device."""

    embeds: torch.Tensor  # (batch, T_max, hidden) layer-0 input embeddings
    roles: torch.Tensor  # (batch, T_max) Role codes, -1 past the end
    groups: torch.Tensor  # (batch, T_max) partition group id of visual tokens, -1 elsewhere
    lengths: torch.Tensor  # (batch,) prompt length (tail included)

    def lookup(self, table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``table[b, index[b, t]]``: a per-token property of each slot; -1 at padding."""
        return table.gather(1, index.clamp(min=0)).masked_fill(index < 0, -1)


@dataclass
class _Layout:
    """The packed layout of one run of layers: what probes need to recompute attention rows."""

    rows: Rows
    blocks: list[slice]
    names: list[str]
    mask: torch.Tensor | None
    cos: torch.Tensor
    sin: torch.Tensor
    n_context: int
    key_index: torch.Tensor
    row_roles: torch.Tensor  # (rows, T) Role of each query slot
    key_is_visual: torch.Tensor  # (rows, keys) float 1.0 where the key is a visual token

    def block(self, stream: str) -> slice:
        return self.blocks[self.names.index(stream)]


@dataclass
class _Probes:
    """Per-segment bookkeeping of attention read for fusion weights and token ranking."""

    mass_sum: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)
    mass_layers: dict[tuple[int, str], int] = field(default_factory=dict)
    rank: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


class Engine:
    """Runs schedules on one model through its adapter's :class:`DecoderParts`.

    Args:
        parts: the decoder pieces (from ``adapter.decoder()``).
        fusion_rules: name -> fusion rule class (from the registry).
        share_prefix: compute the common text prefix once when streams run in parallel.
    """

    def __init__(
        self,
        parts: DecoderParts,
        fusion_rules: Mapping[str, type[FusionRule]] | None = None,
        share_prefix: bool = True,
    ) -> None:
        if parts.attn_implementation not in SUPPORTED_ATTENTION:
            raise ScheduleError(
                f"the engine runs with attn_implementation {' or '.join(SUPPORTED_ATTENTION)}, "
                f"not {parts.attn_implementation!r}; load the model with attn_implementation='sdpa'"
            )
        self.parts = parts
        self.fusion_rules = dict(fusion_rules or {})
        self.share_prefix = share_prefix

    # -- public API ------------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(
        self,
        batch: PromptBatch,
        schedule: Schedule,
        partition: Partition,
        *,
        tail: list[torch.Tensor] | None = None,
        use_cache: bool = True,
        return_hidden: bool = False,
    ) -> Prefill:
        """Run the prompt through every layer as ``schedule`` says.

        ``tail`` appends token ids to each sample that only the surviving stream carries and no
        fusion touches: exactly how decoded tokens are treated, so a prefill with the generated
        tokens as tail is the no-cache reference of cached decoding.
        """
        if schedule.num_layers != len(self.parts.layers):
            raise ScheduleError(
                f"schedule is for {schedule.num_layers} layers, the model has {len(self.parts.layers)}"
            )
        bound = self._bind(batch, partition, schedule, tail)
        stats = RunStats(batch_size=len(batch))
        shared_until = _parallel_until(schedule) if self.share_prefix else 0
        share = shared_until > 0
        context, prefix = self._prefix_pass(bound, shared_until, stats) if share else (None, None)
        streams = {
            s.name: self._initial_rows(bound, partition, s.groups, share, s.name == schedule.survivor)
            for s in schedule.streams
        }
        cache: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        probes = _Probes()
        for start, end, events in schedule.segments():
            for event in events:
                self._apply(event, streams, bound, partition, probes, stats)
            if context is not None and start >= shared_until:
                # one stream left: the prefix joins it as ordinary tokens, so the remaining layers
                # run the plain layout (no context, no mask where nothing is padded)
                assert prefix is not None
                streams[schedule.survivor] = streams[schedule.survivor].merge(prefix)
                context = None
            if end > start:
                self._run_segment(start, end, streams, schedule, bound, context, probes, stats, cache, use_cache)

        survivor = streams[schedule.survivor]
        last = survivor.valid.sum(1) - 1
        rows = torch.arange(survivor.num_rows, device=last.device)
        logits = self.parts.lm_head(self.parts.norm(survivor.hidden[rows, last])).float()
        result = Prefill(logits=logits, stats=stats)
        if return_hidden:
            result.hidden, result.index = survivor.hidden, survivor.index
            result.all_logits = self.parts.lm_head(self.parts.norm(survivor.hidden)).float()
        if use_cache:
            result.state = DecodeState(
                keys=[k for k, _, _ in cache],
                values=[v for _, v, _ in cache],
                key_index=[i for _, _, i in cache],
                next_position=bound.lengths.clone(),
            )
        return result

    @torch.inference_mode()
    def extend(self, state: DecodeState, token_ids: torch.Tensor) -> torch.Tensor:
        """Feed ``(batch, n)`` new tokens after the cache; return their ``(batch, n, vocab)`` logits.

        New tokens take the next original positions and attend to the cached keys of each layer
        (the surviving stream's, fused where the schedule fused). ``state`` is updated.
        """
        n = token_ids.shape[1]
        index = state.next_position[:, None] + torch.arange(n, device=token_ids.device)
        rows = Rows(self.parts.embed_tokens(token_ids), index)
        cos, sin = self.parts.rotary(rows.hidden, rows.positions)
        hidden = rows.hidden
        for layer in range(len(self.parts.layers)):
            key_index = torch.cat((state.key_index[layer], index), dim=1)
            mask = build_attention_mask(index, key_index, hidden.dtype)
            tap = KVTap((state.keys[layer], state.values[layer]))
            hidden = self._call_layer(layer, hidden, mask, cos, sin, rows.positions, tap)
            assert tap.keys is not None and tap.values is not None
            state.keys[layer], state.values[layer], state.key_index[layer] = tap.keys, tap.values, key_index
        state.next_position = state.next_position + n
        return self.parts.lm_head(self.parts.norm(hidden)).float()

    # -- binding ---------------------------------------------------------------------------------
    def _bind(
        self, batch: PromptBatch, partition: Partition, schedule: Schedule, tail: list[torch.Tensor] | None
    ) -> _Bound:
        if partition.batch_size != len(batch):
            raise ScheduleError(f"partition is for {partition.batch_size} samples, the batch has {len(batch)}")
        for name in schedule.groups:
            partition.group_id(name)  # raises on a group the partition lacks
        device = next(self.parts.embed_tokens.parameters()).device
        embeds, roles, groups = [], [], []
        for b, sample in enumerate(batch.samples):
            if partition.assignment[b].numel() != sample.num_visual:
                raise ScheduleError(
                    f"sample {b}: partition covers {partition.assignment[b].numel()} visual tokens, "
                    f"the image has {sample.num_visual}"
                )
            ids, role = sample.input_ids.to(device), sample.roles.to(device)
            if tail is not None and tail[b].numel():
                ids = torch.cat((ids, tail[b].to(device)))
                role = torch.cat((role, torch.full_like(tail[b], Role.TAIL, device=device)))
            emb = self.parts.embed_tokens(ids)
            visual = torch.nonzero(role == Role.VISUAL).flatten()
            features = sample.visual_features
            override = partition.features[b] if partition.features is not None else None
            if override is not None:  # merged tokens (visionzip) replace the features they stand for
                replaced, values = override
                features = features.index_put((replaced.to(features.device),), values.to(features.dtype))
            emb = emb.index_put((visual,), features.to(emb.device, emb.dtype))
            group_ids = torch.full_like(ids, -1)
            group_ids[visual] = partition.assignment[b].to(device)
            embeds.append(emb)
            roles.append(role)
            groups.append(group_ids)
        return _Bound(
            embeds=pad_stack(embeds, 0.0),
            roles=pad_stack(roles, -1),
            groups=pad_stack(groups, -1),
            lengths=torch.tensor([r.numel() for r in roles], device=device),
        )

    def _initial_rows(
        self, bound: _Bound, partition: Partition, groups: tuple[str, ...], share: bool, survivor: bool
    ) -> Rows:
        ids = torch.tensor([partition.group_id(g) for g in groups], device=bound.groups.device, dtype=torch.long)
        text = (bound.roles >= 0) & (bound.roles != Role.VISUAL)
        if not survivor:
            text &= bound.roles != Role.TAIL
        if share:
            text &= bound.roles != Role.PREFIX
        member = text | torch.isin(bound.groups, ids)
        return self._gather(bound, member)

    @staticmethod
    def _gather(bound: _Bound, member: torch.Tensor) -> Rows:
        positions = [torch.nonzero(m).flatten() for m in member]
        return Rows.from_parts([bound.embeds[b, p] for b, p in enumerate(positions)], positions)

    # -- the layer loop --------------------------------------------------------------------------
    def _call_layer(self, layer, hidden, mask, cos, sin, positions, tap) -> torch.Tensor:
        out = self.parts.layers[layer](
            hidden,
            attention_mask=mask,
            position_embeddings=(cos, sin),
            position_ids=positions,
            past_key_values=tap,
        )
        return out[0] if isinstance(out, tuple) else out

    def _prefix_pass(self, bound: _Bound, until: int, stats: RunStats) -> tuple[_Context | None, Rows | None]:
        """Run the text before the image through layers ``[0, until)`` once, for every stream.

        Returns its keys/values per layer (the streams' shared context) and its states entering
        layer ``until``, where it joins the surviving stream.
        """
        rows = self._gather(bound, bound.roles == Role.PREFIX)
        if rows.index.shape[1] == 0:
            return None, None
        stats.add_prefix(rows.valid.sum(1), until)
        cos, sin = self.parts.rotary(rows.hidden, rows.positions)
        mask = self._mask(rows, None, None)
        keys: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        hidden = rows.hidden
        for layer in range(until):
            tap = KVTap()
            hidden = self._call_layer(layer, hidden, mask, cos, sin, rows.positions, tap)
            assert tap.keys is not None and tap.values is not None
            keys.append(tap.keys)
            values.append(tap.values)
        return _Context(keys, values, rows.index), Rows(hidden, rows.index)

    def _mask(self, rows: Rows, context: _Context | None, stream_of_column: torch.Tensor | None):
        if (
            context is None and stream_of_column is None and bool(rows.valid.all())
            and self.parts.attn_implementation == "sdpa"
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

    def _run_segment(self, start, end, streams, schedule, bound, context, probes, stats, cache, use_cache):
        """Layers ``start..end-1`` with an unchanged layout: live streams packed into one row per sample."""
        names = list(streams)
        rows, blocks = Rows.pack([streams[n] for n in names])
        stream_of_column = None
        if len(names) > 1:
            stream_of_column = torch.cat([
                torch.full((b.stop - b.start,), i, dtype=torch.long, device=rows.index.device)
                for i, b in enumerate(blocks)
            ])
        mask = self._mask(rows, context, stream_of_column)
        n_context = 0 if context is None else context.index.shape[1]
        key_index = rows.index if context is None else torch.cat((context.index, rows.index), dim=1)
        positions = rows.positions
        cos, sin = self.parts.rotary(rows.hidden, positions)
        row_roles = bound.lookup(bound.roles, rows.index)
        stats.add_segment(start, end, names, rows, blocks, key_index[:, :n_context], row_roles)

        survivor = blocks[names.index(schedule.survivor)]
        keep_columns = None
        if len(names) > 1:  # the survivor's cache: shared context columns + its own block
            keep_columns = torch.cat((torch.arange(n_context), torch.arange(survivor.start, survivor.stop) + n_context))
            keep_columns = keep_columns.to(rows.index.device)
        wants = self._probe_plan(start, end, names, schedule)
        layout = None
        if wants:  # what probes read is fixed for the whole segment: build it once
            key_is_visual = (bound.lookup(bound.roles, key_index) == Role.VISUAL).to(rows.hidden.dtype)
            layout = _Layout(rows, blocks, names, mask, cos, sin, n_context, key_index, row_roles, key_is_visual)
        hidden = rows.hidden
        for layer in range(start, end):
            layer_input = hidden
            tap = KVTap(None if context is None else (context.keys[layer], context.values[layer]))
            hidden = self._call_layer(layer, hidden, mask, cos, sin, positions, tap)
            if use_cache:
                if keep_columns is None:
                    cache.append((tap.keys, tap.values, key_index))
                else:
                    cache.append((tap.keys[:, :, keep_columns], tap.values[:, :, keep_columns],
                                  key_index[:, keep_columns]))
            for want in wants.get(layer, ()):
                assert layout is not None
                self._probe(want, layer, layer_input, tap.keys, layout, probes, stats)
        out = Rows(hidden, rows.index)
        for name, block in zip(names, blocks):
            streams[name] = out.columns(block)

    def _probe_plan(self, start, end, names, schedule) -> dict[int, list[Event]]:
        """Which layers of this segment must read attention, and for which later event."""
        plan: dict[int, list[Event]] = {}
        for event in schedule.events:
            if isinstance(event, Fuse) and event.layer >= end:
                if self._rule(event.rule).needs_attention_mass and all(s in names for s in event.streams):
                    for layer in range(start, end):
                        plan.setdefault(layer, []).append(event)
            elif isinstance(event, KeepTop) and start <= event.layer - 1 < end:
                plan.setdefault(event.layer - 1, []).append(event)
        return plan

    def _probe(self, event, layer, layer_input, keys, layout: _Layout, probes, stats) -> None:
        """Recompute attention of a few query rows at ``layer`` (no eager switch, no KV duplicated)."""
        rows, row_roles = layout.rows, layout.row_roles
        in_block = torch.zeros_like(row_roles, dtype=torch.bool)
        if isinstance(event, Fuse):
            fused = torch.tensor(Role.FUSED[event.tokens], device=row_roles.device)
            for stream in event.streams:
                block = layout.block(stream)
                sel = in_block.clone()
                sel[:, block] = torch.isin(row_roles[:, block], fused)
                probs = self._probs(layer, layer_input, keys, sel, layout, stats)
                # cross-stream keys are masked, so this is the mass on this stream's own visual tokens
                mass = (probs * layout.key_is_visual.to(probs.dtype)[:, None, None, :]).sum(-1).mean(1)
                key = (id(event), stream)
                probes.mass_sum[key] = probes.mass_sum.get(key, 0) + mass
                probes.mass_layers[key] = probes.mass_layers.get(key, 0) + 1
        elif isinstance(event, KeepTop):
            block = layout.block(event.stream)
            prompt = (row_roles >= 0) & (row_roles != Role.TAIL)
            prompt[:, : block.start] = False
            prompt[:, block.stop :] = False
            last = prompt.long().cumsum(1).argmax(1)  # last prompt slot of the stream, per row
            sel = in_block.clone()
            sel[torch.arange(rows.num_rows, device=sel.device), last] = True
            probs = self._probs(layer, layer_input, keys, sel, layout, stats)
            own = probs[..., layout.n_context + block.start : layout.n_context + block.stop]
            probes.rank[id(event)] = (rows.index[:, block], own[:, :, 0].mean(1))  # by position

    def _probs(self, layer, layer_input, keys, sel, layout: _Layout, stats) -> torch.Tensor:
        """``(rows, heads, q, keys)`` attention of the slots selected by ``sel`` (``(rows, T)`` bool)."""
        slot = pad_stack([torch.nonzero(s).flatten() for s in sel], 0)
        ar = torch.arange(sel.shape[0], device=slot.device)[:, None]
        queries = self.parts.query_rows(layer, layer_input[ar, slot], layout.cos[ar, slot], layout.sin[ar, slot])
        if layout.mask is not None:
            row_mask = layout.mask[ar, :, slot].transpose(1, 2)
        else:  # plain causal layout: slot t sees slots <= t
            allowed = torch.arange(keys.shape[2], device=slot.device)[None, None, :] <= slot[:, :, None]
            row_mask = torch.zeros(allowed.shape, dtype=layer_input.dtype, device=slot.device)
            row_mask = row_mask.masked_fill(~allowed, torch.finfo(layer_input.dtype).min)[:, None]
        stats.add_probe(layer, sel.sum(1), keys.shape[2])
        return attention_probs(queries, keys, row_mask, self.parts.scaling)

    # -- events ----------------------------------------------------------------------------------
    def _rule(self, name: str) -> type[FusionRule]:
        try:
            return self.fusion_rules[name]
        except KeyError:
            raise ScheduleError(f"unknown fusion rule {name!r}; known: {sorted(self.fusion_rules)}") from None

    def _apply(self, event: Event, streams: dict[str, Rows], bound: _Bound, partition: Partition,
               probes: _Probes, stats: RunStats) -> None:
        if isinstance(event, EndStream):
            del streams[event.stream]  # releases its states
        elif isinstance(event, RemoveGroup):
            rows = streams[event.stream]
            streams[event.stream] = rows.keep(bound.lookup(bound.groups, rows.index) != partition.group_id(event.group))
        elif isinstance(event, InsertGroup):
            member = bound.groups == partition.group_id(event.group)
            streams[event.stream] = streams[event.stream].merge(self._gather(bound, member))
        elif isinstance(event, KeepTop):
            streams[event.stream] = self._keep_top(event, streams[event.stream], bound, partition, probes)
        elif isinstance(event, Fuse):
            self._fuse(event, streams, bound, probes, stats)
        else:  # pragma: no cover - the schedule validates event types
            raise ScheduleError(f"the engine cannot execute {event!r}")

    def _keep_top(self, event: KeepTop, rows: Rows, bound: _Bound, partition: Partition, probes: _Probes) -> Rows:
        ranked_index, ranked = probes.rank.pop(id(event))
        by_position = torch.full(bound.roles.shape, float("-inf"), device=ranked.device)
        valid = ranked_index >= 0
        by_position[torch.nonzero(valid)[:, 0], ranked_index[valid]] = ranked[valid]
        in_group = bound.lookup(bound.groups, rows.index) == partition.group_id(event.group)
        scores = by_position.gather(1, rows.positions).masked_fill(~in_group, float("-inf"))
        keep = ~in_group
        for b in range(rows.num_rows):
            n = int(in_group[b].sum())
            k = min(n, event.keep) if isinstance(event.keep, int) else int(round(event.keep * n))
            top = torch.sort(-scores[b], stable=True).indices[:k]
            keep[b, top] = True
        return rows.keep(keep)

    def _fuse(self, event: Fuse, streams: dict[str, Rows], bound: _Bound, probes: _Probes, stats: RunStats) -> None:
        fused_roles = torch.tensor(Role.FUSED[event.tokens], device=bound.roles.device)
        slots, states = [], []
        for name in event.streams:
            rows = streams[name]
            sel = torch.isin(bound.lookup(bound.roles, rows.index), fused_roles)
            slot = [torch.nonzero(s).flatten() for s in sel]
            slots.append(slot)
            states.append(pad_stack([rows.hidden[b, s] for b, s in enumerate(slot)], 0.0))
        token_valid = pad_stack([torch.ones(s.numel(), dtype=torch.bool, device=s.device) for s in slots[0]], False)
        counts = torch.stack([
            (bound.lookup(bound.roles, streams[n].index) == Role.VISUAL).sum(1).float() for n in event.streams
        ])
        mass = None
        rule_cls = self._rule(event.rule)
        if rule_cls.needs_attention_mass:
            mass = torch.stack([
                _mean_mass(probes, event, n, token_valid) for n in event.streams
            ])
        inputs = FusionInputs(counts, mass, token_valid, event.streams.index(event.into))
        try:
            rule = rule_cls(**event.param_dict)
        except TypeError as exc:
            raise ScheduleError(f"fusion rule {event.rule!r}: bad parameters {event.param_dict}: {exc}") from None
        weights = check_weights(event.rule, rule.weights(inputs), inputs)
        stats.add_fusion(event.layer, event.streams, weights)
        fused = sum(w[..., None] * s.float() for w, s in zip(weights, states)).to(states[0].dtype)
        target = streams[event.into]
        into_slot = slots[event.streams.index(event.into)]
        b_idx = torch.cat([torch.full_like(s, b) for b, s in enumerate(into_slot)])
        t_idx = torch.cat(into_slot)
        values = torch.cat([fused[b, : s.numel()] for b, s in enumerate(into_slot)])
        streams[event.into] = Rows(target.hidden.index_put((b_idx, t_idx), values), target.index)


def _parallel_until(schedule: Schedule) -> int:
    """First layer entered by a single stream (0 if never parallel). Streams all start at layer 0,
    so once one stream is left it stays alone."""
    for layer in range(schedule.num_layers + 1):
        if len(schedule.layout_at(layer)) == 1:
            return layer
    return schedule.num_layers


def _mean_mass(probes: _Probes, event: Fuse, stream: str, token_valid: torch.Tensor) -> torch.Tensor:
    key = (id(event), stream)
    if key not in probes.mass_sum:  # fuse at layer 0: no layer has run, so no attention yet
        return torch.zeros(token_valid.shape, device=token_valid.device)
    mass = probes.mass_sum[key] / probes.mass_layers[key]
    return mass[:, : token_valid.shape[1]]
