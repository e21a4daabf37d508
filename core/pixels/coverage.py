"""Masks to token groups: how much of each token's box a mask covers, and which tokens it selects.

The selection rule (:func:`select_by_coverage`), stated once for every mask-based partitioner:
rank tokens by coverage (descending); among equal coverage, by the model's token score
(descending); then by token index (ascending). The first ``keep`` tokens are the subject. So a
mask smaller than one token still selects the tokens it touches most, an empty mask selects by
score alone (the score partition), a full-image mask ties every image token and the score picks
among them, and a mask covering fewer than ``keep`` tokens is topped up by score.

The model's token score (:func:`token_scores`) is the vision tower's [CLS] attention where the
model has one (``Sample.cls_scores``), else the adapter's own per-token score
(``extras["attention_scores"]``, Qwen2-VL's), else none: then ties and shortfall go by token index
alone. Masks are mapped through the adapter's boxes (:mod:`vtsched.core.pixels.boxes`); a token
with no pixels has coverage 0.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from vtsched.core.errors import InputError
from vtsched.core.partition import Partition
from vtsched.core.pixels.boxes import TokenBoxes

__all__ = [
    "mask_coverage", "select_by_coverage", "coverage_ranking", "token_scores", "mask_groups", "check_mask_inputs",
    "partition_from_masks", "OBJECTS", "BACKGROUND",
]

OBJECTS = "objects"  # group names of a three-group mask partition: subject, objects, background
BACKGROUND = "background"


def _overlap(lo: torch.Tensor, hi: torch.Tensor, size: int) -> torch.Tensor:
    """``(tokens, size)`` length of ``[lo, hi)`` inside each unit cell ``[i, i+1)``."""
    cells = torch.arange(size, dtype=torch.float64)
    return (torch.minimum(hi[:, None], cells + 1) - torch.maximum(lo[:, None], cells)).clamp(min=0.0)


def mask_coverage(mask: torch.Tensor, boxes: TokenBoxes) -> torch.Tensor:
    """``(num_visual,)`` share of each token's box covered by ``mask`` (exact, area-weighted).

    ``mask``: ``(height, width)`` bool or float in [0, 1] at the original image size. A box's area
    outside the image counts as uncovered; tokens without pixels get 0.
    """
    width, height = boxes.image_size
    if tuple(mask.shape) != (height, width):
        raise ValueError(f"mask is {tuple(mask.shape)[::-1]} (w x h), the image {width} x {height}")
    valid = boxes.has_pixels
    b = torch.nan_to_num(boxes.boxes.to(torch.float64))
    wx = _overlap(b[:, 0], b[:, 2], width)  # (tokens, W)
    wy = _overlap(b[:, 1], b[:, 3], height)  # (tokens, H)
    covered = ((wy @ mask.to(torch.float64)) * wx).sum(-1)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    coverage = torch.where(area > 0, covered / area.clamp(min=1e-12), torch.zeros_like(area))
    return torch.where(valid, coverage.clamp(0.0, 1.0), torch.zeros_like(coverage))


def select_by_coverage(coverage: torch.Tensor, scores: torch.Tensor | None, keep: int) -> torch.Tensor:
    """Indices (sorted) of the ``keep`` subject tokens under the module's selection rule."""
    n = coverage.numel()
    if not 0 <= keep <= n:
        raise ValueError(f"keep {keep} outside 0..{n}")
    return torch.tensor(sorted(coverage_ranking(coverage, scores)[:keep]), dtype=torch.long)


def coverage_ranking(coverage: torch.Tensor, scores: torch.Tensor | None) -> list[int]:
    """Every token index, most subject-like first, under the module's selection rule."""
    n = coverage.numel()
    cover = coverage.to(torch.float64).flatten().tolist()
    score = scores.to(torch.float64).flatten().tolist() if scores is not None else [0.0] * n
    # coverage rounded so that exact ties (a full-image mask) are not split by float rounding
    return sorted(range(n), key=lambda i: (-round(cover[i], 9), -_finite(score[i]), i))


def _finite(value: float) -> float:
    return value if math.isfinite(value) else -math.inf


