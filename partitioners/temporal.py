"""``temporal``: EVS (Efficient Video Sampling), a merged patch that barely changes from the same
patch in the previous frame is redundant; the first frame is kept whole.

Reproduced (from vLLM's ``vllm/multimodal/evs.py``, ``compute_retention_mask``, the code behind its
``video_pruning_rate``):

- the features: the video's visual tokens as they enter the LLM (after the patch merger), laid out
  frame by frame on the merged grid (``Sample.video``; a frame is one temporal patch pair);
- a token's dissimilarity is ``1 - cos`` between its features and those of the token at the same
  row and column of the previous frame (``torch.nn.functional.cosine_similarity``); every token of
  the first frame scores 255, above any dissimilarity (at most 2), so it is kept first;
- one ranking over the whole video, descending, ties to the lower token index (a stable sort, as
  vLLM's ``argsort(..., descending=True, stable=True)``), and the first ``R`` are kept.

Differs, and why:

- the count: vLLM keeps ``max(tokens_per_frame, int(N * (1 - q)))`` for a pruning rate ``q``; here
  the count is the budget's, exactly, whatever it is: a ratio budget ``r`` keeps ``round(r * N)``
  (``--budget`` ``1 - q`` is EVS's rate ``q`` up to that rounding), and a budget smaller than one
  frame keeps the first frame's first ``R`` tokens in raster order (what the same ranking gives),
  where vLLM would keep the whole first frame.
- positions: vLLM recomputes the M-RoPE ids of what it keeps (``recompute_mrope_positions``); here
  every kept token keeps its original position ids, the engine's rule for every method.
- the cosine is computed in float64 (vLLM: the model's dtype) and the dissimilarity rounded to 9
  decimals, so a patch that did not change scores exactly 0 and ties break by index, not by
  rounding noise, on every device.

A still image has no previous frame: it is refused in one line (use an image partitioner).
Scores: the dissimilarity (255 for the first frame): higher means "changed more".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from vtsched.core.budget import Budget
from vtsched.core.errors import InputError
from vtsched.core.geometry import ModelGeometry
from vtsched.core.partition import NON_SUBJECT, SUBJECT, Partition
from vtsched.core.policy import Partitioner
from vtsched.core.tokens import PromptBatch, Sample, VideoLayout

__all__ = ["TemporalRedundancy", "FIRST_FRAME_SCORE", "frame_dissimilarity", "video_layout"]

FIRST_FRAME_SCORE = 255.0  # EVS's score for every token of the first frame: above any 1 - cos


def video_layout(b: int, sample: Sample, who: str) -> VideoLayout:
    """The sample's frame layout, or a one-line refusal naming the partitioner (a still image)."""
    if sample.video is None:
        raise InputError(f"{who}: sample {b} is a still image; {who} compares the frames of a video "
                         "(give a video, or use an image partitioner)")
    return sample.video


def frame_dissimilarity(features: torch.Tensor, layout: VideoLayout) -> torch.Tensor:
    """``(num_visual,)`` float64: ``1 - cos`` (to 9 decimals) with the same merged patch of the previous frame, and
    :data:`FIRST_FRAME_SCORE` for every token of the first frame."""
    frames = layout.by_frame(features.detach().double())  # (frames, tokens_per_frame, d)
    changed = torch.round(1.0 - torch.nn.functional.cosine_similarity(frames[1:], frames[:-1], dim=-1), decimals=9)
    first = torch.full((1, layout.tokens_per_frame), FIRST_FRAME_SCORE, dtype=torch.float64)
    return torch.cat((first, changed)).flatten()


@dataclass(frozen=True)
class TemporalRedundancy(Partitioner):
    """The budget's tokens that changed most from the previous frame (EVS), the first frame first."""

    name: ClassVar[str] = "temporal"
    aliases: ClassVar[tuple[str, ...]] = ("evs",)

    def selection_flops(self, num_visual: int, keep: int, geometry: ModelGeometry) -> float:
        """One dot product of width ``hidden_size`` per token and its predecessor: at most ``2 N d``."""
        return 2.0 * num_visual * geometry.hidden_size

    def partition(self, batch: PromptBatch, budget: Budget) -> Partition:
        assignment, scores = [], []
        for b, sample in enumerate(batch.samples):
            changed = frame_dissimilarity(sample.visual_features, video_layout(b, sample, self.name))
            ids = torch.ones(sample.num_visual, dtype=torch.long)
            # sorted in float64: a float32 copy could tie scores that differ, and break them by index
            ids[torch.sort(-changed, stable=True).indices[:budget.resolve(sample.num_visual)]] = 0
            assignment.append(ids)
            scores.append(changed.float())
        return Partition((SUBJECT, NON_SUBJECT), tuple(assignment), tuple(scores))
