"""LISA's pieces as transformers and segment-anything modules: what a LISA checkpoint loads into.

LISA (dvlab-research/LISA) is LLaVA-v1 (a LLaMA decoder, CLIP ViT-L/14 at 224 px read at layer
-2 without [CLS], a *single* ``Linear`` projector) plus Meta's SAM (``visual_model``) and
``text_hidden_fcs`` (``Linear(H, H), ReLU, Linear(H, out_dim), Dropout(0)``), which maps the
``[SEG]`` token's last hidden state to one sparse prompt of SAM's mask decoder.

:class:`LisaModel` holds them in the attribute layout vtsched's LLaVA adapter reads
(``model.language_model``, ``model.vision_tower``, ``model.multi_modal_projector``, ``lm_head``,
``config.text_config`` / ``vision_config`` / ``vision_feature_layer``), so the engine drives its
language model under any policy exactly as it drives LLaVA-1.5's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["LisaConfig", "LisaModel", "LisaProcessor", "SEG_TOKEN", "IM_START", "IM_END", "SYSTEM", "CONVERSATIONS",
           "PROJECTORS"]

SEG_TOKEN = "[SEG]"
IM_START, IM_END = "<im_start>", "<im_end>"
# LLaVA-v1's ``conv_llava_v1`` system prompt (LISA's default conversation template)
SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the human's questions.")
# a checkpoint config's ``conv_type`` -> the prompt around the image and question (LISA's default: llava_v1);
# ``vtsched_demo`` is the demo LLaVA's own prompt, which the demo LISA keeps
CONVERSATIONS = {
    "llava_v1": SYSTEM + " USER: <image>\n{question} ASSISTANT:",
    "vtsched_demo": "USER: <image>\n{question} ASSISTANT:",
}
# a checkpoint config's ``mm_projector_type``: LISA's single Linear, or LLaVA-1.5's two-layer MLP
# (``mm_projector.0`` / ``mm_projector.2``, GELU between), the projector of the demo LLaVA
PROJECTORS = ("linear", "mlp2x_gelu")


@dataclass
class LisaConfig:
    """What a LISA checkpoint's ``config.json`` says, in the fields the LLaVA adapter reads.

    ``text_config``: a ``LlamaConfig``; ``vision_config``: a ``CLIPVisionConfig`` (from the CLIP
    folder); ``out_dim``: the width of SAM's prompt embeddings (256 for Meta's SAM);
    ``seg_token_id``: the tokenizer's ``[SEG]`` id; ``use_mm_start_end``: the image is wrapped in
    ``<im_start> ... <im_end>``; ``image_token_id``: the id written at visual positions (the
    engine replaces their embeddings by the projected features, so any id in the vocabulary works).
    """

    text_config: Any
    vision_config: Any
    out_dim: int = 256
    seg_token_id: int = -1
    use_mm_start_end: bool = True
    vision_feature_layer: int = -2
    vision_feature_select_strategy: str = "default"  # LLaVA-v1's "patch": drop CLIP's [CLS]
    image_token_id: int = 0
    sam_variant: str = ""
    projector_type: str = "linear"
    prompt_template: str = CONVERSATIONS["llava_v1"]
    model_type: str = "lisa"


class _Inner(nn.Module):
    def __init__(self, config: LisaConfig, sam: nn.Module) -> None:
        from transformers import CLIPVisionModel, LlamaModel

        super().__init__()
        hidden = config.text_config.hidden_size
        self.language_model = LlamaModel(config.text_config)
        self.vision_tower = CLIPVisionModel(config.vision_config)
        width = config.vision_config.hidden_size
        self.multi_modal_projector: nn.Module = (
            nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, hidden))
            if config.projector_type == "mlp2x_gelu" else nn.Linear(width, hidden))
        self.visual_model = sam
        self.text_hidden_fcs = nn.ModuleList([nn.Sequential(
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, config.out_dim), nn.Dropout(0.0))])


class LisaModel(nn.Module):
    """LISA: ``model.{language_model, vision_tower, multi_modal_projector, visual_model, text_hidden_fcs}``
    and ``lm_head``. Built with random weights; :func:`vtsched_lisa.checkpoint.load_lisa` fills them."""

    def __init__(self, config: LisaConfig, sam: nn.Module) -> None:
        super().__init__()
        self.config = config
        self.model = _Inner(config, sam)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)

    @property
    def sam(self) -> nn.Module:
        return self.model.visual_model

    def project_seg(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(n, H)`` normed last-layer [SEG] states -> ``(n, out_dim)`` SAM prompt embeddings."""
        return self.model.text_hidden_fcs[0](hidden)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.language_model.embed_tokens


@dataclass
class LisaProcessor:
    """LISA's tokenizer (with ``[SEG]``) and the CLIP image processor of its vision tower."""

    tokenizer: Any
    image_processor: Any
    image_token: str = "<image>"
