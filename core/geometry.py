"""Model geometry: the sizes schedules and FLOPs accounting depend on.

Part of the vocabulary a policy imports: it knows no model class, so reading it loads neither
transformers' modeling code nor the engine. Adapters fill it from a model or from a config alone.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ModelGeometry"]


@dataclass(frozen=True, slots=True)
class ModelGeometry:
    """Sizes that schedules and FLOPs accounting depend on."""

    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    num_visual: int  # visual tokens per image (the nominal count; samples may differ)
    vision_layers: int = 0
    vision_hidden_size: int = 0
    vision_intermediate_size: int = 0
    vision_tokens: int = 0  # tokens inside the vision tower (patches + CLS)
