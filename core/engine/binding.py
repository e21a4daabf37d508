"""Binding a prompt batch to a partition: the per-token tables every other engine module reads.

Samples arrive as token ids, roles and visual features; a partition gives each visual token a
group. Binding turns them, once per prefill, into padded tables on the model's device (layer-0
embeddings, roles, group ids, rotary ids), indexed by a token's *original position*. Every later
step (initial stream rows, events, probes, statistics) addresses tokens by position through
these tables, so no other module needs to know how a sample is laid out.

Two orders are kept apart: a token's place in the prompt (its position, which orders causal
attention, masks and the cache) and its rotary ids. They are the same for LLaMA-style models;
where a family's rotary ids differ (Qwen2-VL's M-RoPE, ``Sample.rope_positions``), kept tokens
keep the ids they had in the full prompt, and tail tokens continue after the largest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vtsched.core.engine.parts import DecoderParts
from vtsched.core.engine.rows import Rows, pad_stack
from vtsched.core.errors import ScheduleError
from vtsched.core.partition import Partition
from vtsched.core.schedule import Schedule
from vtsched.core.tokens import PromptBatch, Role

__all__ = ["Bound", "bind", "initial_rows", "gather"]


@dataclass(frozen=True)
class Bound:
    """A prompt batch bound to a partition: per-token lookup tables on the model's device.

    Attributes:
        embeds: ``(batch, T_max, hidden)`` layer-0 input embeddings, visual features in place.
        roles: ``(batch, T_max)`` :class:`~vtsched.core.tokens.Role` codes, ``-1`` past the end.
        groups: ``(batch, T_max)`` partition group id of visual tokens, ``-1`` elsewhere.
        lengths: ``(batch,)`` prompt length (tail included).
        rope: ``(R, batch, T_max)`` rotary ids, or ``None`` when a token's rotary id is its position.
        next_rotary: ``(batch,)`` rotary id of the first token after the prompt.
        origin: ``(batch, T_max)`` each slot's position in the sample as given (``-1`` for tokens an
            event made), or ``None`` while that is the slot itself (it differs once an event inserts
            slots: :mod:`.copies`).
    """

    embeds: torch.Tensor
    roles: torch.Tensor
    groups: torch.Tensor
    lengths: torch.Tensor
    rope: torch.Tensor | None
    next_rotary: torch.Tensor
    origin: torch.Tensor | None = None

    def lookup(self, table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``table[b, index[b, t]]`` for ``(rows, T)`` positions ``index``; ``-1`` at padding."""
        return table.gather(1, index.clamp(min=0)).masked_fill(index < 0, -1)

    def fused(self, index: torch.Tensor, tokens: str) -> torch.Tensor:
        """``(rows, T)`` which slots at ``index`` are text tokens of kind ``tokens`` (a ``fuse``/``carry``
        event's ``tokens``): by role for ``"question"`` and ``"post_image"``; for ``"last"`` the
        prompt's last token (tail and carried copies are not the prompt's)."""
        roles = self.lookup(self.roles, index)
        if tokens != "last":
            return torch.isin(roles, torch.tensor(Role.FUSED[tokens], device=roles.device))
        prompt = (self.roles >= 0) & (self.roles != Role.TAIL) & (self.roles != Role.CARRIED)
        slots = torch.arange(prompt.shape[1], device=prompt.device).expand_as(prompt)
        last = torch.where(prompt, slots, -1).amax(1)  # (batch,) slot of each sample's last prompt token
        return (index == last[:, None]) & (index >= 0)

    def given(self) -> torch.Tensor:
        """``(batch, T_max)`` which slots hold tokens of the prompt as given (tail included; a carried copy
        copies one). Tokens an event made have no position in the sample (``origin`` -1: a ``recycle``'s
        merged tokens) and are not: they have no layer-0 embedding for an ``insert`` to start from."""
        return self.roles >= 0 if self.origin is None else self.origin >= 0

    def rotary_positions(self, index: torch.Tensor) -> torch.Tensor:
        """Rotary ids of the slots at ``(rows, T)`` positions ``index``: ``(rows, T)``, or ``(R, rows, T)``
        for multi-row rotary embeddings (padding slots read position 0's)."""
        positions = index.clamp(min=0)
        if self.rope is None:
            return positions
        ids = self.rope.gather(2, positions[None].expand(self.rope.shape[0], -1, -1))
        return ids[0] if ids.shape[0] == 1 else ids


