"""The prepared prompt: token ids, token roles and visual features of each sample.

Adapters produce a :class:`PromptBatch`; partitioners read its visual signals; the engine turns
it into rows of hidden states. Samples keep their own lengths: the engine pads, never the user.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["Role", "Sample", "PromptBatch", "VideoLayout"]


class Role:
    """Token roles (int codes stored in ``Sample.roles``)."""

    PREFIX = 0  # text before the image (system prompt, "USER:")
    VISUAL = 1  # one visual token of the image
    QUESTION = 2  # the user's question
    SUFFIX = 3  # other text after the image ("\n", " ASSISTANT:")
    TAIL = 4  # tokens appended after the prompt (generated ones); only the surviving stream has them
    CARRIED = 5  # a copy of another stream's text token, carried into the survivor (engine-made, never in a Sample)

    FUSED = {"question": (QUESTION,), "post_image": (QUESTION, SUFFIX)}


@dataclass(frozen=True)
class VideoLayout:
    """How a video's visual tokens fall into frames: what a policy or partitioner reads to see groups per frame.

    A *frame* here is one step of the model's temporal grid, not one source frame: Qwen2-VL and
    Qwen2.5-VL embed two consecutive sampled frames together (a temporal patch pair), so a clip
    of 8 sampled frames has ``frames == 4``. The tokens are frame-major and raster order within a
    frame (``rows x cols`` merged tokens each), as the vision tower's merger emits them: token ``i``
    is frame ``i // (rows * cols)``, row ``(i // cols) % rows``, column ``i % cols``.

    Attributes:
        frames: temporal steps the model sees.
        rows, cols: the merged token grid of each frame.
        times: ``(frames,)`` seconds into the clip at which each step's first sampled frame lies.
        source_frames: per step, the source clip's frame indices it embeds (the last one repeated
            where the processor padded an odd count).
    """

    frames: int
    rows: int
    cols: int
    times: tuple[float, ...] = ()
    source_frames: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self) -> None:
        if min(self.frames, self.rows, self.cols) < 1:
            raise ValueError(f"a video layout needs at least one frame, row and column, got "
                             f"{self.frames} x {self.rows} x {self.cols}")
        for name in ("times", "source_frames"):
            if getattr(self, name) and len(getattr(self, name)) != self.frames:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries for {self.frames} frames")

    @property
    def tokens_per_frame(self) -> int:
        return self.rows * self.cols

    @property
    def num_visual(self) -> int:
        return self.frames * self.tokens_per_frame

    def frame_of_token(self) -> torch.Tensor:
        """``(num_visual,)`` long: the frame of each visual token."""
        return torch.arange(self.frames).repeat_interleave(self.tokens_per_frame)

    def tokens_of_frame(self, frame: int) -> torch.Tensor:
        """Visual-token indices (sorted) of ``frame``."""
        if not 0 <= frame < self.frames:
            raise ValueError(f"frame {frame} outside 0..{self.frames - 1}")
        return torch.arange(frame * self.tokens_per_frame, (frame + 1) * self.tokens_per_frame)

    def by_frame(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` ``(num_visual, ...)`` viewed ``(frames, tokens_per_frame, ...)``."""
        return values.reshape(self.frames, self.tokens_per_frame, *values.shape[1:])


@dataclass
class Sample:
    """One prompt with one image (or one video, on families that take video: see ``video``).

    Attributes:
        input_ids: ``(T,)`` token ids, the image already expanded to one token per visual feature.
        roles: ``(T,)`` :class:`Role` codes.
        visual_features: ``(num_visual, hidden)`` projected features, in image-token order.
        cls_scores: ``(num_visual,)`` head-averaged CLS->patch attention of the vision feature layer.
        grid: ``(rows, cols)`` of the patch grid (``rows * cols == num_visual``); ``None`` for a video
            (its per-frame grid is in ``video``).
        image: the input image, for partitioners that look at pixels (segmentation); the
            :class:`~vtsched.core.pixels.video.Video` for a video prompt.
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
        video: for a video prompt, how its visual tokens fall into frames (:class:`VideoLayout`);
            ``None`` for a still image. Temporal partitioners read it to compare frames and to
            split a budget across them.
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
    video: VideoLayout | None = None

    def __post_init__(self) -> None:
        n_visual = int((self.roles == Role.VISUAL).sum())
        if n_visual != self.visual_features.shape[0]:
            raise ValueError(f"{n_visual} image tokens but {self.visual_features.shape[0]} visual features")
        if self.video is not None and self.video.num_visual != n_visual:
            raise ValueError(f"the video layout has {self.video.num_visual} tokens, the prompt {n_visual} visual tokens")
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
