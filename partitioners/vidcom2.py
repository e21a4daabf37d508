"""``vidcom2``: VidCom2 (Liu et al., 2025), frame uniqueness sets per-frame budgets, and each frame
keeps its most distinct tokens.

Reproduced (from the official code, xuyang-liu16/VidCom2, ``vidcom2_compression`` in
``token_compressor/vidcom2/vidcom2.py``, the path its Qwen2-VL/2.5-VL patches call):

- the features: the video's merged tokens as they enter the LLM (the merger's output), frame by
  frame (a frame is one temporal patch pair; ``Sample.video``);
- the channels: the half (``int(d / 2)``) with the lowest variance over all the video's tokens
  (population variance); each token is then L2-normalised over those channels;
- two similarities per token, each a sum of Gaussian kernels ``exp(-||x - c||^2 / (2 a))`` over
  ``a`` in 1/8, 1/4, 1/2, 1, 2: to the video's centre (the mean of all its normalised tokens) and
  to its frame's centre (the mean of the frame's);
- a frame's uniqueness is minus its tokens' mean similarity to the video centre; its weight is
  ``1 + p_t - mean(p)`` with ``p = softmax((u - max u) / 0.01)`` over frames, so a frame that stands
  out gets a larger share (the official per-frame scale is ``base * weight``);
- within a frame, the kept tokens are those with the lowest sum of the two similarities (the most
  distinct from both the video and their frame), and every frame keeps at least one token.

Differs, and why:

- the count is the budget's, exactly. The official code keeps ``round(base * weight_t * n_t)``
  tokens per frame (clamped to ``1..n_t``), which sums to about, not exactly, ``base * N``. Here
  frame t's share of the budget ``R`` is ``e_t = R * weight_t / frames`` (the official scale with
  ``base = R / N``; the shares sum to ``R``), and the ``R`` tokens are handed out as seats: first one
  per frame (when ``R >= frames``: the official ``min=1``), then one at a time to the frame with the
  largest ``e_t - k_t`` among frames not yet full (ties: the lower frame), so no frame exceeds its
  ``n_t`` tokens (the official ``clamp(max=1.0)``) and what a full frame cannot take goes to the others.
- ties are broken towards the lower channel, frame and token index (``topk`` leaves them
  unspecified); everything is computed in float64 (the official code: the model's dtype), and the
  channel variances, the frames' shares and the tokens' similarities are compared to 9 decimals, so
  equal values (repeated frames, constant channels) tie exactly instead of by rounding noise.
- positions: every kept token keeps its original M-RoPE ids (the official Qwen2-VL patch also keeps
  the full prompt's position ids of what it keeps, so here the two agree).

A still image has no frames to compare: it is refused in one line (use an image partitioner).
Scores: minus the token's summed similarity, plus a large offset for the chosen ones, so the top
``R`` by score are the chosen tokens and the rest are ranked by distinctness.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from vtsched.core.budget import Budget
from vtsched.core.geometry import ModelGeometry
from vtsched.core.partition import NON_SUBJECT, SUBJECT, Partition
from vtsched.core.policy import Partitioner
from vtsched.core.tokens import PromptBatch, VideoLayout
from vtsched.partitioners.temporal import video_layout

__all__ = ["VidCom2", "KERNEL_SCALES", "TEMPERATURE", "vidcom2_similarities", "frame_weights", "frame_quotas"]

KERNEL_SCALES = (0.125, 0.25, 0.5, 1.0, 2.0)  # the official alphas, 2**k for k in -3..1
TEMPERATURE = 0.01  # the official softmax temperature over frame uniqueness


def _gaussian(x: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    squared = ((x - centre) ** 2).sum(-1)
    return sum(torch.exp(-squared / (2 * a)) for a in KERNEL_SCALES)  # type: ignore[return-value]


def vidcom2_similarities(features: torch.Tensor, layout: VideoLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """``(frames, tokens_per_frame)`` float64 similarities of each token to the video's centre and to its
    frame's centre, on the normalised lowest-variance half of the channels."""
    x = features.detach().double()
    variance = x.var(dim=0, unbiased=False)
    channels = torch.sort(torch.round(variance, decimals=9), stable=True).indices[:max(1, x.shape[-1] // 2)]
    frames = torch.nn.functional.normalize(layout.by_frame(x[:, channels]), dim=-1)
    video_centre = frames.mean(dim=(0, 1), keepdim=True)
    frame_centre = frames.mean(dim=1, keepdim=True)
    return _gaussian(frames, video_centre), _gaussian(frames, frame_centre)


def frame_weights(video_similarity: torch.Tensor) -> torch.Tensor:
    """``(frames,)`` ``1 + p - mean(p)``: ``p`` the softmax of frame uniqueness (minus the mean similarity
    to the video centre) at temperature 0.01; the weights average to one."""
    uniqueness = -video_similarity.mean(dim=-1)
    p = torch.softmax((uniqueness - uniqueness.max()) / TEMPERATURE, dim=0)
    return 1.0 + p - p.mean()


def frame_quotas(weights: torch.Tensor, keep: int, tokens_per_frame: int) -> list[int]:
    """Per frame, how many of the ``keep`` tokens it keeps: one each first (when ``keep >= frames``), then
    one at a time to the frame furthest below its share ``keep * weight / frames`` that is not full."""
    frames = weights.numel()
    if not 0 <= keep <= frames * tokens_per_frame:
        raise ValueError(f"keep {keep} outside 0..{frames * tokens_per_frame}")
    share = torch.round(keep * weights / frames, decimals=9).tolist()
    counts = [1] * frames if keep >= frames else [0] * frames
    for _ in range(keep - sum(counts)):
        open_frames = [t for t in range(frames) if counts[t] < tokens_per_frame]
        t = max(open_frames, key=lambda f: (share[f] - counts[f], -f))
        counts[t] += 1
    return counts


@dataclass(frozen=True)
class VidCom2(Partitioner):
    """The budget split over frames by their uniqueness; each frame keeps its most distinct tokens."""

    name: ClassVar[str] = "vidcom2"

    def selection_flops(self, num_visual: int, keep: int, geometry: ModelGeometry) -> float:
        """Distances of every token to two centres on half the channels: about ``2 N d``."""
        return 2.0 * num_visual * geometry.hidden_size

    def partition(self, batch: PromptBatch, budget: Budget) -> Partition:
        assignment, scores = [], []
        for b, sample in enumerate(batch.samples):
            layout = video_layout(b, sample, self.name)
            to_video, to_frame = vidcom2_similarities(sample.visual_features, layout)
            quotas = frame_quotas(frame_weights(to_video), budget.resolve(sample.num_visual), layout.tokens_per_frame)
            distinct = torch.round(-(to_video + to_frame), decimals=9)  # (frames, tokens_per_frame): higher = more distinct
            chosen = torch.zeros_like(distinct, dtype=torch.bool)
            for t, count in enumerate(quotas):
                chosen[t, torch.sort(-distinct[t], stable=True).indices[:count]] = True
            chosen = chosen.flatten()
            assignment.append(torch.where(chosen, 0, 1).long())
            scores.append((distinct.flatten() + chosen.double() * 1e3).float())
        return Partition((SUBJECT, NON_SUBJECT), tuple(assignment), tuple(scores))
