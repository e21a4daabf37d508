"""Generation: prefill by the schedule, then decode from the surviving stream's cache."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from vtsched.core.engine import Engine, Prefill
from vtsched.core.errors import VtschedError
from vtsched.core.partition import Partition
from vtsched.core.schedule import Schedule
from vtsched.core.tokens import PromptBatch

__all__ = ["GenerationConfig", "Generated", "generate"]


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding options. ``do_sample=False`` is greedy; sampling uses transformers' warpers."""

    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise VtschedError("max_new_tokens must be >= 0")
        if self.do_sample and self.temperature <= 0:
            raise VtschedError("temperature must be > 0 when sampling")
        if not 0.0 < self.top_p <= 1.0:
            raise VtschedError("top_p must be in (0, 1]")

    def warpers(self) -> LogitsProcessorList:
        warpers = LogitsProcessorList()
        if self.do_sample:
            if self.temperature != 1.0:
                warpers.append(TemperatureLogitsWarper(self.temperature))
            if self.top_k > 0:
                warpers.append(TopKLogitsWarper(self.top_k))
            if self.top_p < 1.0:
                warpers.append(TopPLogitsWarper(self.top_p))
        return warpers


@dataclass
class Generated:
    """New tokens per sample (a stop token included, as transformers does), and the prefill."""

    tokens: list[list[int]]
    prefill: Prefill
    step_logits: list[torch.Tensor] = field(default_factory=list)  # per step (batch, vocab)


def generate(
    engine: Engine,
    batch: PromptBatch,
    schedule: Schedule,
    partition: Partition,
    config: GenerationConfig = GenerationConfig(),
    keep_logits: bool = False,
) -> Generated:
    """Prefill, then decode step by step; each sample stops at its own stop token."""
    prefill = engine.prefill(batch, schedule, partition, use_cache=config.max_new_tokens > 1)
    logits = prefill.logits
    size = logits.shape[0]
    device = logits.device
    generator = None
    if config.do_sample:
        generator = torch.Generator(device=device)
        generator.manual_seed(config.seed if config.seed is not None else torch.seed())
    warpers = config.warpers()
    stops = torch.tensor(config.stop_token_ids, dtype=torch.long, device=device)
    done = torch.zeros(size, dtype=torch.bool, device=device)
    tokens: list[list[int]] = [[] for _ in range(size)]
    history = torch.zeros((size, 0), dtype=torch.long, device=device)
    result = Generated(tokens, prefill)
    for step in range(config.max_new_tokens):
        if keep_logits:
            result.step_logits.append(logits)
        if config.do_sample:
            scores = warpers(history, logits)  # type: ignore[arg-type]
            nxt = torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator).squeeze(1)
        else:
            nxt = logits.argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, config.pad_token_id), nxt)
        for b, (token, finished) in enumerate(zip(nxt.tolist(), done.tolist())):  # not one device read per sample
            if not finished:
                tokens[b].append(token)
        history = torch.cat((history, nxt[:, None]), dim=1)
        done |= torch.isin(nxt, stops)
        if bool(done.all()) or step == config.max_new_tokens - 1:
            break
        assert prefill.state is not None
        logits = engine.extend(prefill.state, nxt[:, None])[:, -1]
    return result
