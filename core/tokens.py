"""The prepared prompt: token ids, token roles and visual features of each sample.

Adapters produce a :class:`PromptBatch`; partitioners read its visual signals; the engine turns
it into rows of hidden states. Samples keep their own lengths: the engine pads, never the user.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["Role", "Sample", "PromptBatch"]


class Role:
    """Token roles (int codes stored in ``Sample.roles``)."""

    PREFIX = 0  # text before the image (system prompt, "USER:")
    VISUAL = 1  # one visual token of the image
    QUESTION = 2  # the user's question
    SUFFIX = 3  # other text after the image ("\n", " ASSISTANT:")
    TAIL = 4  # tokens appended after the prompt (generated ones); only the surviving stream has them
    CARRIED = 5  # a copy of another stream's text token, carried into the survivor (engine-made, never in a Sample)

    FUSED = {"question": (QUESTION,), "post_image": (QUESTION, SUFFIX)}


@dataclass
class Sample:
    """One prompt with one image.

    Attributes:
        input_ids: ``(T,)`` token ids, the image already expanded to one token per visual feature.
        roles: ``(T,)`` :class:`Role` codes.
        visual_features: ``(num_visual, hidden)`` projected features, in image-token order.
        cls_scores: ``(num_visual,)`` head-averaged CLS->patch attention of the vision feature layer.
        grid: ``(rows, cols)`` of the patch grid (``rows * cols == num_visual``).
        image: the input image, for partitioners that look at pixels (segmentation).
        pixel_boxes: where each visual token's pixels came from in the original image
            (:class:`~vtsched.core.pixels.TokenBoxes`), set by adapters that know their
            preprocessing; mask-based partitioners map masks through it.
        extras: adapter signals by name; ``"patch_keys"``: ``(num_visual, head_dim)`` head-averaged
            keys of the CLS-score layer (token similarity for merging); ``"attention_scores"``:
            ``(num_visual,)`` attention each visual token receives in the vision tower (families
            without a [CLS] token, e.g. Qwen2-VL); ``"provenance"``: ``(num_visual, 3)`` long
            ``(tile, row, col)`` of each token in its tile, ``-1`` rows for tokens without pixels
            (LLaVA-NeXT newline tokens).
        rope_positions: the rotary position ids the decoder gives each token, ``(T,)`` or
            ``(R, T)`` for multi-row rotary embeddings (Qwen2-VL's M-RoPE: temporal, height, width);
            ``None`` means a token's rotary position is its place in the sequence (LLaVA). A
            token's place in the sequence (causal order, masks, cache order) is always its index.
    """

    input_ids: torch.Tensor
    roles: torch.Tensor
    visual_features: torch.Tensor
    cls_scores: torch.Tensor | None = None
    grid: tuple[int, int] | None = None
    image: Any = None
    extras: dict[str, Any] = field(default_factory=dict)
    pixel_boxes: Any = None
    rope_positions: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n_visual = int((self.roles == Role.VISUAL).sum())
        if n_visual != self.visual_features.shape[0]:
            raise ValueError(f"{n_visual} image tokens but {self.visual_features.shape[0]} visual features")
        if self.rope_positions is not None and self.rope_positions.shape[-1] != self.input_ids.numel():
            raise ValueError(f"rotary positions for {self.rope_positions.shape[-1]} tokens, the prompt has "
                             f"{self.input_ids.numel()}")

    @property
    def length(self) -> int:
        return int(self.input_ids.numel())

    @property
    def num_visual(self) -> int:
        return int(self.visual_features.shape[0])

    @property
    def visual_positions(self) -> torch.Tensor:
        """Sequence indices of the visual tokens, in image order."""
        return torch.nonzero(self.roles == Role.VISUAL).flatten()

    @property
    def image_start(self) -> int:
        return int(self.visual_positions[0]) if self.num_visual else self.length


@dataclass
class PromptBatch:
    samples: list[Sample]

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_visual(self) -> list[int]:
        return [s.num_visual for s in self.samples]

    def select(self, indices: list[int]) -> PromptBatch:
        return PromptBatch([self.samples[i] for i in indices])
