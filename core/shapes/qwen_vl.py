"""Qwen2-VL and Qwen2.5-VL shapes: their own vision tower and merger, M-RoPE in the language model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from vtsched.core.shapes.building import random_model
from vtsched.core.shapes.tokenizers import build_qwen_tokenizer

__all__ = ["QwenShape"]


@dataclass(frozen=True)
class QwenShape:
    """Sizes of a random Qwen2-VL (``version="2"``) or Qwen2.5-VL (``version="2.5"``).

    Visual tokens are the merger's outputs: 2x2 patches of 14 px, one token per 28x28 px of the
    smart-resized image (a 672x672 image: 24x24 = 576 tokens). ``image_size`` is the nominal
    input side for explain and bench; ``max_pixels`` caps the processor's resize. Qwen2.5-VL's
    window attention groups ``window`` px (4x4 merged tokens at 112) and runs full attention in the
    blocks ``full_blocks`` (default: every 8th block, ending with the last). Videos are resized per
    frame within ``video_min_pixels``..``video_max_pixels`` (the transformers defaults, which the
    Qwen2-VL checkpoints ship: 128 to 768 merged tokens a frame).
    """

    name: str
    version: str
    image_size: int
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    vision_intermediate: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    window: int = 112
    max_pixels: int = 28 * 28 * 1280
    min_pixels: int = 56 * 56
    full_blocks: tuple[int, ...] | None = None
    rope_theta: float = 1e6
    video_min_pixels: int = 128 * 28 * 28
    video_max_pixels: int = 768 * 28 * 28
    family: ClassVar[str] = "qwen2_vl"

    @property
    def num_visual(self) -> int:
        return (self.image_size // 28) ** 2

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def mrope_section(self) -> list[int]:
        """Temporal/height/width split of the rotary half-dimension: [16, 24, 24] at head size 128."""
        half = self.head_dim // 2
        temporal = half // 4
        height = (half - temporal) // 2
        return [temporal, height, half - temporal - height]

    def fullatt_blocks(self) -> list[int]:
        if self.full_blocks is not None:
            return list(self.full_blocks)
        step = max(1, self.vision_layers // 4)
        return sorted(set(range(step - 1, self.vision_layers, step)) | {self.vision_layers - 1})

    def processor(self, tokenizer=None):
        from transformers import Qwen2VLProcessor, Qwen2_5_VLProcessor
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

        image_processor = Qwen2VLImageProcessorPil(min_pixels=self.min_pixels, max_pixels=self.max_pixels)
        cls = Qwen2_5_VLProcessor if self.version == "2.5" else Qwen2VLProcessor
        # cap_pixels_per_frame: qwen-vl-utils' per-frame cap, which transformers makes the default
        video_processor = Qwen2VLVideoProcessor(min_pixels=self.video_min_pixels, max_pixels=self.video_max_pixels,
                                                cap_pixels_per_frame=True)
        return cls(image_processor=image_processor, tokenizer=tokenizer or build_qwen_tokenizer(),
                   video_processor=video_processor)

    def config(self, tokenizer=None):
        from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

        tokenizer = tokenizer or build_qwen_tokenizer()
        ids = {key: tokenizer.convert_tokens_to_ids(token) for key, token in (
            ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
        text = dict(
            vocab_size=len(tokenizer), hidden_size=self.hidden, intermediate_size=self.intermediate,
            num_hidden_layers=self.layers, num_attention_heads=self.heads, num_key_value_heads=self.kv_heads,
            max_position_embeddings=32768, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            rope_parameters={"rope_type": "default", "mrope_section": self.mrope_section(), "rope_theta": self.rope_theta},
        )
        if self.version == "2.5":
            vision = dict(depth=self.vision_layers, hidden_size=self.vision_hidden, num_heads=self.vision_heads,
                          intermediate_size=self.vision_intermediate, out_hidden_size=self.hidden,
                          fullatt_block_indexes=self.fullatt_blocks(), window_size=self.window)
            return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
        vision = dict(depth=self.vision_layers, embed_dim=self.vision_hidden, hidden_size=self.hidden,
                      num_heads=self.vision_heads, mlp_ratio=self.vision_intermediate // self.vision_hidden)
        return Qwen2VLConfig(text_config=text, vision_config=vision, **ids)

    def build(self, *, seed: int = 0, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa",
              device: str | torch.device = "cpu"):
        from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

        processor = self.processor()
        cls = Qwen2_5_VLForConditionalGeneration if self.version == "2.5" else Qwen2VLForConditionalGeneration
        return random_model(cls, self.config(processor.tokenizer), processor, seed=seed, dtype=dtype,
                          attn_implementation=attn_implementation, device=device)
