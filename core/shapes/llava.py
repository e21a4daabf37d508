"""LLaVA-1.5 shapes: a CLIP tower, a projector and a Llama-family language model of given sizes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from vtsched.core.shapes.building import clip_and_llama, random_model
from vtsched.core.shapes.tokenizers import IMAGE_TOKEN, build_tokenizer

__all__ = ["Shape", "build_processor"]


@dataclass(frozen=True)
class Shape:
    """Sizes of a random LLaVA: vision tower, projector into a Llama-family LM."""

    name: str
    image_size: int
    patch_size: int
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    vision_intermediate: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int

    family: ClassVar[str] = "llava"

    @property
    def num_visual(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def processor(self, tokenizer=None):
        """A ``LlavaProcessor`` (CLIP resize and center-crop to ``image_size``) with the demo tokenizer."""
        from transformers import CLIPImageProcessor, LlavaProcessor

        size = self.image_size
        image_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        return LlavaProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer or build_tokenizer(),
            patch_size=self.patch_size,
            vision_feature_select_strategy="default",
            image_token=IMAGE_TOKEN,
            num_additional_image_tokens=1,
        )

    def config(self, tokenizer=None):
        """The ``LlavaConfig`` of this shape (no weights are built)."""
        from transformers import LlavaConfig

        tokenizer = tokenizer or build_tokenizer()
        vision, text = clip_and_llama(self, self.image_size, tokenizer, max_positions=4096)
        return LlavaConfig(  # type: ignore[call-arg]
            vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
            image_seq_length=self.num_visual, vision_feature_layer=-2, vision_feature_select_strategy="default",
        )

    def build(self, *, seed: int = 0, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa",
              device: str | torch.device = "cpu"):
        from transformers import LlavaForConditionalGeneration

        processor = self.processor()
        return random_model(LlavaForConditionalGeneration, self.config(processor.tokenizer), processor, seed=seed,
                            dtype=dtype, attn_implementation=attn_implementation, device=device)


def build_processor(shape: Shape, tokenizer=None):
    """The processor of a LLaVA shape (``shape.processor``), under the name the demo package exports."""
    return shape.processor(tokenizer)
