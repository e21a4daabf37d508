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

__all__ = ["GenerationConfig", "Generated", "HiddenStates", "generate"]


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


@dataclass(frozen=True)
class HiddenStates:
    """Last-layer states that generation computed anyway, after the decoder's final norm (what
    transformers returns as ``hidden_states[-1]``), per sample.

    Attributes:
        states: per sample, ``(n, hidden)``: the prompt positions asked for that ran in the
            surviving stream, then every generated token in order.
        positions: per sample, ``(n,)`` their positions in the sample as given: the prompt's own,
            then ``length + i`` for the i-th generated token.
    """

    states: list[torch.Tensor]
    positions: list[torch.Tensor]

    def at(self, sample: int, position: int) -> torch.Tensor | None:
        """The ``(hidden,)`` state at ``position`` of ``sample``, or ``None`` if it is not among those returned."""
        found = torch.nonzero(self.positions[sample] == position).flatten()
        return self.states[sample][int(found[0])] if found.numel() else None


@dataclass
class Generated:
    """New tokens per sample (a stop token included, as transformers does), and the prefill;
    ``hidden_states`` when :func:`generate` was asked for them."""

    tokens: list[list[int]]
    prefill: Prefill
    step_logits: list[torch.Tensor] = field(default_factory=list)  # per step (batch, vocab)
    hidden_states: HiddenStates | None = None


def generate(
    engine: Engine,
    batch: PromptBatch,
    schedule: Schedule,
    partition: Partition,
    config: GenerationConfig = GenerationConfig(),
    keep_logits: bool = False,
    hidden_states: int | None = None,
) -> Generated:
    """Prefill, then decode step by step; each sample stops at its own stop token.

    ``hidden_states=N`` also returns (:class:`HiddenStates`) the normed last-layer states of each
    sample's last ``N`` prompt positions and of every generated token, read from what the prefill
    and the decoding steps computed (no second pass; the last generated token is fed once more so
    that its state exists). ``None``: none are kept.
    """
    if hidden_states is not None and hidden_states < 0:
        raise VtschedError(f"hidden_states must be >= 0 (prompt positions), not {hidden_states}")
    keep_states = hidden_states is not None
    use_cache = config.max_new_tokens > 1 or (keep_states and config.max_new_tokens > 0)
    prefill = engine.prefill(batch, schedule, partition, use_cache=use_cache, return_hidden=keep_states)
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
    fed: list[torch.Tensor] = []  # per decoding step, (batch, hidden) normed states of the token fed
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
        last = bool(done.all()) or step == config.max_new_tokens - 1
        if last and not keep_states:
            break
        assert prefill.state is not None
        if keep_states:
            with torch.inference_mode():  # the engine's tensors; the norm's weights may require grad
                normed = engine.parts.norm(engine.extend_states(prefill.state, nxt[:, None]))
                logits = engine.parts.lm_head(normed).float()[:, -1]  # extend's logits, from the same states
            fed.append(normed[:, -1])
        else:
            logits = engine.extend(prefill.state, nxt[:, None])[:, -1]
        if last:
            break
    if hidden_states is not None:
        result.hidden_states = _hidden_states(engine, batch, prefill, hidden_states, fed, tokens)
    return result


@torch.inference_mode()
def _hidden_states(engine: Engine, batch: PromptBatch, prefill: Prefill, last: int, fed: list[torch.Tensor],
                   tokens: list[list[int]]) -> HiddenStates:
    """Per sample: the normed prefill states of the last ``last`` prompt positions that ran in the
    surviving stream, then those of its generated tokens (``fed[i][b]``: the i-th token)."""
    assert prefill.hidden is not None and prefill.index is not None
    states, positions = [], []
    for b, sample in enumerate(batch.samples):
        index = prefill.index[b]
        wanted = (index >= sample.length - last) & (index >= 0)
        prompt = engine.parts.norm(prefill.hidden[b, wanted])
        generated = [fed[i][b] for i in range(len(tokens[b]))]
        states.append(torch.cat((prompt, *(g[None] for g in generated))) if generated else prompt)
        tail = torch.arange(sample.length, sample.length + len(generated), device=index.device)
        positions.append(torch.cat((index[wanted], tail)))
    return HiddenStates(states, positions)
