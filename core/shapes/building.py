"""From a shape's sizes to a model: the CLIP and Llama configs of the LLaVA families, and random
weights built in place.

Shared by every family's shape (LLaVA, LLaVA-NeXT, Qwen2-VL), so each shape module holds only what
its family differs in.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["clip_and_llama", "random_model"]


def clip_and_llama(shape: Any, image_size: int, tokenizer: Any, *, max_positions: int) -> tuple[Any, Any]:
    """The CLIP vision and Llama text configs of a LLaVA-family shape (its ``vision_*`` and text sizes)."""
    from transformers import CLIPVisionConfig, LlamaConfig

    vision = CLIPVisionConfig(
        hidden_size=shape.vision_hidden, intermediate_size=shape.vision_intermediate,
        num_hidden_layers=shape.vision_layers, num_attention_heads=shape.vision_heads,
        image_size=image_size, patch_size=shape.patch_size, projection_dim=shape.vision_hidden,
    )
    text = LlamaConfig(
        hidden_size=shape.hidden, intermediate_size=shape.intermediate, num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads, vocab_size=len(tokenizer),
        max_position_embeddings=max_positions, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return vision, text


def random_model(model_class, config, processor, *, seed, dtype, attn_implementation, device):
    """``(model, processor)``: ``model_class`` with random weights, built in place and in its dtype
    (a 7B shape never exists in fp32)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):
            model = model_class._from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    model.eval()
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    return model, processor
