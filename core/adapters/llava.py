"""LLaVA-1.5 (``LlavaForConditionalGeneration``): a CLIP-style vision tower, a projector, a Llama-family LM."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from vtsched.core.pixels import TokenBoxes, grid_boxes, processed_window
from vtsched.core.tokens import PromptBatch, Role, Sample
from vtsched.core.adapters.base import DecoderParts, ModelAdapter, decoder_sizes, llama_style_decoder
from vtsched.core.geometry import ModelGeometry

__all__ = ["LlavaAdapter"]


class LlavaAdapter(ModelAdapter):
    """Adapter for ``transformers.LlavaForConditionalGeneration`` checkpoints (llava-hf/llava-1.5-*)."""

    name: ClassVar[str] = "llava"
    model_type: ClassVar[str] = "llava"
    prompt_template: ClassVar[str] = "USER: <image>\n{question} ASSISTANT:"

    @classmethod
    def accepts(cls, model: nn.Module) -> bool:
        from transformers import LlavaForConditionalGeneration

        return type(model) is LlavaForConditionalGeneration

    # -- model structure ---------------------------------------------------------------------
    @property
    def vision_tower(self) -> Any:
        return self.model.model.vision_tower

    @classmethod
    def geometry_from_config(cls, config: Any) -> ModelGeometry:
        text = config.text_config
        vision = config.vision_config
        patches = (vision.image_size // vision.patch_size) ** 2
        return ModelGeometry(
            **decoder_sizes(text),
            num_visual=patches + (1 if config.vision_feature_select_strategy == "full" else 0),
            vision_layers=vision.num_hidden_layers,
            vision_hidden_size=vision.hidden_size,
            vision_intermediate_size=vision.intermediate_size,
            vision_tokens=patches + 1,
        )

    def decoder(self) -> DecoderParts:
        return llama_style_decoder(self.language_model, self.model.lm_head)

    # -- inputs ------------------------------------------------------------------------------
    def _feature_layer(self) -> int:
        layer = self.model.config.vision_feature_layer
        return layer[-1] if isinstance(layer, (list, tuple)) else layer

    def encode_images(
        self, pixel_values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Projected features ``(B, Nv, D)``, CLS scores ``(B, Nv)`` and patch keys in one tower pass
        (:meth:`encode_images_with_inputs` without the projector's input)."""
        features, cls, keys, _ = self.encode_images_with_inputs(pixel_values)
        return features, cls, keys

    @torch.inference_mode()
    def encode_images_with_inputs(
        self, pixel_values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """Projected features ``(B, Nv, D)``, CLS scores ``(B, Nv)``, patch keys and the projector's
        input ``(B, Nv, C)`` (the selected vision-tower hidden states: what VisPruner compares) in one
        tower pass.

        The CLS scores are the head-averaged softmax attention of the CLS query over the patch
        keys in the encoder layer whose output LLaVA reads (``vision_feature_layer``), recomputed
        from that layer's input for the CLS row only. The patch keys ``(B, Nv, head_dim)`` of that
        layer, head-averaged, measure token similarity for merging partitioners.
        """
        config = self.model.config
        out = self.vision_tower(pixel_values.to(self.device, self.dtype), output_hidden_states=True)
        hidden_states = out.hidden_states
        layers = config.vision_feature_layer
        layers = [layers] if isinstance(layers, int) else list(layers)
        selected = [hidden_states[i] for i in layers]
        if config.vision_feature_select_strategy == "default":
            selected = [h[:, 1:] for h in selected]
        tower_features = torch.cat(selected, dim=-1)
        features = self.model.model.multi_modal_projector(tower_features)

        n_states = len(hidden_states)  # embeddings + one per encoder layer
        layer_index = (self._feature_layer() % n_states) - 1  # the layer that produced those states
        if layer_index < 0:  # LLaVA reads the patch embeddings: no attention layer made them
            return features, None, None, tower_features
        tower = getattr(self.vision_tower, "vision_model", self.vision_tower)
        block = tower.encoder.layers[layer_index]
        x = block.layer_norm1(hidden_states[layer_index])
        attn = block.self_attn
        q = attn.q_proj(x[:, :1]).view(x.shape[0], 1, attn.num_heads, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(x.shape[0], -1, attn.num_heads, attn.head_dim).transpose(1, 2)
        probs = torch.softmax(torch.matmul(q.float(), k.float().transpose(2, 3)) * attn.scale, dim=-1)
        cls = probs.mean(1)[:, 0]  # (B, 1 + patches)
        keys = k.mean(1)  # (B, 1 + patches, head_dim)
        if config.vision_feature_select_strategy == "default":
            cls, keys = cls[:, 1:], keys[:, 1:]
        return features, cls, keys, tower_features

    def prepare(self, images: Sequence[Any], questions: Sequence[str]) -> PromptBatch:
        """Samples with ``extras["patch_keys"]`` and ``extras["vision_features"]`` ``(Nv, C)``: each visual
        token's vision-tower features before the projector (``vision_feature_layer``'s hidden states)."""
        self.check_prompts(images, questions)
        pixel_values = self.processor.image_processor(list(images), return_tensors="pt")["pixel_values"]
        features, cls, keys, tower = self.encode_images_with_inputs(pixel_values)
        grid = _square_grid(features.shape[1])
        samples = [
            self._sample(q, features[b], None if cls is None else cls[b], grid, image)
            for b, (q, image) in enumerate(zip(questions, images))
        ]
        for b, sample in enumerate(samples):
            if keys is not None:
                sample.extras["patch_keys"] = keys[b].float().cpu()
            sample.extras["vision_features"] = tower[b]
        return PromptBatch(samples)

    def encode_prompts(self, images: Sequence[Any], questions: Sequence[str]) -> tuple[
            torch.Tensor, torch.Tensor | None, torch.Tensor | None, tuple[int, int] | None]:
        """Checked prompts' images through the vision tower: features, [CLS] scores, patch keys, grid."""
        self.check_prompts(images, questions)
        pixel_values = self.processor.image_processor(list(images), return_tensors="pt")["pixel_values"]
        features, cls, keys = self.encode_images(pixel_values)
        return features, cls, keys, _square_grid(features.shape[1])

    def _sample(self, question, features, cls, grid, image) -> Sample:
        tokenizer = self.processor.tokenizer
        image_token = getattr(self.processor, "image_token", "<image>")
        head, tail = self.prompt_template.split(self.image_placeholder)
        q_at = tail.index("{question}")
        tail = tail.replace("{question}", question)
        text = head + image_token * features.shape[0] + tail
        q_start = len(head) + len(image_token) * features.shape[0] + q_at
        q_end = q_start + len(question)
        enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
        ids = torch.tensor(enc["input_ids"], dtype=torch.long)
        roles = torch.full_like(ids, Role.SUFFIX)
        visual = ids == self.model.config.image_token_id
        first = int(torch.nonzero(visual)[0]) if visual.any() else len(ids)
        roles[:first] = Role.PREFIX
        for t, (a, b) in enumerate(enc["offset_mapping"]):
            if t > first and b > a and a < q_end and b > q_start:
                roles[t] = Role.QUESTION
        roles[visual] = Role.VISUAL
        sample = Sample(ids, roles, features, None if cls is None else cls.float().cpu(), grid, image)
        sample.extras["question_embeddings"] = self.question_embeddings(ids, roles)
        if grid is not None and image is not None and hasattr(image, "size"):
            sample.pixel_boxes = self.token_boxes(tuple(image.size), grid)
        return sample

    def token_boxes(self, image_size: tuple[int, int], grid: tuple[int, int]) -> TokenBoxes:
        """Which rectangle of the original image each visual token saw, under this processor's
        resize / center-crop / pad-to-square settings (see :mod:`vtsched.core.pixels`)."""
        ip = self.processor.image_processor
        size, crop_size = getattr(ip, "size", None), getattr(ip, "crop_size", None)
        resize: tuple[int, int] | int | None = None
        if getattr(ip, "do_resize", True):
            if _field(size, "shortest_edge"):
                resize = int(_field(size, "shortest_edge"))
            elif _field(size, "height") and _field(size, "width"):
                resize = (int(_field(size, "width")), int(_field(size, "height")))
        crop = None
        if getattr(ip, "do_center_crop", False) and _field(crop_size, "height"):
            crop = (int(_field(crop_size, "width")), int(_field(crop_size, "height")))
        window = processed_window(image_size, pad_to_square=bool(getattr(ip, "do_pad", False)), resize=resize,
                                  crop=crop)
        return TokenBoxes(grid_boxes(image_size, grid[0], grid[1], window=window), image_size)


def _square_grid(tokens: int) -> tuple[int, int] | None:
    """``(side, side)`` when ``tokens`` fill a square patch grid, else ``None`` (a [CLS] token kept)."""
    side = int(round(tokens ** 0.5))
    return (side, side) if side * side == tokens else None


def _field(size: Any, key: str) -> Any:
    """``size[key]`` for the dicts and ``SizeDict`` objects image processors carry (``None`` if absent)."""
    if size is None:
        return None
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)
