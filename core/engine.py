"""The engine: executes a :class:`Schedule` on an unmodified decoder, layer by layer.

This module is the only place that does sequence surgery: it builds the rows of every stream,
their position ids, masks and rotary embeddings, batches the live streams into one call per
layer, applies events between layers, keeps the surviving stream's KV cache and decodes from
it. Policies and partitioners never touch these tensors.

Shared prefix: when more than one stream runs at layer 0, the text before the image is the
same in every stream and, with causal attention, so are its states. The engine then runs
that prefix once (a short pass through all layers) and hands its keys/values to every stream
as context, instead of computing it once per stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from .adapters.base import DecoderParts
from .attention import KVTap, attention_probs, build_attention_mask
from .errors import ScheduleError
from .fusion import FusionInputs, FusionRule, check_weights
from .partition import Partition
from .rows import Rows, pad_stack
from .schedule import EndStream, Event, Fuse, InsertGroup, KeepTop, RemoveGroup, Schedule
from .stats import RunStats
from .tokens import PromptBatch, Role

__all__ = ["Engine", "Prefill", "DecodeState"]

SUPPORTED_ATTENTION = ("sdpa", "eager")


@dataclass
class _Context:
    """Keys/values (per layer) and position ids of tokens every row may attend to."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    index: torch.Tensor  # (rows, C)

    def repeat(self, times: int) -> _Context:
        if times == 1:
            return self
        return _Context(
            [k.repeat(times, 1, 1, 1) for k in self.keys],
            [v.repeat(times, 1, 1, 1) for v in self.values],
            self.index.repeat(times, 1),
        )


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
    image_start: torch.Tensor  # (batch,)

    def lookup(self, table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``table[b, index[r, t]]`` for rows made of ``rows // batch`` stacked streams; -1 at padding."""
        batch = table.shape[0]
        reps = index.shape[0] // batch
        values = table.repeat(reps, 1).gather(1, index.clamp(min=0))
        return values.masked_fill(index < 0, -1)


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
        share = self.share_prefix and len(schedule.layout_at(0)) > 1
        context = self._prefix_pass(bound, stats) if share else None
        streams = {
            s.name: self._initial_rows(bound, partition, s.groups, share, s.name == schedule.survivor)
            for s in schedule.streams
        }
        cache: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        probes = _Probes()
        for start, end, events in schedule.segments():
            for event in events:
                self._apply(event, streams, bound, partition, probes, stats)
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
            state.keys[layer], state.values[layer], state.key_index[layer] = tap.keys, tap.values, key_index
        state.next_position = state.next_position + n
        return self.parts.lm_head(self.parts.norm(hidden)).float()

    # -- binding ---------------------------------------------------------------------------------
    def _bind(
        self, batch: PromptBatch, partition: Partition, schedule: Schedule, tail: list[torch.Tensor] | None
    ) -> _Bound:
        if partition.batch_size != len(batch):
            raise ScheduleError(f"partition is for {partition.batch_size} samples, the batch has {len(batch)}")
        for group in schedule.groups:
            partition.group_id(group)  # raises on a group the partition lacks
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
            emb = emb.index_put((visual,), sample.visual_features.to(emb.device, emb.dtype))
            group = torch.full_like(ids, -1)
            group[visual] = partition.assignment[b].to(device)
            embeds.append(emb)
            roles.append(role)
            groups.append(group)
        return _Bound(
            embeds=pad_stack(embeds, 0.0),
            roles=pad_stack(roles, -1),
            groups=pad_stack(groups, -1),
            lengths=torch.tensor([r.numel() for r in roles], device=device),
            image_start=torch.tensor([s.image_start for s in batch.samples], device=device),
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

    def _mask(self, rows: Rows, context: _Context | None) -> torch.Tensor | None:
        if context is None and bool(rows.valid.all()) and self.parts.attn_implementation == "sdpa":
            return None  # plain causal layout: let SDPA use its causal kernels
        key_index = rows.index if context is None else torch.cat((context.index, rows.index), dim=1)
        return build_attention_mask(rows.index, key_index, rows.hidden.dtype)

    def _prefix_pass(self, bound: _Bound, stats: RunStats) -> _Context | None:
        member = (bound.roles == Role.PREFIX)
        rows = self._gather(bound, member)
        if rows.index.shape[1] == 0:
            return None
        stats.add_prefix(rows.valid.sum(1))
        cos, sin = self.parts.rotary(rows.hidden, rows.positions)
        mask = self._mask(rows, None)
        keys, values = [], []
        hidden = rows.hidden
        for layer in range(len(self.parts.layers)):
            tap = KVTap()
            hidden = self._call_layer(layer, hidden, mask, cos, sin, rows.positions, tap)
            keys.append(tap.keys)
            values.append(tap.values)
        return _Context(keys, values, rows.index)

    def _run_segment(self, start, end, streams, schedule, bound, context, probes, stats, cache, use_cache):
        names = list(streams)
        batch = bound.embeds.shape[0]
        rows = Rows.cat([streams[n] for n in names])
        ctx = context.repeat(len(names)) if context is not None else None
        mask = self._mask(rows, ctx)
        key_index = rows.index if ctx is None else torch.cat((ctx.index, rows.index), dim=1)
        key_roles = bound.lookup(bound.roles, key_index).masked_fill(key_index < 0, -1)
        cos, sin = self.parts.rotary(rows.hidden, rows.positions)
        stats.add_segment(start, end, names, rows, key_index, bound.lookup(bound.roles, rows.index), batch)

        surv = names.index(schedule.survivor) * batch
        wants = self._probe_plan(start, end, names, schedule)
        hidden = rows.hidden
        for layer in range(start, end):
            layer_input = hidden
            tap = KVTap(None if ctx is None else (ctx.keys[layer], ctx.values[layer]))
            hidden = self._call_layer(layer, hidden, mask, cos, sin, rows.positions, tap)
            if use_cache:
                cache.append(
                    (tap.keys[surv : surv + batch], tap.values[surv : surv + batch], key_index[surv : surv + batch])
                )
            for want in wants.get(layer, ()):
                self._probe(want, layer, layer_input, tap.keys, mask, cos, sin, rows, key_roles, names, batch,
                            bound, probes, stats)
        out = Rows(hidden, rows.index)
        for i, name in enumerate(names):
            streams[name] = out.slice_rows(i * batch, (i + 1) * batch)

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

    def _probe(self, event, layer, layer_input, keys, mask, cos, sin, rows, key_roles, names, batch,
               bound, probes, stats) -> None:
        """Recompute attention of a few query rows at ``layer`` (no eager switch, no KV duplicated)."""
        row_roles = bound.lookup(bound.roles, rows.index)
        if isinstance(event, Fuse):
            fused = torch.tensor(Role.FUSED[event.tokens], device=row_roles.device)
            for stream in event.streams:
                r0 = names.index(stream) * batch
                sel = torch.isin(row_roles[r0 : r0 + batch], fused)
                mass = self._attention_to(
                    layer, layer_input, keys, mask, cos, sin, r0, batch, sel, key_roles, Role.VISUAL, stats
                )
                key = (id(event), stream)
                probes.mass_sum[key] = probes.mass_sum.get(key, 0) + mass
                probes.mass_layers[key] = probes.mass_layers.get(key, 0) + 1
        elif isinstance(event, KeepTop):
            r0 = names.index(event.stream) * batch
            prompt = (row_roles[r0 : r0 + batch] >= 0) & (row_roles[r0 : r0 + batch] != Role.TAIL)
            last = prompt.long().cumsum(1).argmax(1)  # last prompt slot of each row
            sel = torch.zeros_like(prompt)
            sel[torch.arange(batch, device=sel.device), last] = True
            probs = self._probs(layer, layer_input, keys, mask, cos, sin, r0, batch, sel, stats)
            own = probs[..., keys.shape[2] - rows.index.shape[1] :]  # drop the context columns
            probes.rank[id(event)] = (rows.index[r0 : r0 + batch], own[:, :, 0].mean(1))  # by position

    def _probs(self, layer, layer_input, keys, mask, cos, sin, r0, batch, sel, stats) -> torch.Tensor:
        """``(batch, heads, q, keys)`` attention of the selected slots of rows ``r0:r0+batch``."""
        slot = pad_stack([torch.nonzero(s).flatten() for s in sel], 0)
        ar = torch.arange(batch, device=slot.device)[:, None]
        r = slice(r0, r0 + batch)
        queries = self.parts.query_rows(layer, layer_input[r][ar, slot], cos[r][ar, slot], sin[r][ar, slot])
        row_mask = None
        if mask is not None:
            row_mask = mask[r][ar, :, slot].transpose(1, 2)
        else:  # plain causal layout: slot t sees slots <= t
            k = keys.shape[2]
            allowed = torch.arange(k, device=slot.device)[None, None, :] <= slot[:, :, None]
            row_mask = torch.zeros(allowed.shape, dtype=layer_input.dtype, device=slot.device)
            row_mask = row_mask.masked_fill(~allowed, torch.finfo(layer_input.dtype).min)[:, None]
        stats.add_probe(layer, sel.sum(1), keys.shape[2])
        return attention_probs(queries, keys[r], row_mask, self.parts.scaling)

    def _attention_to(self, layer, layer_input, keys, mask, cos, sin, r0, batch, sel, key_roles, role, stats):
        """Share of each selected slot's attention (head-averaged) that lands on keys of ``role``."""
        probs = self._probs(layer, layer_input, keys, mask, cos, sin, r0, batch, sel, stats)
        target = (key_roles[r0 : r0 + batch] == role).to(probs.dtype)  # (batch, keys)
        return (probs * target[:, None, None, :]).sum(-1).mean(1)  # (batch, q)

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
            extra = self._gather(bound, member)
            valid = extra.valid
            streams[event.stream] = streams[event.stream].add(
                [extra.hidden[b][valid[b]] for b in range(extra.num_rows)],
                [extra.index[b][valid[b]] for b in range(extra.num_rows)],
            )
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


def _mean_mass(probes: _Probes, event: Fuse, stream: str, token_valid: torch.Tensor) -> torch.Tensor:
    key = (id(event), stream)
    if key not in probes.mass_sum:  # fuse at layer 0: no layer has run, so no attention yet
        return torch.zeros(token_valid.shape, device=token_valid.device)
    mass = probes.mass_sum[key] / probes.mass_layers[key]
    return mass[:, : token_valid.shape[1]]
