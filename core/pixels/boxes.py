"""Where each visual token's pixels came from: a rectangle of the original image per token.

Every model family moves pixels before its vision tower sees them (resize and center-crop for
llava-hf, pad-to-square for the original LLaVA, an overview tile plus an unpadded grid for
LLaVA-NeXT, smart-resize with 28-px merged units for Qwen2-VL). The adapter knows its family's
preprocessing and says, for every visual token, which rectangle of the *original* image it saw:
a :class:`TokenBoxes`, built with :func:`grid_boxes` over the :func:`processed_window` its
preprocessing shows. Nothing here guesses a geometry.

A box is ``(x0, y0, x1, y1)`` in original-image pixel coordinates, continuous (pixel ``(x, y)``
is the unit square ``[x, x+1) x [y, y+1)``). A box may reach outside the image where the
preprocessing padded: the padded part counts as covered by nothing. A token with no pixels (a
LLaVA-NeXT newline token) has a NaN box.

For a video, the same mapping holds per frame: every token also names the frame it came from
(``TokenBoxes.frames``, the model's temporal step), and its box is a rectangle of that frame
(:func:`video_boxes`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["TokenBoxes", "grid_boxes", "processed_window", "video_boxes"]


@dataclass(frozen=True)
class TokenBoxes:
    """Per visual token, the rectangle of the original image it came from.

    Attributes:
        boxes: ``(num_visual, 4)`` float64 ``x0, y0, x1, y1`` in original-image pixels; NaN rows
            for tokens without pixels.
        image_size: ``(width, height)`` of the original image (of each frame, for a video).
        frames: for a video, ``(num_visual,)`` long, the frame (temporal step) each token came
            from; ``None`` for a still image.
    """

    boxes: torch.Tensor
    image_size: tuple[int, int]
    frames: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 4:
            raise ValueError(f"boxes must be (num_visual, 4), got {tuple(self.boxes.shape)}")
        if self.frames is not None and tuple(self.frames.shape) != (self.boxes.shape[0],):
            raise ValueError(f"frames must be ({self.boxes.shape[0]},), got {tuple(self.frames.shape)}")

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


def video_boxes(frame_size: tuple[int, int], frames: int, rows: int, cols: int,
                *, window: tuple[float, float, float, float] | None = None) -> TokenBoxes:
    """Boxes of a video's tokens: a ``rows x cols`` grid over ``window`` of every frame, frame-major
    (the order Qwen2-VL's merger emits), each token tagged with its frame."""
    per_frame = grid_boxes(frame_size, rows, cols, window=window)
    return TokenBoxes(per_frame.repeat(frames, 1), frame_size,
                      torch.arange(frames).repeat_interleave(rows * cols))


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
