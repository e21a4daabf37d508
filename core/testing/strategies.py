"""Hypothesis strategies and helpers for testing vtsched and its plugins.

Strategies are keyword-only and valid by construction with small bounds, so a plugin author can
reuse them: ``tiny_llava_shapes()``, ``prompts()``, ``budgets()``, ``schedules()``.
Models are built with random weights and cached per shape, so a property can draw shapes freely.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from hypothesis import strategies as st

from vtsched.core.demo.shapes import QUESTION_WORDS, SHAPES, Shape, build_random_llava, random_image
from vtsched.core.schedule import EndStream, Fuse, InsertGroup, RemoveGroup, Schedule, Stream

__all__ = [
    "TinyShape", "tiny_llava_shapes", "tiny_llava", "random_image", "prompts", "budgets", "schedules",
    "QUESTION_WORDS",
]



@dataclass(frozen=True)
class TinyShape:
    """Parameters of a tiny random LLaVA, hashable so models can be cached."""

    layers: int = 2
    heads: int = 2
    kv_heads: int = 2
    head_dim: int = 8
    image_size: int = 28
    vision_layers: int = 2
    seed: int = 0

    def shape(self) -> Shape:
        return Shape(
            "tiny", self.image_size, 14, 16, self.vision_layers, 2, 32,
            self.heads * self.head_dim, self.layers, self.heads, self.kv_heads, 2 * self.heads * self.head_dim,
        )


@st.composite
def tiny_llava_shapes(draw, *, max_layers: int = 3, max_visual_side: int = 3) -> TinyShape:
    """Tiny LLaVA geometries: 1..max_layers layers, MHA or GQA, 1..max_visual_side^2 visual tokens."""
    heads = draw(st.sampled_from([2, 4]))
    kv_heads = draw(st.sampled_from([h for h in (1, 2, 4) if heads % h == 0]))
    return TinyShape(
        layers=draw(st.integers(1, max_layers)),
        heads=heads,
        kv_heads=kv_heads,
        head_dim=draw(st.sampled_from([4, 8])),
        image_size=14 * draw(st.integers(2, max_visual_side)),
        vision_layers=draw(st.integers(2, 3)),
        seed=draw(st.integers(0, 3)),
    )


@lru_cache(maxsize=32)
def tiny_llava(shape: TinyShape, dtype: torch.dtype = torch.float64, attn_implementation: str = "sdpa"):
    """``(model, processor)`` for ``shape``, cached; do not modify the returned model."""
    return build_random_llava(shape.shape(), seed=shape.seed, dtype=dtype, attn_implementation=attn_implementation)


@st.composite
def prompts(draw, *, min_size: int = 1, max_size: int = 3):
    """A batch of (image, question) pairs with questions of different lengths."""
    size = draw(st.integers(min_size, max_size))
    images, questions = [], []
    for _ in range(size):
        images.append(random_image(draw(st.integers(0, 10_000)), draw(st.integers(16, 60)), draw(st.integers(16, 60))))
        words = draw(st.lists(st.sampled_from(QUESTION_WORDS), min_size=1, max_size=8))
        questions.append(" ".join(words) + "?")
    return images, questions


def budgets(*, num_visual: int):
    """Token counts 0..num_visual."""
    return st.integers(0, num_visual)


@st.composite
def schedules(draw, *, max_layers: int = 6, max_groups: int = 3) -> Schedule:
    """Valid schedules: parallel streams, fusion, inserts and removals at random layers."""
    num_layers = draw(st.integers(1, max_layers))
    groups = tuple(f"g{i}" for i in range(draw(st.integers(1, max_groups))))
    streams = [Stream(g, (g,)) for g in groups]
    events: list = []
    if len(groups) > 1 and draw(st.booleans()):
        k = draw(st.integers(0, num_layers))
        rule = draw(st.sampled_from(["fixed", "size", "attention"]))
        params = (("alpha", draw(st.floats(0, 1))),) if rule == "fixed" else ()
        tokens = draw(st.sampled_from(["question", "post_image"]))
        events.append(Fuse(k, groups, groups[0], rule, tokens, params))
        events.extend(EndStream(k, g) for g in groups[1:])
        if k < num_layers and draw(st.booleans()):
            at = draw(st.integers(k, num_layers))
            events.append(InsertGroup(at, groups[0], groups[1]))
    else:
        streams = [Stream("main", groups[:1])]
        for g in groups[1:]:
            at = draw(st.integers(0, num_layers))
            events.append(InsertGroup(at, "main", g))
        if draw(st.booleans()):
            at = max([e.layer for e in events] + [0])
            events.append(RemoveGroup(at, "main", groups[0]))
    events.sort(key=lambda e: e.layer)
    return Schedule(num_layers, groups, tuple(streams), streams[0].name, tuple(events))


__all__ += ["SHAPES"]
