"""Shared helpers: references computed with transformers alone, never with the engine."""

from __future__ import annotations

import torch

from vtsched.core import Budget, Scheduler
from vtsched.core.registry import build_registry, make_plugin_manager

PROMPT = "USER: <image>\n{question} ASSISTANT:"
_REGISTRY = None


def registry():
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = build_registry(make_plugin_manager(load_entrypoints=False))
    return _REGISTRY


def scheduler(model, processor, **kwargs) -> Scheduler:
    return Scheduler(model, processor, registry=registry(), **kwargs)


def hf_inputs(processor, image, question):
    return processor(images=[image], text=[PROMPT.format(question=question)], return_tensors="pt")


@torch.inference_mode()
def hf_logits(model, processor, image, question) -> torch.Tensor:
    """transformers' own LLaVA forward: ``(T, vocab)`` logits."""
    return model(**hf_inputs(processor, image, question)).logits[0].float()


def plan(s: Scheduler, batch, policy: str, budget=None, partitioner=None, **params):
    p = s.make_policy(policy, params)
    part = s.make_partitioner(partitioner) if partitioner else None
    return s.plan(batch, p, part, Budget.parse(budget) if budget is not None else None)


def run_logits(s: Scheduler, batch, policy: str, budget=None, partitioner=None, **params) -> torch.Tensor:
    pl = plan(s, batch, policy, budget, partitioner, **params)
    return s.engine.prefill(batch, pl.schedule, pl.partition, use_cache=False).logits
