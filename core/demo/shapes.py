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
    "QUESTION_WORDS", "demo_model_path", "DEMO_MODELS", "resolve_model",
    "NextShape", "QwenShape", "build_qwen_tokenizer", "shape_family", "get_shape",
]

QUESTION_WORDS = (
    "what", "colour", "is", "the", "shape", "in", "corner", "background", "red", "small", "object", "left",
    "how", "many", "describe", "image", "top", "mark",
)


# the demo models shipped inside the package, by the name --model accepts: folder under core/demo/
DEMO_MODELS = {"demo": "model", "demo-phase1": "model-phase1"}


def demo_model_path(name: str = "demo"):
    """The shipped demo model called ``name`` (``demo``: the default model; ``demo-phase1``: its
    first training phase, which reads the image until late layers), or ``None`` where its weights are
    not installed. Both are trained by ``vtsched train-demo`` (docs/demo-model.md)."""
    from pathlib import Path

    if name not in DEMO_MODELS:
        raise KeyError(f"no demo model is called {name!r}; the shipped ones are {', '.join(DEMO_MODELS)}")
    path = Path(__file__).resolve().parent / DEMO_MODELS[name]
    return path if (path / "model.safetensors").exists() else None


def resolve_model(model):
    """What a ``--model`` value names: a shipped demo model's name (``demo``, ``demo-phase1``) becomes
    its folder, unless a file or folder of that name exists where the command runs; anything else
    (a path, a hub id) is returned as given, and ``None`` stays ``None``."""
    from pathlib import Path

    if model in DEMO_MODELS and not Path(model).exists():
        path = demo_model_path(model)
        return str(path) if path is not None else model
    return model


def random_image(seed: int, width: int = 40, height: int = 30):
    """A noise image (PIL, RGB) from a seed: an input with no meaning, for shapes and speed."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))
