"""Demo models and data: named random shapes, the procedural VQA set, demo training, the shipped model.

Nothing here is needed to schedule a real checkpoint; it exists so that every command, tutorial
and test runs offline on a CPU.
"""

from __future__ import annotations

from vtsched.core.demo.shapes import (
    QUESTION_WORDS, SHAPES, Shape, build_processor, build_random_llava, build_tokenizer, demo_model_path, get_shape,
    llava_config, random_image,
)

__all__ = [
    "Shape", "SHAPES", "get_shape", "build_tokenizer", "build_processor", "llava_config", "build_random_llava",
    "random_image", "QUESTION_WORDS", "demo_model_path",
]
