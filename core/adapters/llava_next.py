"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``): an overview tile plus an unpadded high-res grid.

The image span of one image, in the order the model packs it (``pack_image_features``):

1. the **overview tile**: the whole image squash-resized to one tile (336 px: 24x24 = 576
   tokens), raster order;
2. the **high-resolution grid**: the image resized to fit the best grid pinpoint keeping its
   aspect, centre-padded, cut into tiles, the tiles' tokens laid out as one raster, the rows and
   columns that saw only padding removed (``unpad_image``), and one **newline** token (the
   learned ``image_newline``) ending every row.

At 672x672 that is 576 + 48x48 + 48 = 2,928 tokens; other sizes give other counts (see
docs/backbones.md). Every token's provenance is read back from the model's own packing: a
``(tile, row, col)`` index tensor goes through ``pack_image_features`` exactly as the features
do, so the map can never disagree with the model. Scores: each tile is its own CLIP forward with
its own [CLS]; a token's score is its tile's CLS->patch attention at the feature layer,
recomputed for the CLS row only as the LLaVA-1.5 adapter does. Newline tokens have no pixels (NaN
boxes) and no CLS attention: they score above every image token (``NEWLINE_SCORE``), so
score-based partitioners always keep them, as FasterVLM does, and they count in the budget.
``extras["vision_features"]``: the projector's input (the tiles' vision-tower hidden states), packed
through ``pack_image_features`` like the features, with zero rows for newline tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from vtsched.core.adapters.llava import LlavaAdapter
from vtsched.core.errors import InputError
from vtsched.core.geometry import ModelGeometry
from vtsched.core.pixels import TokenBoxes
from vtsched.core.tokens import PromptBatch

__all__ = ["LlavaNextAdapter", "NEWLINE_SCORE", "next_token_count"]

NEWLINE_SCORE = 2.0  # above any CLS attention (a probability): newline tokens rank first


