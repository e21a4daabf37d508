"""LLaVA-NeXT shapes: LLaVA's parts on tiles, with llava-hf's grid pinpoints scaled to the tile."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from vtsched.core.shapes.building import clip_and_llama, random_model
from vtsched.core.shapes.tokenizers import IMAGE_TOKEN, build_tokenizer

__all__ = ["NextShape", "NEXT_PINPOINT_TILES"]

NEXT_PINPOINT_TILES = ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))  # llava-hf's pinpoints, in tiles (rows, cols)


@dataclass(frozen=True)
class NextShape:
    """Sizes of a random LLaVA-NeXT: a CLIP tower on ``tile``-px tiles, a projector, a Llama-family LM.

    The grid pinpoints are llava-hf's ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))
    in units of ``tile``, so token geometry scales with the tile: at ``tile=336`` a 672x672 image
    gives 576 overview tokens + a 48x48 grid + 48 newline tokens = 2,928.
    """

    name: str
    tile: int
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
    family: ClassVar[str] = "llava_next"

    @property
    def pinpoints(self) -> list[list[int]]:
        return [[rows * self.tile, cols * self.tile] for rows, cols in NEXT_PINPOINT_TILES]

    @property
    def num_visual(self) -> int:
        """Tokens of a square image at the 2x2-tile pinpoint (672x672 at 336-px tiles)."""
        side = self.tile // self.patch_size
        return side * side + (2 * side) * (2 * side) + 2 * side

    def processor(self, tokenizer=None):
        from transformers import LlavaNextProcessor
        from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

        image_processor = LlavaNextImageProcessorPil(
            size={"shortest_edge": self.tile}, crop_size={"height": self.tile, "width": self.tile},
            image_grid_pinpoints=self.pinpoints,
        )
        return LlavaNextProcessor(
            image_processor=image_processor, tokenizer=tokenizer or build_tokenizer(), patch_size=self.patch_size,
            vision_feature_select_strategy="default", image_token=IMAGE_TOKEN, num_additional_image_tokens=1,
        )

    def config(self, tokenizer=None):
        from transformers import LlavaNextConfig

        tokenizer = tokenizer or build_tokenizer()
        vision, text = clip_and_llama(self, self.tile, tokenizer, max_positions=8192)
        return LlavaNextConfig(  # type: ignore[call-arg]
            vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
            image_grid_pinpoints=self.pinpoints, image_seq_length=(self.tile // self.patch_size) ** 2,
            vision_feature_layer=-2, vision_feature_select_strategy="default",
        )

    def build(self, *, seed: int = 0, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa",
              device: str | torch.device = "cpu"):
        from transformers import LlavaNextForConditionalGeneration

        processor = self.processor()
        return random_model(LlavaNextForConditionalGeneration, self.config(processor.tokenizer), processor, seed=seed,
                          dtype=dtype, attn_implementation=attn_implementation, device=device)
