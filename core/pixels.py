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

The model's token score (:func:`token_scores`) is the vision tower's [CLS] attention where the
model has one (``Sample.cls_scores``), else the adapter's own per-token score (a ``scores``
attribute of the sample, or ``extras["scores"]``, e.g. for Qwen2-VL), else none: then ties and
shortfall go by token index alone.

Mask-based partitioners share the rest of the path here too: masks read from PNG/NPY files
(:func:`load_mask`, one-line errors for a file of the wrong size or type), images keyed by
content (:func:`image_digest`), and group ids from masks (:func:`mask_groups`).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vtsched.core.errors import InputError
from vtsched.core.partition import Partition

__all__ = [
    "TokenBoxes", "grid_boxes", "processed_window", "mask_coverage", "select_by_coverage", "coverage_ranking",
    "token_scores", "mask_groups", "load_mask", "as_mask", "image_digest", "rgb_array", "check_mask_inputs",
    "partition_from_masks", "MASK_SUFFIXES", "OBJECTS", "BACKGROUND",
]

MASK_SUFFIXES = (".png", ".npy")
OBJECTS = "objects"  # group names of a three-group mask partition: subject, objects, background
BACKGROUND = "background"


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
    receives in the vision tower, Qwen2-VL's adapter), else ``extras["scores"]`` (any other adapter's
    score); else ``(None, "none")``: callers then rank by token index and say so.
    """
    extras = getattr(sample, "extras", None) or {}
    for source, value in (("cls", getattr(sample, "cls_scores", None)),
                          ("extras.attention_scores", extras.get("attention_scores")),
                          ("extras.scores", extras.get("scores"))):
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


def as_mask(values: Any, what: str = "mask") -> torch.Tensor:
    """A 2-D mask as a float64 tensor in [0, 1]: bool and integer arrays are 1 where nonzero, float
    arrays are soft coverage and must lie in [0, 1]. Anything else is one :class:`InputError` line."""
    import numpy as np

    array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise InputError(f"{what} has shape {tuple(array.shape)}: a mask is 2-D (height, width)")
    if array.dtype == np.bool_ or np.issubdtype(array.dtype, np.integer):
        return torch.from_numpy(array != 0).to(torch.float64)
    if np.issubdtype(array.dtype, np.floating):
        if array.size and not (np.isfinite(array).all() and array.min() >= 0.0 and array.max() <= 1.0):
            raise InputError(f"{what} has float values outside [0, 1]: a soft mask is a coverage fraction")
        return torch.from_numpy(array.astype(np.float64))
    raise InputError(f"{what} has dtype {array.dtype}: a mask is bool, integer (nonzero = inside) or float in [0, 1]")


def load_mask(path: str | Path, image_size: tuple[int, int] | None = None) -> torch.Tensor:
    """A mask file as ``(height, width)`` float64 in [0, 1] (see :func:`as_mask`).

    PNG: one channel (bilevel, grayscale or palette indices), nonzero inside; an RGB PNG is
    refused. NPY: a 2-D bool, integer or float array (loaded without pickle). With ``image_size``
    ``(width, height)`` a mask of another size is refused, naming both sizes.
    """
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise InputError(f"mask file not found: {p}" if not p.exists() else f"mask path is not a file: {p}")
    if p.suffix.lower() == ".npy":
        try:
            array = np.load(p, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"not a NPY mask file: {p} ({reason})") from None
    else:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(p) as image:
                if image.mode not in ("1", "L", "P", "I", "I;16", "F"):
                    raise InputError(f"mask {p} is a {image.mode} image: a mask has one channel "
                                     "(bilevel, grayscale or palette; nonzero = inside)")
                array = np.asarray(image.convert("L") if image.mode == "1" else image)
        except UnidentifiedImageError:
            raise InputError(f"not a mask file (PNG or NPY): {p}") from None
        except OSError as exc:
            raise InputError(f"cannot read mask {p}: {exc}") from None
        if array.dtype.kind == "f":
            array = array != 0  # 32-bit float images: nonzero inside, like the integer modes
    mask = as_mask(array, f"mask {p}")
    if image_size is not None and (mask.shape[1], mask.shape[0]) != tuple(image_size):
        raise InputError(f"mask {p} is {mask.shape[1]}x{mask.shape[0]} pixels, the image "
                         f"{image_size[0]}x{image_size[1]}: a mask is at the original image size")
    return mask


def rgb_array(image: Any, who: str = "") -> Any:
    """``(H, W, 3)`` uint8 RGB numpy array of a PIL image or such an array (what SAM's predictor takes);
    anything else is one line naming ``who``."""
    import numpy as np

    if hasattr(image, "convert"):
        from vtsched.core.io import to_rgb

        return np.asarray(to_rgb(image))
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        prefix = f"{who}: " if who else ""
        raise InputError(f"{prefix}an image is a PIL image or an (H, W, 3) uint8 array, not {array.dtype} {array.shape}")
    return array


def image_digest(image: Any) -> str:
    """sha256 of an image's content (mode, size and pixels) or of an array's dtype, shape and bytes:
    how masks are found for an image and cached, whatever file or object it came from."""
    import numpy as np

    digest = hashlib.sha256()
    if hasattr(image, "tobytes") and hasattr(image, "mode"):  # PIL
        digest.update(f"pil:{image.mode}:{image.size}:".encode())
        digest.update(image.tobytes())
    else:
        array = np.ascontiguousarray(np.asarray(image))
        digest.update(f"array:{array.dtype}:{array.shape}:".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


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
