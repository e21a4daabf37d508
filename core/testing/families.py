"""Tiny random models of every family, and the adapter conformance kit bound to each.

LLaVA-1.5's tiny models live in :mod:`vtsched.core.testing.strategies`; here are LLaVA-NeXT's
(tiles of 2x2 or 3x3 patches, llava-hf's pinpoints scaled to the tile, so images of any aspect
unpad differently) and Qwen2-VL / Qwen2.5-VL's (28-px merged tokens, 2-token windows for 2.5
so the window order is exercised, M-RoPE split to the head size). Each kit subclasses
:class:`~vtsched.core.testing.conformance.AdapterConformance` with the family's models,
prompts and references; a plugin adapter for a derived family can subclass these in turn::

    class TestMyQwenAdapter(QwenAdapterConformance):
        adapter_class = MyQwenAdapter
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

import torch
from hypothesis import strategies as st

from vtsched.core.demo.shapes import QUESTION_WORDS, random_image
from vtsched.core.shapes import NextShape, QwenShape
from vtsched.core.testing import models
from vtsched.core.testing.conformance import AdapterConformance

__all__ = [
    "TinyNextShape", "TinyQwenShape", "tiny_llava_next_shapes", "tiny_qwen_shapes", "tiny_llava_next", "tiny_qwen",
    "family_prompts", "LlavaNextAdapterConformance", "QwenAdapterConformance", "QwenVideoAdapterConformance",
    "qwen_video_reference_inputs",
]


@dataclass(frozen=True)
class TinyNextShape:
    """A tiny random LLaVA-NeXT, hashable so models can be cached."""

    layers: int = 2
    heads: int = 2
    kv_heads: int = 2
    head_dim: int = 8
    tile_patches: int = 2  # tile side in 14-px patches
    seed: int = 0

    def shape(self) -> NextShape:
        hidden = self.heads * self.head_dim
        return NextShape("tiny-next", 14 * self.tile_patches, 14, 16, 2, 2, 32, hidden, self.layers, self.heads,
                         self.kv_heads, 2 * hidden)


@dataclass(frozen=True)
class TinyQwenShape:
    """A tiny random Qwen2-VL (``version="2"``) or Qwen2.5-VL (``"2.5"``), hashable."""

    version: str = "2.5"
    layers: int = 2
    heads: int = 2
    kv_heads: int = 2
    head_dim: int = 16
    vision_layers: int = 2
    seed: int = 0

    def shape(self) -> QwenShape:
        hidden = self.heads * self.head_dim
        full = (self.vision_layers - 2, ) if self.vision_layers > 2 else (self.vision_layers - 1,)
        return QwenShape("tiny-qwen", self.version, 56, 32, self.vision_layers, 2, 64, hidden, self.layers,
                         self.heads, self.kv_heads, 2 * hidden, window=56, max_pixels=28 * 28 * 20,
                         full_blocks=full if self.version == "2.5" else None, rope_theta=1e4,
                         video_min_pixels=56 * 56, video_max_pixels=28 * 28 * 6)


@st.composite
def tiny_llava_next_shapes(draw, *, min_layers: int = 1, max_layers: int = 3) -> TinyNextShape:
    heads = draw(st.sampled_from([2, 4]))
    return TinyNextShape(
        layers=draw(st.integers(min_layers, max_layers)), heads=heads,
        kv_heads=draw(st.sampled_from([h for h in (1, 2, 4) if heads % h == 0])),
        head_dim=draw(st.sampled_from([4, 8])), tile_patches=draw(st.sampled_from([2, 3])),
        seed=draw(st.integers(0, 3)),
    )


@st.composite
def tiny_qwen_shapes(draw, *, versions: tuple[str, ...] = ("2", "2.5"), min_layers: int = 1,
                     max_layers: int = 3) -> TinyQwenShape:
    """Tiny Qwen geometries; with 3 vision blocks on 2.5 the scored full-attention block is not the last."""
    heads = draw(st.sampled_from([2, 4]))
    return TinyQwenShape(
        version=draw(st.sampled_from(versions)), layers=draw(st.integers(min_layers, max_layers)), heads=heads,
        kv_heads=draw(st.sampled_from([h for h in (1, 2, 4) if heads % h == 0])),
        head_dim=draw(st.sampled_from([8, 16])), vision_layers=draw(st.integers(2, 3)), seed=draw(st.integers(0, 3)),
    )


@lru_cache(maxsize=32)
def tiny_llava_next(shape: TinyNextShape, dtype: torch.dtype = torch.float64, attn_implementation: str = "sdpa"):
    """``(model, processor)`` for ``shape``, cached; do not modify the returned model."""
    return shape.shape().build(seed=shape.seed, dtype=dtype, attn_implementation=attn_implementation)


@lru_cache(maxsize=32)
def tiny_qwen(shape: TinyQwenShape, dtype: torch.dtype = torch.float64, attn_implementation: str = "sdpa"):
    """``(model, processor)`` for ``shape``, cached; do not modify the returned model."""
    return shape.shape().build(seed=shape.seed, dtype=dtype, attn_implementation=attn_implementation)


@st.composite
def family_prompts(draw, *, min_size: int = 1, max_size: int = 3, min_side: int = 16, max_side: int = 60):
    """A batch of (image, question) pairs: images of different sizes and aspects, questions of different lengths."""
    size = draw(st.integers(min_size, max_size))
    images, questions = [], []
    for _ in range(size):
        width, height = draw(st.integers(min_side, max_side)), draw(st.integers(min_side, max_side))
        images.append(random_image(draw(st.integers(0, 10_000)), width, height))
        words = draw(st.lists(st.sampled_from(QUESTION_WORDS), min_size=1, max_size=8))
        questions.append(" ".join(words) + "?")
    return images, questions


class LlavaNextAdapterConformance(AdapterConformance):
    """The adapter kit on tiny LLaVA-NeXT models (overview tile + unpadded grid + newline tokens)."""

    model_examples: ClassVar[int] = 6

    def model_shapes(self) -> st.SearchStrategy[Any]:
        return tiny_llava_next_shapes(min_layers=self.min_layers, max_layers=self.max_layers)

    def build_tiny_model(self, shape: Any, *, dtype: torch.dtype = torch.float64,
                         attn_implementation: str = "sdpa") -> tuple[torch.nn.Module, Any]:
        return tiny_llava_next(shape, dtype, attn_implementation)  # type: ignore[no-any-return]

    def prompts(self, *, min_size: int = 1, max_size: int = 3) -> st.SearchStrategy[Any]:
        return family_prompts(min_size=min_size, max_size=max_size, min_side=12, max_side=90)


class QwenAdapterConformance(AdapterConformance):
    """The adapter kit on tiny Qwen2-VL / Qwen2.5-VL models: 3-row M-RoPE positions, merged tokens.

    ``versions`` narrows the family (``("2",)`` or ``("2.5",)``). The shortened reference runs
    the model's own forward on the kept tokens with their original ``(3, 1, T)`` position ids.
    """

    model_examples: ClassVar[int] = 6
    versions: ClassVar[tuple[str, ...]] = ("2", "2.5")

    def model_shapes(self) -> st.SearchStrategy[Any]:
        return tiny_qwen_shapes(versions=self.versions, min_layers=self.min_layers, max_layers=self.max_layers)

    def build_tiny_model(self, shape: Any, *, dtype: torch.dtype = torch.float64,
                         attn_implementation: str = "sdpa") -> tuple[torch.nn.Module, Any]:
        return tiny_qwen(shape, dtype, attn_implementation)  # type: ignore[no-any-return]

    def prompts(self, *, min_size: int = 1, max_size: int = 3) -> st.SearchStrategy[Any]:
        return family_prompts(min_size=min_size, max_size=max_size, min_side=20, max_side=130)

    def reference_inputs(self, processor: Any, image: Any, question: str) -> Mapping[str, torch.Tensor]:
        assert self.adapter_class is not None
        text = str(self.adapter_class.prompt_template).replace("{question}", question)
        return processor(images=[image], text=[text], return_tensors="pt")  # type: ignore[no-any-return]

    def shortened_reference_logits(self, model: Any, sample: Any, keep: torch.Tensor,
                                   features: torch.Tensor | None = None) -> torch.Tensor:
        return models.shortened_logits(model, sample, keep, features)


def qwen_video_reference_inputs(processor: Any, prompt_template: str, video: Any, question: str
                                ) -> Mapping[str, torch.Tensor]:
    """transformers' own inputs for one video prompt: the processor called with the sampled frames and
    the clip's metadata (its sampled rate gives Qwen2.5-VL's ``second_per_grid_ts``), no resampling."""
    from transformers.video_utils import VideoMetadata

    text = prompt_template.replace("<|image_pad|>", "<|video_pad|>").replace("{question}", question)
    metadata = VideoMetadata(total_num_frames=video.total_frames, fps=video.fps, frames_indices=list(video.indices))
    return processor(text=[text], videos=[video.frames], video_metadata=[metadata], return_tensors="pt",  # type: ignore[no-any-return]
                     do_sample_frames=False)


class QwenVideoAdapterConformance(QwenAdapterConformance):
    """The adapter kit on video prompts (a clip written and read back with PyAV; later prompts of a
    batch may be still images): every check of :class:`QwenAdapterConformance` (``full`` = the model's
    forward and generate on the processor's video inputs, ``prune`` = the shortened sequence with
    the kept tokens' 3-D position ids, batch = one by one, cached = recomputed, SDPA = eager)."""

    model_examples: ClassVar[int] = 5

    def prompts(self, *, min_size: int = 1, max_size: int = 3) -> st.SearchStrategy[Any]:
        from vtsched.core.testing.videos import video_prompts

        return video_prompts(min_size=min_size, max_size=max_size)

    def reference_inputs(self, processor: Any, image: Any, question: str) -> Mapping[str, torch.Tensor]:
        from vtsched.core.pixels.video import Video

        if not isinstance(image, Video):
            return super().reference_inputs(processor, image, question)
        assert self.adapter_class is not None
        return qwen_video_reference_inputs(processor, str(self.adapter_class.prompt_template), image,
                                           question)
