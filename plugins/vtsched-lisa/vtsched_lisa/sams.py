"""The SAM variants the LISA loader knows besides Meta's: passed in, never registered globally.

A LISA checkpoint's SAM variant is read from its shapes (the segment-anything plugin's
:func:`~vtsched_segment_anything.checkpoint.detect_variant`) among Meta's three, the variants a
user registered with :func:`vtsched_segment_anything.register_variant`, and these:

- ``demo-lisa``: the demo LISA's SAM (:mod:`vtsched_lisa.demo_lisa`), segment-anything's own
  modules at toy size: a 3-block, 48-wide ViT on 112-px images, 8-px patches (a 14x14 embedding
  grid), 64-wide prompts and a 2-layer two-way mask decoder;
- ``tiny``: the segment-anything plugin's 56k-parameter test SAM, so the tiny LISA of
  :mod:`vtsched_lisa.testing` loads from the command line as a published one does.

:func:`~vtsched_lisa.checkpoint.load_lisa` takes them as an argument (``sam_variants``), so loading
a checkpoint changes no process-wide table.
"""

from __future__ import annotations

from functools import partial
from types import MappingProxyType

import torch

from vtsched_segment_anything.checkpoint import SamVariant
from vtsched_segment_anything.testing import TINY_VARIANT

__all__ = ["DEMO_SAM", "DEMO_SAM_VARIANT", "LISA_SAM_VARIANTS", "PROMPT_DIM", "build_demo_sam"]

DEMO_SAM = "demo-lisa"
SAM_EMBED, SAM_DEPTH, SAM_IMAGE, SAM_PATCH, PROMPT_DIM = 48, 3, 112, 8, 64


def build_demo_sam() -> torch.nn.Module:
    """The demo LISA's SAM: segment-anything's modules at toy size, random weights (Meta's layout)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    grid = SAM_IMAGE // SAM_PATCH
    return Sam(
        image_encoder=ImageEncoderViT(depth=SAM_DEPTH, embed_dim=SAM_EMBED, img_size=SAM_IMAGE, patch_size=SAM_PATCH,
                                      num_heads=4, mlp_ratio=2, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                                      qkv_bias=True, use_rel_pos=True, window_size=7, global_attn_indexes=[SAM_DEPTH - 1],
                                      out_chans=PROMPT_DIM),
        prompt_encoder=PromptEncoder(embed_dim=PROMPT_DIM, image_embedding_size=(grid, grid),
                                     input_image_size=(SAM_IMAGE, SAM_IMAGE), mask_in_chans=8),
        mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                 transformer=TwoWayTransformer(depth=2, embedding_dim=PROMPT_DIM, mlp_dim=128,
                                                               num_heads=4),
                                 transformer_dim=PROMPT_DIM, iou_head_depth=3, iou_head_hidden_dim=PROMPT_DIM),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    ).eval()


DEMO_SAM_VARIANT = SamVariant(DEMO_SAM, SAM_EMBED, SAM_DEPTH, build_demo_sam)
# name -> variant: what load_lisa knows besides Meta's and the registered ones (read-only)
LISA_SAM_VARIANTS = MappingProxyType({v.name: v for v in (DEMO_SAM_VARIANT, TINY_VARIANT)})
