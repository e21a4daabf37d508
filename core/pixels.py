"""Pixels to tokens: where each visual token's pixels came from, and how much of it a mask covers.

Every model family moves pixels before its vision tower sees them (resize and center-crop for
llava-hf, pad-to-square for the original LLaVA, an overview tile plus an unpadded grid for
LLaVA-NeXT, smart-resize with 28-px merged units for Qwen2-VL). The adapter knows its family's
preprocessing and says, for every visual token, which rectangle of the *original* image it saw:
a :class:`TokenBoxes`. This module never guesses a geometry; it only maps masks through boxes.

A box is ``(x0, y0, x1, y1)`` in original-image pixel coordinates, continuous (pixel ``(x, y)``
is the unit square ``[x, x+1) x [y, y+1)``). A box may reach outside the image where the
preprocessing padded: the padded part counts as covered by nothing. A token with no pixels (a
LLaVA-NeXT newline token) has a NaN box and coverage 0.

The selection rule (:func:`select_by_coverage`), stated once for every mask-based partitioner:
rank tokens by coverage (descending); among equal coverage, by the model's token score
(descending); then by token index (ascending). The first ``keep`` tokens are the subject. So a
mask smaller than one token still selects the tokens it touches most, an empty mask selects by
score alone (the score partition), a full-image mask ties every image token and the score picks
among them, and a mask covering fewer than ``keep`` tokens is topped up by score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["TokenBoxes", "grid_boxes", "processed_window", "mask_coverage", "select_by_coverage"]


@dataclass(frozen=True)
class TokenBoxes:
    """Per visual token, the rectangle of the original image it came from.

    Attributes:
        boxes: ``(num_visual, 4)`` float64 ``x0, y0, x1, y1`` in original-image pixels; NaN rows
            for tokens without pixels.
        image_size: ``(width, height)`` of the original image.
    """

    boxes: torch.Tensor
    image_size: tuple[int, int]

    def __post_init__(self) -> None:
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 4:
            raise ValueError(f"boxes must be (num_visual, 4), got {tuple(self.boxes.shape)}")

    @property
    def num_visual(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def has_pixels(self) -> torch.Tensor:
        """``(num_visual,)`` bool: tokens that saw some rectangle of the image (not newlines)."""
        return ~torch.isnan(self.boxes).any(-1)


def grid_boxes(
    image_size: tuple[int, int],
    rows: int,
    cols: int,
    *,
    window: tuple[float, float, float, float] | None = None,
) -> torch.Tensor:
    """Boxes of a ``rows x cols`` token grid laid evenly over ``window`` of the original image.

    ``window`` is the region of original-image coordinates the processed square (or rectangle)
    shows: ``(x0, y0, x1, y1)``, the whole image by default. Resize-and-crop and pad-to-square
    both reduce to one window (see the ``*_window`` helpers of each adapter). Returns
    ``(rows * cols, 4)`` float64, raster order (row-major), as vision towers emit patches.
    """
    width, height = image_size
    x0, y0, x1, y1 = window if window is not None else (0.0, 0.0, float(width), float(height))
    xs = torch.linspace(x0, x1, cols + 1, dtype=torch.float64)
    ys = torch.linspace(y0, y1, rows + 1, dtype=torch.float64)
    left, right = xs[:-1].repeat(rows), xs[1:].repeat(rows)
    top, bottom = ys[:-1].repeat_interleave(cols), ys[1:].repeat_interleave(cols)
    return torch.stack((left, top, right, bottom), dim=-1)


def processed_window(
    image_size: tuple[int, int],
    *,
    pad_to_square: bool = False,
    resize: tuple[int, int] | int | None = None,
    crop: tuple[int, int] | None = None,
) -> tuple[float, float, float, float]:
    """The window ``(x0, y0, x1, y1)`` of the original image that a processed image shows.

    Follows transformers' image processors step by step: ``pad_to_square`` (centred, offset
    ``(max - side) // 2``, as LlavaImageProcessor's ``do_pad``), ``resize`` (``(width, height)``,
    or an int for the shortest edge, the long edge ``int(short * long / short_side)``), then
    ``crop`` ``(width, height)`` centred (offset ``(side - crop) // 2``; a crop larger than the
    image pads, offset ``-((crop - side) // 2)``).
    """
    width, height = image_size
    # original = processed * scale + offset, per axis
    scale_x = scale_y = 1.0
    off_x = off_y = 0.0
    cur_w, cur_h = width, height
    if pad_to_square:
        side = max(width, height)
        off_x, off_y = -float((side - width) // 2), -float((side - height) // 2)
        cur_w = cur_h = side
    if resize is not None:
        if isinstance(resize, int):
            short, long = (cur_w, cur_h) if cur_w <= cur_h else (cur_h, cur_w)
            new_short, new_long = resize, int(resize * long / short)
            new_w, new_h = (new_short, new_long) if cur_w <= cur_h else (new_long, new_short)
        else:
            new_w, new_h = resize
        scale_x, scale_y = scale_x * cur_w / new_w, scale_y * cur_h / new_h
        cur_w, cur_h = new_w, new_h
    x0, y0, x1, y1 = 0.0, 0.0, float(cur_w), float(cur_h)
    if crop is not None:
        crop_w, crop_h = crop
        left = (cur_w - crop_w) // 2 if cur_w >= crop_w else -((crop_w - cur_w) // 2)
        top = (cur_h - crop_h) // 2 if cur_h >= crop_h else -((crop_h - cur_h) // 2)
        x0, y0, x1, y1 = float(left), float(top), float(left + crop_w), float(top + crop_h)
    return (x0 * scale_x + off_x, y0 * scale_y + off_y, x1 * scale_x + off_x, y1 * scale_y + off_y)


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
    score = scores.to(torch.float64) if scores is not None else torch.zeros(n, dtype=torch.float64)
    # coverage rounded so that exact ties (a full-image mask) are not split by float rounding
    order = sorted(range(n), key=lambda i: (-round(float(coverage[i]), 9), -_finite(float(score[i])), i))
    return torch.tensor(sorted(order[:keep]), dtype=torch.long)


def _finite(value: float) -> float:
    return value if math.isfinite(value) else -math.inf