def next_token_count(config: Any, height: int, width: int) -> int:
    """LLM image tokens of a ``height x width`` image: overview tile + unpadded grid + one newline per row.

    The processor's formula (``LlavaNextProcessor._get_number_of_features``), from the config alone.
    """
    from transformers.image_processing_utils import select_best_resolution

    tile = config.vision_config.image_size
    side = tile // config.vision_config.patch_size
    best_h, best_w = select_best_resolution((height, width), config.image_grid_pinpoints)
    rows, cols = best_h // tile * side, best_w // tile * side
    if width / height > cols / rows:
        new_rows = int(round(height * (cols / width), 7))
        rows -= 2 * ((rows - new_rows) // 2)
    else:
        new_cols = int(round(width * (rows / height), 7))
        cols -= 2 * ((cols - new_cols) // 2)
    return side * side + rows * cols + rows


class LlavaNextAdapter(LlavaAdapter):
    """Adapter for ``transformers.LlavaNextForConditionalGeneration`` (llava-hf/llava-v1.6-*).

    Option ``image_size``: squash-resize every image to ``image_size x image_size`` before the
    processor (672 gives the papers' fixed 2,928-token span; FasterVLM's protocol). Boxes still
    refer to the original image.
    """

    name: ClassVar[str] = "llava_next"
    model_type: ClassVar[str] = "llava_next"

    def __init__(self, model: nn.Module, processor: Any = None, *, image_size: int | None = None) -> None:
        super().__init__(model, processor)
        if image_size is not None and int(image_size) <= 0:
            raise InputError(f"llava_next: image_size {image_size} must be a positive number of pixels")
        self.image_size = None if image_size is None else int(image_size)
        template = self.chat_prompt("<image>")
        if template is not None:  # the checkpoint's own conversation format (vicuna, mistral, ...)
            self.prompt_template = template  # type: ignore[misc]

    @classmethod
    def accepts(cls, model: nn.Module) -> bool:
        from transformers import LlavaNextForConditionalGeneration

        return type(model) is LlavaNextForConditionalGeneration

    @classmethod
    def geometry_from_config(cls, config: Any) -> ModelGeometry:
        """Sizes; ``num_visual`` is the span of a square image at the 2x2-tile pinpoint (2,928 at 672x672)."""
        geometry = LlavaAdapter.geometry_from_config(config)
        tile = config.vision_config.image_size
        from dataclasses import replace

        return replace(geometry, num_visual=next_token_count(config, 2 * tile, 2 * tile))

    @classmethod
    def nominal_image_side(cls, config: Any) -> int:
        """The 2x2-tile pinpoint's side: 672 at 336-px tiles."""
        return 2 * int(config.vision_config.image_size)

    @classmethod
    def budget_notes(cls, config: Any, keep: int, partitioner: str | None,
                     partitioner_params: Mapping[str, Any]) -> list[str]:
        tile = config.vision_config.image_size
        side = tile // config.vision_config.patch_size
        total = next_token_count(config, 2 * tile, 2 * tile)
        newlines, grid = 2 * side, (2 * side) ** 2
        image_tokens = max(0, keep - newlines)
        lines = [
            f"image span of a {2 * tile}x{2 * tile} image: {side * side} overview + {grid} grid + {newlines} newline "
            f"= {total} tokens (other sizes differ per image; --adapter-param image_size={2 * tile} fixes the input)",
        ]
        if partitioner is None:
            return lines + ["the policy ranks newline tokens inside the LLM like every other visual token"]
        if partitioner not in ("cls", "attention", "visionzip"):
            return lines + [f"{partitioner} picks among all {total} span tokens, newline tokens included"]
        lines.append(f"newline tokens are always kept and count in the budget: {keep} = {min(keep, newlines)} newline "
                     f"+ {image_tokens} image tokens entering the LLM")
        if str(partitioner_params.get("budget_mode", "global")) == "per_tile":
            quota = [image_tokens * n // (side * side * 5) for n in [side * side] * 5]
            for i in range(image_tokens - sum(quota)):
                quota[i] += 1
            lines.append(f"per_tile: the {image_tokens} image tokens split over the 5 tiles in proportion to their "
                         f"tokens ({'/'.join(map(str, quota))}), top by each tile's [CLS] attention")
        else:
            lines.append(f"global: the top {image_tokens} image tokens over the whole span by their tile's [CLS] "
                         "attention (budget_mode=per_tile splits them over the tiles)")
        return lines

    # -- inputs ------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Per image: packed ``features`` ``(N, D)``, ``provenance`` ``(N, 3)`` (tile, row, col; -1 for
        newlines), per-token ``scores`` ``(N,)``, ``keys`` ``(N, head_dim)`` (zeros for newlines) and
        ``tower`` ``(N, C)``: the projector's input, packed like the features (zeros for newlines)."""
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        config = self.model.config
        tile = config.vision_config.image_size
        tiles = [image_size_to_num_patches(image_size=s, grid_pinpoints=config.image_grid_pinpoints, patch_size=tile)
                 for s in image_sizes.tolist()]
        pixels = torch.cat([pixel_values[b, :n] for b, n in enumerate(tiles)])
        features, cls, keys, tower = self.encode_images_with_inputs(pixels)  # per tile: (tiles, side*side, ...)
        if cls is None or keys is None:
            raise InputError("llava_next reads features from the patch embeddings: no layer gives [CLS] attention")
        side = int(round(features.shape[1] ** 0.5))
        if side * side != features.shape[1]:
            raise InputError("llava_next needs vision_feature_select_strategy 'default' (patch tokens only)")
        # (tile, row, col) of every tile token, packed exactly as the features are
        rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        where = [torch.stack((torch.arange(n, dtype=torch.float64)[:, None].expand(n, side * side),
                              rows.flatten().double().expand(n, -1), cols.flatten().double().expand(n, -1)), dim=-1)
                 for n in tiles]
        pack = self.model.model.pack_image_features
        strategy = config.vision_feature_select_strategy
        packed, _ = pack(list(torch.split(features, tiles)), image_sizes, strategy, self.model.model.image_newline)
        provenance, _ = pack(where, image_sizes, strategy, torch.full((3,), -1.0, dtype=torch.float64))
        tower_packed, _ = pack(list(torch.split(tower, tiles)), image_sizes, strategy, tower.new_zeros(tower.shape[-1]))
        out = []
        start = 0
        for b, n in enumerate(tiles):
            prov = provenance[b].round().long()
            tile_cls, tile_keys = cls[start:start + n].float().cpu(), keys[start:start + n].float().cpu()
            start += n
            newline = prov[:, 0] < 0
            t, flat = prov[:, 0].clamp(min=0), (prov[:, 1] * side + prov[:, 2]).clamp(min=0)
            scores = tile_cls[t, flat].masked_fill(newline, NEWLINE_SCORE)
            token_keys = tile_keys[t, flat].masked_fill(newline[:, None], 0.0)
            out.append({"features": packed[b], "provenance": prov, "scores": scores, "keys": token_keys,
                        "tower": tower_packed[b]})
        return out

    def prepare(self, images: Sequence[Any], questions: Sequence[str]) -> PromptBatch:
        self.check_prompts(images, questions)
        originals = list(images)
        shown = [self._fixed(image) for image in originals]
        processed = self.processor.image_processor(shown, return_tensors="pt")
        encoded = self.encode(processed["pixel_values"], processed["image_sizes"])
        samples = []
        for b, (question, image) in enumerate(zip(questions, originals)):
            e = encoded[b]
            sample = self._sample(question, e["features"], e["scores"], None, image)
            sample.extras["provenance"] = e["provenance"]
            sample.extras["patch_keys"] = e["keys"]
            sample.extras["vision_features"] = e["tower"]
            size = _image_size(image)
            if size is not None:
                sample.pixel_boxes = self.token_boxes(size, e["provenance"])
            samples.append(sample)
        return PromptBatch(samples)

    def _fixed(self, image: Any) -> Any:
        """The image the processor sees: squash-resized to ``image_size`` when that option is set."""
        if self.image_size is None:
            return image
        if not hasattr(image, "resize"):
            raise InputError("llava_next: the image_size option needs PIL images")
        from PIL import Image

        return image.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)

    def token_boxes(self, image_size: tuple[int, int], provenance: torch.Tensor) -> TokenBoxes:  # type: ignore[override]
        """Which rectangle of the original image each token saw (NaN rows for newline tokens).

        Overview tile: the whole image squash-resized to one tile. Grid tiles: the image resized
        to fit the best pinpoint keeping its aspect (``get_patch_output_size``), centre-padded
        (``divmod(target - size, 2)``), cut into tiles in raster order. With ``image_size`` set the
        processor saw a squash-resized square, mapped back to the original here.
        """
        from transformers.image_processing_utils import select_best_resolution

        config = self.model.config
        tile = config.vision_config.image_size
        side = tile // config.vision_config.patch_size
        width, height = image_size
        seen_w, seen_h = (self.image_size, self.image_size) if self.image_size is not None else (width, height)
        best_h, best_w = select_best_resolution((seen_h, seen_w), config.image_grid_pinpoints)
        tiles_w = best_w // tile
        fit_h, fit_w = _fit(seen_h, seen_w, best_h, best_w)
        pad_y, pad_x = (best_h - fit_h) // 2, (best_w - fit_w) // 2
        t, r, c = provenance[:, 0].double(), provenance[:, 1].double(), provenance[:, 2].double()
        cell = tile / side  # processed pixels per token
        # overview tile: the whole image in side x side cells
        base = torch.stack((c * seen_w / side, r * seen_h / side, (c + 1) * seen_w / side, (r + 1) * seen_h / side), -1)
        # grid tiles: canvas pixels, then undo the centre pad and the aspect-keeping resize
        k = (t - 1).clamp(min=0)
        y0 = (torch.div(k, tiles_w, rounding_mode="floor") * side + r) * cell
        x0 = (torch.remainder(k, tiles_w) * side + c) * cell
        sx, sy = seen_w / fit_w, seen_h / fit_h
        grid = torch.stack(((x0 - pad_x) * sx, (y0 - pad_y) * sy, (x0 + cell - pad_x) * sx, (y0 + cell - pad_y) * sy), -1)
        boxes = torch.where((t == 0)[:, None], base, grid)
        boxes = boxes * torch.tensor([width / seen_w, height / seen_h] * 2, dtype=torch.float64)
        boxes[t < 0] = float("nan")
        return TokenBoxes(boxes, (width, height))


def _fit(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int]:
    """``get_patch_output_size``: the image resized to fit ``target`` keeping its aspect."""
    import math

    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), target_h), target_w
    return target_h, min(math.ceil(width * scale_h), target_w)


def _image_size(image: Any) -> tuple[int, int] | None:
    size = getattr(image, "size", None)
    return tuple(size) if isinstance(size, tuple) and len(size) == 2 else None  # type: ignore[return-value]
