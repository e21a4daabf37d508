"""Tokens put back on the image: the views a family's tokens tile without overlap (:func:`image_views`),
the token each pixel belongs to (:func:`token_owner`, through the adapter's pixel boxes) and the exact
tinting of a panel (:func:`tint`: ``TINT``, ``FADE``, ``GROUP_COLOURS``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from vtsched.core.errors import InputError

__all__ = ["FADE", "GROUP_COLOURS", "TINT", "image_views", "tint", "token_owner"]

TINT = 0.55  # weight of a token's colour in a tinted pixel
FADE = 0.35  # weight of the image in a pixel no shown token covers (the rest is white)
GROUP_COLOURS = ((230, 97, 1), (33, 102, 172), (27, 158, 119), (117, 112, 179), (231, 41, 138), (166, 118, 29))


def image_views(sample: Any) -> list[tuple[str, list[int]]]:
    """``(name, visual token numbers)`` per view: sets of tokens whose boxes tile the image without overlap.

    LLaVA-NeXT (``extras["provenance"]``: tile 0 is the overview): the overview tile and the
    high-resolution tiles; every other family: one view. Tokens without pixels (newlines) are in none.
    """
    boxes = sample.pixel_boxes
    if boxes is None:
        raise InputError("the model's adapter gives no pixel boxes (Sample.pixel_boxes), so its tokens cannot be "
                         "put back on the image")
    has = boxes.has_pixels
    provenance = sample.extras.get("provenance")
    if isinstance(provenance, torch.Tensor) and provenance.shape[0] == boxes.num_visual:
        tile = provenance[:, 0].long()
        views = [("overview tile", torch.nonzero(has & (tile == 0)).flatten().tolist()),
                 ("high-resolution tiles", torch.nonzero(has & (tile > 0)).flatten().tolist())]
        return [view for view in views if view[1]]
    return [("image", torch.nonzero(has).flatten().tolist())]


def token_owner(boxes: Any, tokens: Sequence[int]) -> np.ndarray:
    """``(height, width)`` int: the token among ``tokens`` whose box holds each pixel's centre, ``-1`` for none.

    Pixel ``(x, y)`` is the unit square ``[x, x+1) x [y, y+1)`` (:mod:`vtsched.core.pixels`); its centre
    lies in box ``(x0, y0, x1, y1)`` when ``x0 <= x + 0.5 < x1`` and ``y0 <= y + 0.5 < y1``.
    """
    width, height = boxes.image_size
    owner = np.full((height, width), -1, dtype=np.int64)
    table = boxes.boxes.detach().cpu().numpy()
    for token in tokens:
        x0, y0, x1, y1 = table[token]
        if np.isnan(table[token]).any():
            continue
        cols = slice(max(0, int(np.ceil(x0 - 0.5))), max(0, min(width, int(np.ceil(x1 - 0.5)))))
        rows = slice(max(0, int(np.ceil(y0 - 0.5))), max(0, min(height, int(np.ceil(y1 - 0.5)))))
        owner[rows, cols] = token
    return owner


def tint(image: np.ndarray, owner: np.ndarray, colours: Mapping[int, Sequence[float] | np.ndarray]) -> np.ndarray:
    """``image`` (``(H, W, 3)`` uint8) with each pixel of a token in ``colours`` tinted by its colour, the rest faded."""
    base = image.astype(np.float64)
    out = np.rint(FADE * base + (1 - FADE) * 255.0)
    table = np.full((int(max([owner.max(), *colours], default=-1)) + 2, 3), np.nan)
    for token, colour in colours.items():
        table[token] = colour
    colour = table[owner]  # owner -1 reads the last row: NaN
    painted = ~np.isnan(colour).any(-1)
    out[painted] = np.rint((1 - TINT) * base[painted] + TINT * colour[painted])
    return out.clip(0, 255).astype(np.uint8)
