"""Tiny random models, bound to vtsched, and references computed with transformers alone.

The conformance kits (:mod:`vtsched.core.testing.conformance`) run components on these. A
reference here never goes through the engine: it is the model's own ``forward``/``generate``,
or the model run on a physically shortened sequence that keeps each token's original position id
(what pruning must equal).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import torch

from vtsched.core.testing.strategies import TinyShape, tiny_llava, tiny_llava_shapes
from vtsched.core.tokens import Sample

__all__ = [
    "TinyShape", "tiny_llava", "tiny_llava_shapes", "default_registry", "bound_scheduler", "processor_inputs",
    "model_logits", "model_greedy_tokens", "shortened_logits",
]


@lru_cache(maxsize=1)
def default_registry() -> Any:
    """The registry of the built-ins and every installed plugin (autoloading as configured), built once."""
    from vtsched.core.registry import build_registry, make_plugin_manager

    return build_registry(make_plugin_manager())


_SCHEDULERS: dict[tuple[int, int], tuple[Any, Any, Any]] = {}


def bound_scheduler(model: torch.nn.Module, processor: Any, registry: Any = None) -> Any:
    """A :class:`~vtsched.core.scheduler.Scheduler` for ``model``, cached per model and registry.

    Cached so that calibrations on a fixed data file (which a scheduler remembers) run once per
    model; the model and registry are kept alive with it, so the cache key stays theirs.
    """
    from vtsched.core.scheduler import Scheduler

    registry = registry if registry is not None else default_registry()
    key = (id(model), id(registry))
    if key not in _SCHEDULERS:
        _SCHEDULERS[key] = (model, registry, Scheduler(model, processor, registry=registry))
    return _SCHEDULERS[key][2]


def processor_inputs(processor: Any, prompt_template: str, image: Any, question: str) -> Mapping[str, torch.Tensor]:
    """The model's own inputs for one prompt: ``processor(images=[image], text=[prompt])``."""
    return processor(images=[image], text=[prompt_template.format(question=question)], return_tensors="pt")


@torch.inference_mode()
def model_logits(model: torch.nn.Module, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``(T, vocab)`` logits of the model's own forward on one prompt."""
    return model(**inputs).logits[0].float()


@torch.inference_mode()
def model_greedy_tokens(model: Any, inputs: Mapping[str, torch.Tensor], new_tokens: int) -> list[int]:
    """Exactly ``new_tokens`` greedy tokens from the model's own ``generate`` (no early stop)."""
    out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


@torch.inference_mode()
def shortened_logits(model: Any, sample: Sample, keep: torch.Tensor,
                     features: torch.Tensor | None = None) -> torch.Tensor:
    """``(len(keep), vocab)`` logits of the model on the physically shortened sequence.

    The prompt is embedded, the visual features (``features`` if given, e.g. merged ones) are
    placed at the image tokens, only the positions ``keep`` (sorted sequence indices) are kept,
    and each keeps its original position id: its index, or its ``Sample.rope_positions``
    (``(3, 1, K)`` M-RoPE ids for Qwen2-VL, which its forward accepts as ``position_ids``). Works
    for models whose forward takes ``inputs_embeds`` and ``position_ids``.
    """
    device = next(model.parameters()).device
    embeds = model.get_input_embeddings()(sample.input_ids[None].to(device))
    visual = sample.visual_positions.to(device)
    placed = sample.visual_features if features is None else features
    embeds[0, visual] = placed.to(device, embeds.dtype)
    keep = keep.to(device)
    if sample.rope_positions is None:
        positions = keep[None]
    else:
        rope = sample.rope_positions.to(device)
        positions = rope[keep][None] if rope.dim() == 1 else rope[:, keep][:, None]
    return model(inputs_embeds=embeds[:, keep], position_ids=positions).logits[0].float()