def token_scores(sample: Any) -> tuple[torch.Tensor | None, str]:
    """The model's per-token score of a :class:`~vtsched.core.tokens.Sample`, and where it came from.

    ``sample.cls_scores`` (``"cls"``) where the vision tower has a [CLS] token; else the adapter's
    own score for models without [CLS]: ``extras["attention_scores"]`` (the attention each token
    receives in the vision tower, Qwen2-VL's adapter); else ``(None, "none")``: callers then rank by
    token index and say so.
    """
    extras = getattr(sample, "extras", None) or {}
    for source, value in (("cls", getattr(sample, "cls_scores", None)),
                          ("extras.attention_scores", extras.get("attention_scores"))):
        if isinstance(value, torch.Tensor) and value.numel() == sample.num_visual:
            return value.detach().float().cpu().flatten(), source
    return None, "none"


def mask_groups(coverage: torch.Tensor, scores: torch.Tensor | None, keep: int,
                other: torch.Tensor | None = None) -> torch.Tensor:
    """``(num_visual,)`` long group ids from mask coverage.

    Group 0 is the ``keep`` subject tokens of :func:`select_by_coverage`. Without ``other`` every
    other token is group 1. With ``other`` (the coverage of a second mask: other objects), a
    non-subject token at least half covered by it is group 1 and the rest group 2 (background).
    """
    ids = torch.ones(coverage.numel(), dtype=torch.long)
    if other is not None:
        ids = torch.where(other.to(torch.float64) >= 0.5, 1, 2).long()
    ids[select_by_coverage(coverage, scores, keep)] = 0
    return ids


def check_mask_inputs(b: int, sample: Any, who: str) -> None:
    """Refuse, in one line, a sample a mask cannot be mapped onto: no image, or no pixel boxes."""
    if sample.image is None:
        raise InputError(f"{who}: sample {b} carries no image; a mask partitioner needs the input image")
    if sample.pixel_boxes is None:
        raise InputError(f"{who}: sample {b}: the adapter gave no pixel boxes (Sample.pixel_boxes), so a mask "
                         "cannot be mapped onto its tokens; use a partitioner that needs no pixels")
    size = getattr(sample.image, "size", None)
    if isinstance(size, tuple) and tuple(size) != tuple(sample.pixel_boxes.image_size):
        raise InputError(f"{who}: sample {b}: the pixel boxes describe a {sample.pixel_boxes.image_size} image, "
                         f"the sample's image is {size}")


def partition_from_masks(samples: Sequence[Any], keeps: Sequence[int], subject: Sequence[torch.Tensor],
                         other: Sequence[torch.Tensor | None] | None, groups: tuple[str, ...]) -> Partition:
    """A :class:`~vtsched.core.partition.Partition` from per-sample masks at the original image size.

    ``subject[b]``: sample b's subject mask; ``keeps[b]``: its subject size R; ``other`` (optional):
    a second mask per sample (other objects; ``None`` entries are empty), giving three groups (see
    :func:`mask_groups`). Masks go through each sample's ``pixel_boxes``; the scores are the rank
    under the selection rule, scaled to (0, 1], highest first. Warns once if the adapter gives no
    token score.
    """
    assignment, ranked = [], []
    said = False
    for b, sample in enumerate(samples):
        scores, source = token_scores(sample)
        if source == "none" and not said:
            warnings.warn("the adapter gives no token score ([CLS] or its own): mask ties and shortfall go by "
                          "token index", stacklevel=2)
            said = True
        coverage = mask_coverage(subject[b], sample.pixel_boxes)
        other_coverage = None
        if other is not None:
            mask = other[b]
            other_coverage = (mask_coverage(mask, sample.pixel_boxes) if mask is not None
                              else torch.zeros(sample.num_visual, dtype=torch.float64))
        assignment.append(mask_groups(coverage, scores, keeps[b], other_coverage))
        n = sample.num_visual
        score = torch.empty(n, dtype=torch.float32)
        score[torch.tensor(coverage_ranking(coverage, scores), dtype=torch.long)] = torch.arange(n, 0, -1,
                                                                                            dtype=torch.float32)
        ranked.append(score / max(1, n))
    return Partition(groups, tuple(assignment), tuple(ranked))
