"""Named shapes: random-weight models of every family, in the real checkpoint layout.

No pretrained weights exist offline, so tests, tutorials, the benchmark and
:meth:`Scheduler.random <vtsched.core.scheduler.Scheduler.random>` build models from
``transformers`` configs with random weights: the real classes, a real tokenizer (byte-level BPE
trained here on a fixed word list) and a real processor, savable with ``save_pretrained`` and
loadable with ``from_pretrained`` like any checkpoint. Their answers are meaningless; their shapes,
token geometry and code paths are the real ones.

Each family's shape knows its config, its processor and how to build itself (``shape.config()``,
``shape.processor()``, ``shape.build()``); this module names them (:data:`SHAPES`). It sits below
the scheduler and imports nothing of vtsched's but the errors; the demo package (data, training,
the shipped model) builds on it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from vtsched.core.shapes.llava import Shape, build_processor
from vtsched.core.shapes.llava_next import NextShape
from vtsched.core.shapes.qwen_vl import QwenShape
from vtsched.core.shapes.tokenizers import build_qwen_tokenizer, build_tokenizer

__all__ = [
    "Shape", "NextShape", "QwenShape", "SHAPES", "get_shape", "build_random_llava", "llava_config", "shape_family",
    "build_tokenizer", "build_qwen_tokenizer", "build_processor",
]

SHAPES: dict[str, Shape | NextShape | QwenShape] = {
    s.name: s
    for s in (
        Shape("tiny", 28, 14, 16, 2, 2, 32, 32, 2, 4, 2, 64),
        Shape("demo", 112, 14, 64, 3, 4, 128, 128, 4, 4, 4, 256),
        # LLaVA-1.5's token geometry (336 px, 14 px patches: 576 visual tokens) at CPU-friendly width.
        Shape("llava-1.5-geometry", 336, 14, 64, 4, 4, 128, 256, 8, 8, 8, 704),
        # The same token geometry with a language model a 2-core CPU can time in seconds.
        # (32 layers like the 7B, so K/L matches; hidden 384, head size 64, MLP ratio 2.69 as in the 7B).
        Shape("llava-1.5-cpu", 336, 14, 64, 4, 4, 128, 384, 32, 6, 6, 1032),
        Shape("llava-1.5-7b", 336, 14, 1024, 24, 16, 4096, 4096, 32, 32, 32, 11008),
        NextShape("llava-next-tiny", 28, 14, 16, 2, 2, 32, 32, 2, 4, 2, 64),
        # LLaVA-NeXT's token geometry (336-px tiles, 14-px patches, llava-hf pinpoints: 2,928 tokens
        # at 672x672) with the narrow 32-layer language model of llava-1.5-cpu.
        NextShape("llava-next-cpu", 336, 14, 64, 4, 4, 128, 384, 32, 6, 6, 1032),
        NextShape("llava-next-7b", 336, 14, 1024, 24, 16, 4096, 4096, 32, 32, 32, 11008),
        QwenShape("qwen2-vl-tiny", "2", 56, 32, 2, 2, 64, 64, 2, 4, 2, 128, max_pixels=28 * 28 * 16,
                  video_min_pixels=56 * 56, video_max_pixels=28 * 28 * 16),
        QwenShape("qwen2.5-vl-tiny", "2.5", 56, 32, 2, 2, 64, 64, 2, 4, 2, 128, window=56, max_pixels=28 * 28 * 16,
                  video_min_pixels=56 * 56, video_max_pixels=28 * 28 * 16),
        # Qwen2.5-VL's token geometry (28-px merged tokens: 576 at 672x672, windows of 112 px, full
        # attention every 8th block) with a narrow 28-layer language model a CPU times in seconds.
        QwenShape("qwen2.5-vl-cpu", "2.5", 672, 64, 8, 4, 128, 384, 28, 6, 2, 1032),
        QwenShape("qwen2-vl-7b", "2", 672, 1280, 32, 16, 5120, 3584, 28, 28, 4, 18944),
        QwenShape("qwen2.5-vl-7b", "2.5", 672, 1280, 32, 16, 3420, 3584, 28, 28, 4, 18944,
                  full_blocks=(7, 15, 23, 31)),
    )
}


def get_shape(name: str) -> Any:
    from vtsched.core.errors import InputError

    try:
        return SHAPES[name]
    except KeyError:
        raise InputError(f"unknown shape {name!r}; shapes: {', '.join(SHAPES)}") from None


def build_random_llava(
    shape: Any = "demo",
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    device: str | torch.device = "cpu",
    **overrides: Any,
):
    """``(model, processor)`` with random weights: a ``LlavaForConditionalGeneration``, or the
    family's own model for a LLaVA-NeXT or Qwen2-VL shape.

    ``overrides`` replace fields of the named shape (e.g. ``layers=3``).
    """
    shape = get_shape(shape) if isinstance(shape, str) else shape
    shape = replace(shape, **overrides) if overrides else shape
    return shape.build(seed=seed, dtype=dtype, attn_implementation=attn_implementation, device=device)


def llava_config(shape: Any, tokenizer=None):
    """The config of a shape (no weights are built): a ``LlavaConfig``, or the family's own for a
    LLaVA-NeXT or Qwen2-VL shape."""
    shape = get_shape(shape) if isinstance(shape, str) else shape
    return shape.config(tokenizer)


def shape_family(shape: Any) -> str:
    """``"llava"``, ``"llava_next"`` or ``"qwen2_vl"``: the adapter family a shape builds."""
    shape = get_shape(shape) if isinstance(shape, str) else shape
    return getattr(shape, "family", "llava")
