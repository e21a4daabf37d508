"""Inputs for the named random shapes (noise images, question words) and the shipped demo model.

The shapes themselves (random-weight models of every family) live in :mod:`vtsched.core.shapes`,
below the scheduler, since :meth:`Scheduler.random <vtsched.core.scheduler.Scheduler.random>` builds
them; their names are re-exported here because the tutorials and users' scripts import them from
``vtsched.core.demo.shapes``.
"""

from __future__ import annotations

from vtsched.core.shapes import (
    SHAPES, NextShape, QwenShape, Shape, build_processor, build_qwen_tokenizer, build_random_llava, build_tokenizer,
    get_shape, llava_config, shape_family,
)

__all__ = [
    "Shape", "SHAPES", "build_tokenizer", "build_processor", "llava_config", "build_random_llava", "random_image",
    "QUESTION_WORDS", "demo_model_path", "NextShape", "QwenShape", "build_qwen_tokenizer", "shape_family", "get_shape",
]

QUESTION_WORDS = (
    "what", "colour", "is", "the", "shape", "in", "corner", "background", "red", "small", "object", "left",
    "how", "many", "describe", "image", "top", "mark",
)


def demo_model_path():
    """The demo model shipped inside the package (trained by ``vtsched train-demo``), or ``None``."""
    from pathlib import Path

    path = Path(__file__).resolve().parent / "model"
    return path if (path / "model.safetensors").exists() else None


def random_image(seed: int, width: int = 40, height: int = 30):
    """A noise image (PIL, RGB) from a seed: an input with no meaning, for shapes and speed."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))
