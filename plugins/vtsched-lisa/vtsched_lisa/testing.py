"""A tiny random LISA saved in the published layout, for tests and for trying the commands.

``save_tiny_lisa(folder)`` writes what LISA's merge script writes, at toy sizes: ``config.json``
(``LISAForCausalLM``, LLaVA-v1's fields, ``out_dim``), ``pytorch_model.bin`` under the published
keys (``model.layers.N.*``, ``model.mm_projector.*``, ``model.visual_model.*`` in Meta's SAM layout,
``model.text_hidden_fcs.0.*``, ``lm_head.*``; no CLIP), the tokenizer with ``[SEG]``,
``<im_start>``, ``<im_end>`` added, and a tiny CLIP vision tower in ``FOLDER/clip`` (LISA
checkpoints omit CLIP; the loader looks there first). SAM is the segment-anything plugin's tiny
SAM (64-px input, 16-wide prompts), a variant the LISA loader knows (:mod:`vtsched_lisa.sams`), so
nothing is registered.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vtsched_lisa.checkpoint import published_state_dict
from vtsched_lisa.model import IM_END, IM_START, SEG_TOKEN, LisaConfig, LisaModel

__all__ = ["save_tiny_lisa", "TINY_LAYERS"]

TINY_LAYERS = 4


def save_tiny_lisa(folder: str | Path, seed: int = 0, *, sam: bool = True, seg_token: bool = True,
                   layers: int = TINY_LAYERS, hidden: int = 32, clip_size: int = 56) -> Path:
    """Write a tiny random LISA to ``folder`` (see the module docstring); ``sam=False`` leaves SAM's
    weights out and ``seg_token=False`` the ``[SEG]`` token (the bad inputs the loader refuses)."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, LlamaConfig

    from vtsched.core.demo import build_tokenizer
    from vtsched_segment_anything.testing import build_tiny_sam

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    tokenizer.add_tokens([IM_START, IM_END] + ([SEG_TOKEN] if seg_token else []))
    vocab = len(tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=clip_size, patch_size=14, projection_dim=32)
        text = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                           num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                           max_position_embeddings=512, rms_norm_eps=1e-6, tie_word_embeddings=False,
                           initializer_range=0.2)
        config = LisaConfig(text_config=text, vision_config=vision, out_dim=16)
        model = LisaModel(config, build_tiny_sam())
        model.model.vision_tower = CLIPVisionModel(vision)
    state = published_state_dict(model)
    if not sam:
        state = {k: v for k, v in state.items() if not k.startswith("model.visual_model.")}
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LISAForCausalLM"], "model_type": "llava",
        "hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": layers,
        "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": vocab, "rms_norm_eps": 1e-6,
        "max_position_embeddings": 512, "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id, "mm_hidden_size": 32, "mm_use_im_start_end": True,
        "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
        "mm_vision_tower": "openai/clip-vit-large-patch14", "out_dim": 16, "train_mask_decoder": True,
        "tie_word_embeddings": False, "torch_dtype": "float32",
    }, indent=2) + "\n")
    tokenizer.save_pretrained(str(folder))
    clip = folder / "clip"
    model.model.vision_tower.save_pretrained(str(clip))
    CLIPImageProcessor(size={"shortest_edge": clip_size},
                       crop_size={"height": clip_size, "width": clip_size}).save_pretrained(str(clip))
    return folder
