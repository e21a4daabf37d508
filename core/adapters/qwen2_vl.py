"""Qwen2-VL and Qwen2.5-VL (``Qwen2VLForConditionalGeneration``, ``Qwen2_5_VLForConditionalGeneration``).

Visual tokens are the **merger's outputs**: the vision tower runs on 14-px patches and the
merger joins each 2x2 group into one LLM token (28x28 px of the smart-resized image). Every
partitioner works on those merged tokens, never on pre-merge patches.

Positions: Qwen2-VL's M-RoPE gives every token three rotary position ids (temporal, height,
width). Text advances all three by one; an image's tokens share one temporal id and take their
row/column on the merged grid, offset by the position where the image starts; the text after an
image resumes at ``start + max(rows, cols)``, not at ``start + tokens``. The adapter computes
them with the model's own ``get_rope_index`` and hands them to the engine as
``Sample.rope_positions`` ``(3, T)``; the engine keeps them for kept tokens and continues
decoding at ``max + 1`` (never from a cached delta that a shortened prefill would make wrong).

Scores: there is no [CLS]. The ``attention`` score of a merged token is the attention it
receives in the vision tower's last full-attention block (the last block for Qwen2-VL; the
last of ``fullatt_block_indexes`` for Qwen2.5-VL), recomputed from that block's input (its
``qkv`` projection and vision rotary embedding, a block-diagonal mask per image): averaged over
heads, summed over queries, averaged over the token's 2x2 patches, window order undone for
Qwen2.5-VL. The block's keys, averaged over heads and the 2x2 patches, give ``patch_keys``.
``vision_features``: the merger's input for each merged token, its 2x2 patches' last-block states side
by side ``(N, 4 * C)`` (what the merger's MLP reads, before its LayerNorm), in the LLM's order.

Video: a prompt's visual input may be a :class:`~vtsched.core.pixels.video.Video` (sampled frames).
Its frames go through the processor's video path as sampled; the tower embeds pairs of frames
(temporal patches), so the span holds ``frames x rows x cols`` merged tokens, frame-major, between
``<|vision_start|>`` and ``<|vision_end|>`` as ``<|video_pad|>``. Time ids come from the model's own
``get_rope_index`` (Qwen2.5-VL: spaced by ``tokens_per_second`` times the seconds each temporal
patch spans, ``second_per_grid_ts``); ``Sample.video`` says which tokens are which frame, and each
token's pixel box is a cell of its frame. The scores and keys are per frame, as the tower attends
within one temporal patch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from vtsched.core.adapters.base import (
    DecoderParts, ModelAdapter, decoder_sizes, llama_style_decoder, rotate_half,
)
from vtsched.core.errors import InputError
from vtsched.core.geometry import ModelGeometry
from vtsched.core.pixels import TokenBoxes, grid_boxes, video_boxes
from vtsched.core.pixels.video import Video
from vtsched.core.tokens import PromptBatch, Role, Sample, VideoLayout

__all__ = ["Qwen2VLAdapter", "Qwen2_5_VLAdapter", "NOMINAL_IMAGE_SIDE", "attention_received"]

NOMINAL_IMAGE_SIDE = 672  # explain/bench count tokens for a 672x672 image (576 merged tokens)
IMAGE_PAD, VISION_START, VISION_END = "<|image_pad|>", "<|vision_start|>", "<|vision_end|>"
VIDEO_PAD = "<|video_pad|>"
QUERY_CHUNK = 1024  # query rows scored at once (bounds the score matrix for large images)


def attention_received(q: torch.Tensor, k: torch.Tensor, bounds: Sequence[int], scaling: float) -> torch.Tensor:
    """``(N,)`` attention each token receives: softmax over each image's keys, mean over heads, sum over queries.

    ``q``, ``k``: ``(N, heads, head_dim)`` rotated queries and keys of all images' patches;
    ``bounds``: cumulative patch counts per image (``cu_seqlens``), so attention stays within an image.
    """
    received = torch.zeros(q.shape[0], dtype=torch.float32, device=q.device)
    for start, end in zip(bounds[:-1], bounds[1:]):
        keys = k[start:end].float().transpose(0, 1)  # (heads, n, d)
        for chunk in range(start, end, QUERY_CHUNK):
            queries = q[chunk:min(end, chunk + QUERY_CHUNK)].float().transpose(0, 1)  # (heads, c, d)
            probs = torch.softmax(torch.matmul(queries, keys.transpose(1, 2)) * scaling, dim=-1)
            received[start:end] += probs.mean(0).sum(0)
    return received


class Qwen2VLAdapter(ModelAdapter):
    """Adapter for ``transformers.Qwen2VLForConditionalGeneration`` (Qwen/Qwen2-VL-*-Instruct)."""

    name: ClassVar[str] = "qwen2_vl"
    model_type: ClassVar[str] = "qwen2_vl"
    # What Qwen's chat template renders for one image and one question (used when the processor
    # has no chat template of its own).
    prompt_template: ClassVar[str] = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n"
    )
    image_placeholder: ClassVar[str] = IMAGE_PAD
    default_partitioner: ClassVar[str] = "attention"
    takes_video: ClassVar[bool] = True

    def __init__(self, model: nn.Module, processor: Any = None, **options: Any) -> None:
        super().__init__(model, processor, **options)
        template = self.chat_prompt(IMAGE_PAD)
        if template is not None:  # the checkpoint's own chat template
            self.prompt_template = template  # type: ignore[misc]

    @classmethod
    def model_class(cls) -> type:
        from transformers import Qwen2VLForConditionalGeneration

        return Qwen2VLForConditionalGeneration

    @classmethod
    def accepts(cls, model: nn.Module) -> bool:
        return type(model) is cls.model_class()

    # -- model structure ---------------------------------------------------------------------
    @property
    def visual(self) -> Any:
        return self.model.model.visual

    @classmethod
    def geometry_from_config(cls, config: Any) -> ModelGeometry:
        """Sizes; ``num_visual`` is the merged-token count of a 672x672 image (576)."""
        text, vision = config.text_config, config.vision_config
        unit = vision.patch_size * vision.spatial_merge_size
        merged = (NOMINAL_IMAGE_SIDE // unit) ** 2
        width, mlp = cls._vision_widths(vision)
        return ModelGeometry(
            **decoder_sizes(text),
            num_visual=merged,
            vision_layers=vision.depth,
            vision_hidden_size=width,
            vision_intermediate_size=mlp,
            vision_tokens=merged * vision.spatial_merge_size**2,
        )

    @staticmethod
    def _vision_widths(vision: Any) -> tuple[int, int]:
        return vision.embed_dim, int(vision.embed_dim * vision.mlp_ratio)

    @classmethod
    def nominal_image_side(cls, config: Any) -> int:
        return NOMINAL_IMAGE_SIDE

    @classmethod
    def budget_notes(cls, config: Any, keep: int, partitioner: str | None,
                     partitioner_params: Mapping[str, Any]) -> list[str]:
        unit = config.vision_config.patch_size * config.vision_config.spatial_merge_size
        n = (NOMINAL_IMAGE_SIDE // unit) ** 2
        return [
            f"visual tokens are the merger's outputs ({unit}x{unit} px, 2x2 patches each): {n} for a "
            f"{NOMINAL_IMAGE_SIDE}x{NOMINAL_IMAGE_SIDE} image, (H/{unit})x(W/{unit}) after smart resize otherwise "
            "(at most 1280 by default); a count budget is checked against each image's own tokens",
            "kept tokens keep their 3-row M-RoPE position ids; decoding continues at max(prompt ids) + 1",
        ]

    def decoder(self) -> DecoderParts:
        # three M-RoPE rows; Qwen2-VL's text model passes no position_ids to its layers when unpacked
        return llama_style_decoder(self.language_model, self.model.lm_head, rope_rows=3, layer_position_ids=False)

    # -- the vision tower: merged features, attention scores, keys ----------------------------
    def _score_block(self) -> int:
        """The last full-attention block (Qwen2-VL: every block attends over the whole image)."""
        return len(self.visual.blocks) - 1

    def _window_order(self, grid_thw: torch.Tensor) -> torch.Tensor | None:
        """Merged-token order inside the tower (``None``: the LLM's order)."""
        return None

    @torch.inference_mode()
    def encode_images(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Per image: merged ``features`` ``(N, D)``, ``scores`` ``(N,)`` (attention received),
        ``keys`` ``(N, head_dim)`` and ``tower`` ``(N, 4 * C)`` (the merger's input), in the LLM's token order."""
        visual = self.visual
        index = self._score_block()
        block = visual.blocks[index]
        seen: dict[str, Any] = {}

        def capture(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            seen["hidden"] = args[0] if args else kwargs["hidden_states"]
            seen["cu_seqlens"] = kwargs["cu_seqlens"]
            seen["position_embeddings"] = kwargs["position_embeddings"]

        def capture_merger_input(module: nn.Module, args: tuple[Any, ...]) -> None:
            seen["merger_input"] = args[0]

        handle = block.register_forward_pre_hook(capture, with_kwargs=True)  # removed before returning
        merger_handle = visual.merger.register_forward_pre_hook(capture_merger_input)
        try:
            out = visual(pixel_values.to(self.device, visual.dtype), grid_thw=grid_thw.to(self.device))
        finally:
            handle.remove()
            merger_handle.remove()
        merged = out.pooler_output
        attn = block.attn
        x = block.norm1(seen["hidden"])
        n = x.shape[0]
        q, k, _ = attn.qkv(x).reshape(n, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        cos, sin = seen["position_embeddings"]
        q, k = _rotate_vision(q, k, cos, sin)
        bounds = [int(v) for v in seen["cu_seqlens"].tolist()]
        unit = visual.spatial_merge_size**2
        scores = attention_received(q, k, bounds, attn.scaling).view(-1, unit).mean(1)
        keys = k.float().mean(1).view(-1, unit, k.shape[-1]).mean(1)
        tower = seen["merger_input"].reshape(scores.shape[0], -1)  # (N, unit * C): each merged token's patches
        order = self._window_order(grid_thw)
        if order is not None:  # tower order -> LLM order, as the merger's output is un-permuted
            reverse = torch.argsort(order.to(scores.device))
            scores, keys, tower = scores[reverse], keys[reverse], tower[reverse]
        counts = (grid_thw.prod(-1) // unit).tolist()
        return [
            {"features": f, "scores": s.cpu(), "keys": kk.cpu(), "tower": t}
            for f, s, kk, t in zip(torch.split(merged, counts), torch.split(scores, counts),
                                   torch.split(keys, counts), torch.split(tower, counts))
        ]

    # -- prompts -----------------------------------------------------------------------------
    def prepare(self, images: Sequence[Any], questions: Sequence[str]) -> PromptBatch:
        """One sample per prompt; a prompt's visual input is a still image or a
        :class:`~vtsched.core.pixels.video.Video` (its frames through the processor's video path)."""
        self.check_prompts(images, questions)
        template = self.prompt_template
        if template.count(VISION_START + IMAGE_PAD + VISION_END) != 1:
            raise InputError(f"{self.name}: the prompt template has no {VISION_START}{IMAGE_PAD}{VISION_END} "
                             "span for the image; a Qwen prompt needs exactly one")
        for b, question in enumerate(questions):
            if any(token in question for token in (IMAGE_PAD, VISION_START, VISION_END, VIDEO_PAD)):
                raise InputError(f"question {b} contains a vision token; give the image separately, one per prompt")
        stills = [b for b, image in enumerate(images) if not isinstance(image, Video)]
        samples: dict[int, Sample] = {}
        if stills:
            processed = self.processor.image_processor([images[b] for b in stills], return_tensors="pt")
            grid_thw = processed["image_grid_thw"]
            encoded = self.encode_images(processed["pixel_values"], grid_thw)
            for i, b in enumerate(stills):
                sample = self._sample(questions[b], encoded[i]["features"], grid_thw[i])
                size = getattr(images[b], "size", None)
                if isinstance(size, tuple) and len(size) == 2 and sample.grid is not None:
                    sample.pixel_boxes = TokenBoxes(grid_boxes(size, *sample.grid), size)
                samples[b] = self._with_signals(sample, images[b], encoded[i])
        for b, video in enumerate(images):
            if isinstance(video, Video):
                samples[b] = self._video_sample(questions[b], video)
        return PromptBatch([samples[b] for b in range(len(images))])

    @staticmethod
    def _with_signals(sample: Sample, image: Any, encoded: Mapping[str, torch.Tensor]) -> Sample:
        sample.image = image
        sample.extras["attention_scores"] = encoded["scores"]
        sample.extras["patch_keys"] = encoded["keys"]
        sample.extras["vision_features"] = encoded["tower"]
        return sample

    def video_inputs(self, video: Video) -> dict[str, torch.Tensor]:
        """The processor's video inputs for ``video``'s frames as sampled (no resampling):
        ``pixel_values_videos``, ``video_grid_thw`` and the seconds each temporal step spans,
        ``second_per_grid_ts`` (temporal patch size / the sampled rate, as the Qwen2.5-VL processor
        derives it from the clip's metadata)."""
        processor = self.processor.video_processor
        out = processor(videos=[video.frames], return_tensors="pt", do_sample_frames=False)
        seconds = processor.temporal_patch_size / video.sampled_fps
        return {"pixel_values_videos": out["pixel_values_videos"], "video_grid_thw": out["video_grid_thw"],
                "second_per_grid_ts": torch.tensor([seconds])}

    def _video_sample(self, question: str, video: Video) -> Sample:
        """A prompt whose visual span is a video: ``<|video_pad|>`` tokens, frame-major merged tokens,
        M-RoPE time ids from the model's own ``get_rope_index``, boxes and the frame layout."""
        inputs = self.video_inputs(video)
        grid_thw = inputs["video_grid_thw"]
        encoded = self.encode_images(inputs["pixel_values_videos"], grid_thw)[0]
        sample = self._sample(question, encoded["features"], grid_thw[0], video=True,
                              second_per_grid=inputs["second_per_grid_ts"])
        frames, rows, cols = int(grid_thw[0, 0]), *(int(v) // self.visual.spatial_merge_size for v in grid_thw[0, 1:])
        step = self.processor.video_processor.temporal_patch_size
        padded = list(video.indices) + [video.indices[-1]] * (frames * step - video.num_frames)
        source = tuple(tuple(padded[t * step:(t + 1) * step]) for t in range(frames))
        sample.video = VideoLayout(frames, rows, cols, tuple(s[0] / video.fps for s in source), source)
        sample.pixel_boxes = video_boxes(video.size, frames, rows, cols)
        return self._with_signals(sample, video, encoded)

    def _sample(self, question: str, features: torch.Tensor, grid_thw: torch.Tensor, *, video: bool = False,
                second_per_grid: torch.Tensor | None = None) -> Sample:
        """Token ids (the image or video pad expanded to one token per merged feature), roles, M-RoPE ids."""
        tokenizer = self.processor.tokenizer
        pad = VIDEO_PAD if video else IMAGE_PAD
        head, tail = self.prompt_template.split(self.image_placeholder)
        n = features.shape[0]
        q_start = len(head) + len(pad) * n + tail.index("{question}")
        text = head + pad * n + tail.replace("{question}", question)
        q_end = q_start + len(question)
        enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
        ids = torch.tensor(enc["input_ids"], dtype=torch.long)
        config = self.model.config
        visual = ids == (config.video_token_id if video else config.image_token_id)
        if int(visual.sum()) != n:
            raise InputError(f"{self.name}: the prompt has {int(visual.sum())} vision tokens for {n} visual features")
        roles = torch.full_like(ids, Role.SUFFIX)
        first = int(torch.nonzero(visual)[0])
        roles[:first] = Role.PREFIX
        for t, (a, b) in enumerate(enc["offset_mapping"]):
            if t > first and b > a and a < q_end and b > q_start:
                roles[t] = Role.QUESTION
        roles[visual] = Role.VISUAL
        grids: dict[str, Any] = ({"video_grid_thw": grid_thw[None].to(self.device),
                                  "second_per_grid_ts": second_per_grid} if video
                                 else {"image_grid_thw": grid_thw[None].to(self.device)})
        positions, _ = self.model.model.get_rope_index(
            ids[None].to(self.device), mm_token_type_ids=(visual[None].int() * (2 if video else 1)).to(self.device),
            **grids,
        )
        merge = self.visual.spatial_merge_size
        grid = None if video else (int(grid_thw[1]) // merge, int(grid_thw[2]) // merge)
        sample = Sample(ids, roles, features, None, grid, rope_positions=positions[:, 0].cpu())
        sample.extras["question_embeddings"] = self.question_embeddings(ids, roles)
        return sample


class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    """Adapter for ``transformers.Qwen2_5_VLForConditionalGeneration`` (Qwen/Qwen2.5-VL-*-Instruct).

    Its tower attends within windows except in ``fullatt_block_indexes``; the score reads the last
    of those, and undoes the window order the tower works in.
    """

    name: ClassVar[str] = "qwen2_5_vl"
    model_type: ClassVar[str] = "qwen2_5_vl"

    @classmethod
    def model_class(cls) -> type:
        from transformers import Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLForConditionalGeneration

    @staticmethod
    def _vision_widths(vision: Any) -> tuple[int, int]:
        return vision.hidden_size, vision.intermediate_size

    def _score_block(self) -> int:
        full = list(self.model.config.vision_config.fullatt_block_indexes or [])
        return max(full) if full else len(self.visual.blocks) - 1

    def _window_order(self, grid_thw: torch.Tensor) -> torch.Tensor | None:
        from transformers.vision_utils import get_vision_window_index

        visual = self.visual
        order, _ = get_vision_window_index(grid_thw, spatial_merge_size=visual.spatial_merge_size,
                                           window_size=visual.window_size, patch_size=visual.patch_size)
        return order


def _rotate_vision(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """The vision tower's rotary embedding (``apply_rotary_pos_emb_vision``), in float32."""
    cos, sin = cos.unsqueeze(-2).float(), sin.unsqueeze(-2).float()
    q, k = q.float(), k.float()
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
