"""Tiny random models, bound to vtsched, and references computed with transformers alone.

The conformance kits (:mod:`vtsched.core.testing.conformance`) run components on these. A
reference here never goes through the engine: it is the model's own ``forward``/``generate``,
or the model run on a physically shortened sequence that keeps each token's original position id
(what pruning must equal), or such sequences run apart and joined by hand (what fusing and carrying
must equal).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import torch

from vtsched.core.testing.strategies import TinyShape, tiny_llava, tiny_llava_shapes
from vtsched.core.tokens import Sample

__all__ = [
    "TinyShape", "tiny_llava", "tiny_llava_shapes", "default_registry", "bound_scheduler", "processor_inputs",
    "model_logits", "model_greedy_tokens", "shortened_logits", "joined_states", "joined_logits", "fused_positions",
    "stream_positions", "layer_embeds", "decoder_slice", "one_sequence", "rotary_ids",
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


def stream_positions(sample: Sample, visual: torch.Tensor) -> torch.Tensor:
    """Sorted positions a stream carries: every text token and the visual tokens numbered ``visual``
    (indices into the image's tokens, e.g. ``Partition.members``)."""
    from vtsched.core.tokens import Role

    text = torch.nonzero(sample.roles != Role.VISUAL).flatten()
    return torch.sort(torch.cat((text, sample.visual_positions[visual]))).values


def fused_positions(sample: Sample, tokens: str) -> set[int]:
    """Positions of the text tokens a ``fuse``/``carry`` event with ``tokens`` acts on, read from roles alone."""
    from vtsched.core.tokens import Role

    roles = sample.roles.tolist()
    if tokens == "last":
        return {len(roles) - 1}
    return {p for p, role in enumerate(roles) if role in Role.FUSED[tokens]}


def layer_embeds(model: Any, sample: Sample) -> torch.Tensor:
    """``(1, T, hidden)`` the prompt's layer-0 inputs: token embeddings, visual features in place."""
    device = next(model.parameters()).device
    embeds = model.get_input_embeddings()(sample.input_ids[None].to(device))
    embeds[0, sample.visual_positions.to(device)] = sample.visual_features.to(device, embeds.dtype)
    return embeds


def rotary_ids(sample: Sample, positions: torch.Tensor) -> torch.Tensor:
    """Position ids for the tokens at ``positions``: the positions, or their ``rope_positions`` (M-RoPE: ``(3, 1, T)``)."""
    if sample.rope_positions is None:
        return positions[None]
    rope = sample.rope_positions.to(positions.device)
    return rope[positions][None] if rope.dim() == 1 else rope[:, positions][:, None]


@contextmanager
def decoder_slice(language_model: Any, layers: Sequence[torch.nn.Module], final_norm: bool) -> Iterator[Any]:
    """The language model's own forward over ``layers`` only (its final norm optional), for references."""
    saved_layers, saved_norm = language_model.layers, language_model.norm
    language_model.layers = torch.nn.ModuleList(layers)
    if not final_norm:
        language_model.norm = torch.nn.Identity()
    try:
        yield language_model
    finally:
        language_model.layers, language_model.norm = saved_layers, saved_norm


def one_sequence(ids: torch.Tensor) -> torch.Tensor:
    """An all-ones 2-D mask. Without a mask or a cache, transformers reads position ids that do not step
    by one as several packed sequences; the shortened or repeated ids here are one sequence."""
    return torch.ones(ids.shape[-2:], dtype=torch.long, device=ids.device)


@torch.inference_mode()
def joined_states(model: Any, language_model: Any, sample: Sample, keeps: Sequence[torch.Tensor], drop_layer: int, *,
                  averaged: Collection[int] = (), alpha: float = 1.0,
                  carried: Collection[int] = ()) -> tuple[list[int], torch.Tensor]:
    """Streams run apart up to ``drop_layer``, then joined by hand: ``(positions, (T, hidden) states)``
    of the joined sequence after the last layer and the final norm (a position twice where carried).

    ``keeps[0]`` are the surviving stream's positions (sorted), ``keeps[1]`` (if given) the other
    stream's. Each runs as a physically shortened sequence through the language model's own
    forward over layers ``< drop_layer`` (original position ids). Then the surviving stream's state
    of each position in ``averaged`` becomes ``alpha * own + (1 - alpha) * other`` (``fixed``
    fusion; the caller passes ``alpha = 1`` when the other stream has no visual token), and before
    each position in ``carried`` the other stream's state is inserted with the same position id.
    The joined sequence runs the model's own forward over the remaining layers and its final norm.
    ``language_model`` is the decoder (``.layers``, ``.norm``).
    """
    embeds = layer_embeds(model, sample)
    device = embeds.device
    layers = list(language_model.layers)
    streams = []
    for keep in keeps:
        keep = keep.to(device)
        ids = rotary_ids(sample, keep)
        with decoder_slice(language_model, layers[:drop_layer], final_norm=False) as lm:
            out = lm(inputs_embeds=embeds[:, keep], position_ids=ids, attention_mask=one_sequence(ids),
                     use_cache=False).last_hidden_state
        streams.append(dict(zip(keep.tolist(), out[0])))
    mine, theirs = streams[0], (streams[1] if len(streams) > 1 else {})
    rows, positions = [], []
    for p in keeps[0].tolist():
        if p in carried:
            rows.append(theirs[p])
            positions.append(p)
        rows.append(alpha * mine[p] + (1.0 - alpha) * theirs[p] if p in averaged else mine[p])
        positions.append(p)
    ids = rotary_ids(sample, torch.tensor(positions, device=device))
    with decoder_slice(language_model, layers[drop_layer:], final_norm=True) as lm:
        out = lm(inputs_embeds=torch.stack(rows)[None], position_ids=ids, attention_mask=one_sequence(ids),
                 use_cache=False)
    return positions, out.last_hidden_state[0]


@torch.inference_mode()
def joined_logits(model: Any, language_model: Any, sample: Sample, keeps: Sequence[torch.Tensor], drop_layer: int, *,
                  averaged: Collection[int] = (), alpha: float = 1.0, carried: Collection[int] = ()) -> torch.Tensor:
    """``(vocab,)`` last-token logits of :func:`joined_states` (the model's own head)."""
    _, states = joined_states(model, language_model, sample, keeps, drop_layer, averaged=averaged, alpha=alpha,
                              carried=carried)
    return model.lm_head(states[-1]).float()
