"""Demo models and data: the procedural VQA set, demo training, the shipped model, and the named
random shapes (built in :mod:`vtsched.core.shapes`, re-exported here).

Nothing here is needed to schedule a real checkpoint; it exists so that every command, tutorial
and test runs offline on a CPU.
"""

from __future__ import annotations

from vtsched.core.demo.shapes import QUESTION_WORDS, demo_model_path, random_image
from vtsched.core.shapes import (
    SHAPES, Shape, build_processor, build_random_llava, build_tokenizer, get_shape, llava_config,
)

__all__ = [
    "Shape", "SHAPES", "get_shape", "build_tokenizer", "build_processor", "llava_config", "build_random_llava",
    "random_image", "QUESTION_WORDS", "demo_model_path",
]