def bind(
    parts: DecoderParts,
    batch: PromptBatch,
    partition: Partition,
    schedule: Schedule,
    tail: list[torch.Tensor] | None,
) -> Bound:
    """Embed every sample (tail tokens appended, visual features in place); tabulate roles, groups, rotary ids.

    Raises :class:`~vtsched.core.errors.ScheduleError` when the partition does not fit the batch
    or lacks a group the schedule names.
    """
    if partition.batch_size != len(batch):
        raise ScheduleError(f"partition is for {partition.batch_size} samples, the batch has {len(batch)}")
    for name in schedule.groups:
        partition.group_id(name)  # raises on a group the partition lacks
    embed_tokens = parts.embed_tokens
    device = next(embed_tokens.parameters()).device
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
        emb = embed_tokens(ids)
        visual = torch.nonzero(role == Role.VISUAL).flatten()
        features = sample.visual_features
        override = partition.features[b] if partition.features is not None else None
        if override is not None:  # merged tokens (visionzip) replace the features they stand for
            replaced, values = override
            # a partitioner may compute the merged values on the CPU (visionzip does): they join the
            # features where those live, or index_put fails on a GPU
            features = features.index_put((replaced.to(features.device),), values.to(features.device, features.dtype))
        emb = emb.index_put((visual,), features.to(emb.device, emb.dtype))
        group_ids = torch.full_like(ids, -1)
        group_ids[visual] = partition.assignment[b].to(device)
        embeds.append(emb)
        roles.append(role)
        groups.append(group_ids)
    lengths = torch.tensor([r.numel() for r in roles], device=device)
    rope, next_rotary = _rotary_ids(batch, tail, parts.rope_rows, device)
    return Bound(
        embeds=pad_stack(embeds, 0.0),
        roles=pad_stack(roles, -1),
        groups=pad_stack(groups, -1),
        lengths=lengths,
        rope=rope,
        next_rotary=lengths.clone() if next_rotary is None else next_rotary,
    )


def _rotary_ids(
    batch: PromptBatch, tail: list[torch.Tensor] | None, rows: int, device: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(R, batch, T_max)`` rotary ids and ``(batch,)`` the next one, or ``(None, None)`` when all are positions.

    A sample without ``rope_positions`` counts by position; tail tokens continue after the
    prompt's largest id, the same id on every row (as a family's own decoding does).
    """
    if all(sample.rope_positions is None for sample in batch.samples):
        return None, None
    ids, nexts = [], []
    for b, sample in enumerate(batch.samples):
        own = sample.rope_positions
        own = torch.arange(sample.length) if own is None else own.to(torch.long)
        own = own.reshape(-1, sample.length).expand(rows, -1).to(device)
        after = int(own.max()) + 1 if own.numel() else 0
        extra = 0 if tail is None else tail[b].numel()
        tail_ids = (after + torch.arange(extra, device=device))[None].expand(rows, -1)
        ids.append(torch.cat((own, tail_ids), dim=1).T)
        nexts.append(after + extra)
    rope = pad_stack(ids, 0).permute(2, 0, 1)  # (R, batch, T_max)
    return rope.contiguous(), torch.tensor(nexts, device=device)


def initial_rows(
    bound: Bound, partition: Partition, groups: tuple[str, ...], *, share_prefix: bool, survivor: bool
) -> Rows:
    """The rows a stream starts with: its text tokens and the visual tokens of ``groups``.

    Only the surviving stream carries the tail; with ``share_prefix`` the text before the image
    is left out (it runs once, as context, in the shared prefix pass).
    """
    ids = torch.tensor([partition.group_id(g) for g in groups], device=bound.groups.device, dtype=torch.long)
    text = (bound.roles >= 0) & (bound.roles != Role.VISUAL)
    if not survivor:
        text &= bound.roles != Role.TAIL
    if share_prefix:
        text &= bound.roles != Role.PREFIX
    return gather(bound, text | torch.isin(bound.groups, ids))


def gather(bound: Bound, member: torch.Tensor) -> Rows:
    """Rows of the layer-0 embeddings at the positions where ``member`` (``(batch, T_max)`` bool) holds."""
    positions = [torch.nonzero(m).flatten() for m in member]
    return Rows.from_parts([bound.embeds[b, p] for b, p in enumerate(positions)], positions)
