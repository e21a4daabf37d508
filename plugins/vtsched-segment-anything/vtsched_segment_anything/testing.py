"""A tiny SAM for tests: segment-anything's own modules at toy sizes, random weights, Meta's layout.

``save_tiny_checkpoint(path)`` writes a ``.pth`` state dict exactly as Meta's checkpoints are laid
out (``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``; 56k parameters, 64-px input)
and registers the ``tiny`` variant (:data:`TINY_VARIANT`, with :func:`register_tiny`: registering
it again is a no-op), so ``SamPartitioner(checkpoint=path)`` loads it through the same path as a real vit_h /
vit_l / vit_b file; a caller that takes variants as an argument (the LISA loader) is handed
:data:`TINY_VARIANT` instead.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from vtsched_segment_anything.checkpoint import SamVariant, register_variant

__all__ = ["TINY", "TINY_VARIANT", "build_tiny_sam", "register_tiny", "save_tiny_checkpoint"]

TINY = "tiny"
TINY_EMBED, TINY_DEPTH = 32, 2


def build_tiny_sam() -> torch.nn.Module:
    """Sam with a 2-block, 32-wide ViT encoder on 64-px images (a 4x4 embedding grid), random weights."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    return Sam(
        image_encoder=ImageEncoderViT(depth=TINY_DEPTH, embed_dim=TINY_EMBED, img_size=64, patch_size=16, num_heads=2,
                                      mlp_ratio=2, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), qkv_bias=True,
                                      use_rel_pos=True, window_size=2, global_attn_indexes=[1], out_chans=16),
        prompt_encoder=PromptEncoder(embed_dim=16, image_embedding_size=(4, 4), input_image_size=(64, 64),
                                     mask_in_chans=4),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(depth=2, embedding_dim=16,
                                                                                      mlp_dim=32, num_heads=2),
                                 transformer_dim=16, iou_head_depth=3, iou_head_hidden_dim=16),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    ).eval()


TINY_VARIANT = SamVariant(TINY, TINY_EMBED, TINY_DEPTH, build_tiny_sam)


def register_tiny() -> SamVariant:
    """Make ``variant=tiny`` (and detection of its shapes) known to :func:`~.checkpoint.load_sam`."""
    return register_variant(TINY_VARIANT.name, TINY_VARIANT.embed_dim, TINY_VARIANT.depth, TINY_VARIANT.build)


def save_tiny_checkpoint(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny SAM's state dict to ``path`` (Meta's layout) and register its variant."""
    register_tiny()
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        torch.manual_seed(seed)
        model = build_tiny_sam()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path
