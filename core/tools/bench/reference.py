"""transformers' references: its language model run directly on the same input embeddings (the full prompt,
and the prompt shortened to the smallest ``prune`` case's kept tokens) and its ``generate``, timed in the
bench's loop and compared with the engine's outputs."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList
from vtsched.core.planner import Plan
from vtsched.core.scheduler import Scheduler
from vtsched.core.tokens import PromptBatch, Role, Sample
from vtsched.core.tools.bench.case import case_label
from vtsched.core.tools.bench.clock import Clock
from vtsched.core.tools.bench.results import ReferenceResult

if TYPE_CHECKING:
    from vtsched.core.tools.bench.measurement import Bench

__all__ = ["Reference", "references"]


@dataclass
class Reference:
    """A reference job: its result, and a call returning ``(seconds, output)`` for one run."""

    result: ReferenceResult
    run: Callable[[], tuple[float, torch.Tensor]]
    output: torch.Tensor | None = None


def references(scheduler: Scheduler, batch: PromptBatch, bench: Bench, clock: Clock) -> list[Reference]:
    """transformers' forward on the full and the shortened prompt, and its ``generate``, where they apply.

    Families whose rotary ids are not positions (Qwen2-VL's M-RoPE) get their own ids as
    ``position_ids``, and no ``generate`` reference: from embeddings alone it cannot rebuild them.
    """
    lm = getattr(scheduler.adapter, "language_model", None)
    if lm is None or len({s.length for s in batch.samples}) != 1:
        return []  # needs the model's own language model, and prompts that need no padding
    head = scheduler.engine.parts.lm_head
    embeds = _merged_embeddings(lm, batch)
    rows = torch.arange(embeds.shape[0], device=embeds.device)[:, None]
    positions = torch.arange(embeds.shape[1], device=embeds.device)[None].expand(embeds.shape[0], -1)
    rope = _rope_positions(batch, embeds.device)  # (R, batch, T) where rotary ids are not positions
    labels = [case_label(r.case) for r in bench.results]
    refs = []
    if "full" in labels:
        ids = positions if rope is None else rope
        refs.append(Reference(ReferenceResult("forward", "full"),
                               partial(_timed, clock, partial(_forward, lm, head, embeds, ids))))
    shortened = _smallest_prune(bench)
    if shortened is not None:
        label, kept = shortened
        ids = kept if rope is None else rope[..., rows, kept]
        refs.append(Reference(ReferenceResult("forward-shortened", label),
                               partial(_timed, clock, partial(_forward, lm, head, embeds[rows, kept], ids))))
    if "full" in labels and bench.decode_tokens > 0 and rope is None:  # generate would recompute M-RoPE ids
        model = scheduler.adapter.model
        refs.append(Reference(ReferenceResult("generate", "full"),
                               partial(_generate, model, embeds, bench.decode_tokens, clock.cuda)))
    return refs


def _merged_embeddings(lm: Any, batch: PromptBatch) -> torch.Tensor:
    """``(batch, T, hidden)`` the language model's input embeddings with the image features in place."""
    embed = lm.get_input_embeddings()
    device = next(embed.parameters()).device
    with torch.inference_mode():
        embeds = embed(torch.stack([s.input_ids for s in batch.samples]).to(device))
        for b, sample in enumerate(batch.samples):
            embeds[b, sample.visual_positions.to(device)] = sample.visual_features.to(device, embeds.dtype)
    return embeds


def _rope_positions(batch: PromptBatch, device: torch.device) -> torch.Tensor | None:
    """``(R, batch, T)`` the samples' own rotary ids (``Sample.rope_positions``), or ``None`` where they are positions."""
    if all(s.rope_positions is None for s in batch.samples):
        return None
    ids = [s.rope_positions if s.rope_positions is not None else torch.arange(s.length) for s in batch.samples]
    rope = torch.stack([i.reshape(-1, i.shape[-1]) for i in ids], dim=1).to(device)
    return rope[0] if rope.shape[0] == 1 else rope


def _smallest_prune(bench: Bench) -> tuple[str, torch.Tensor] | None:
    """The ``prune`` case keeping the fewest tokens, and ``(batch, T')`` positions of the tokens it keeps."""
    best: tuple[str, torch.Tensor] | None = None
    for i, r in enumerate(bench.results):
        if r.case.policy != "prune" or r.case.partitioner:
            continue
        plan = bench.plan(i)
        kept = [_kept_positions(plan, b, sample) for b, sample in enumerate(bench.batch.samples)]
        if plan.schedule.events or len({k.numel() for k in kept}) != 1:
            continue  # not a plain prune, or samples keep different counts (would need padding)
        if best is None or kept[0].numel() < best[1].shape[1]:
            best = (case_label(r.case), torch.stack(kept))
    return best


def _kept_positions(plan: Plan, b: int, sample: Sample) -> torch.Tensor:
    """Positions of sample ``b``'s text tokens and of the visual tokens the surviving stream starts with."""
    survivor = next(s for s in plan.schedule.streams if s.name == plan.schedule.survivor)
    groups = torch.tensor([plan.partition.group_id(g) for g in survivor.groups], dtype=torch.long)
    keep = sample.roles != Role.VISUAL
    keep[sample.visual_positions[torch.isin(plan.partition.assignment[b].cpu(), groups)]] = True
    device = sample.visual_features.device
    return torch.nonzero(keep).flatten().to(device)


def _timed(clock: Clock, fn: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    out, seconds = clock(fn)
    return seconds, out


def _forward(lm: Any, head: torch.nn.Module, embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """transformers' language model on ``(batch, T, hidden)`` embeddings; ``(batch, vocab)`` next-token logits.

    ``use_cache=True`` as in a real prefill; it also keeps transformers from reading position ids
    with gaps (a shortened prompt) as several packed sequences.
    """
    with torch.inference_mode():
        hidden = lm(inputs_embeds=embeds, position_ids=positions, use_cache=True).last_hidden_state
        return head(hidden[:, -1]).float()


class _StepClock(LogitsProcessor):
    """Stamps the time whenever ``generate`` has new logits: after the prefill and after each decode step."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.stamps: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.cuda:
            torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())
        return scores


def _generate(model: Any, embeds: torch.Tensor, steps: int, cuda: bool) -> tuple[float, torch.Tensor]:
    """transformers' greedy ``generate`` for ``steps`` decode steps after the prefill's token.

    Returns seconds per decode step (prefill excluded) and the ``(batch, steps + 1)`` tokens.
    """
    clock = _StepClock(cuda)
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    with torch.inference_mode():
        out = model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=steps + 1,
                             min_new_tokens=steps + 1, do_sample=False, eos_token_id=None, pad_token_id=0,
                             logits_processor=LogitsProcessorList([clock]))
    return (clock.stamps[-1] - clock.stamps[0]) / steps, out[:, -(steps + 1):]
