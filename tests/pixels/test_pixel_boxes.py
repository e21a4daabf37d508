"""Pixels to tokens: boxes follow the processor's own geometry; coverage and selection follow their rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vtsched.core.pixels import TokenBoxes, grid_boxes, mask_coverage, processed_window, select_by_coverage


@given(st.integers(8, 90), st.integers(8, 90), st.integers(1, 6), st.integers(1, 6), st.data())
def test_a_rectangle_covers_exactly_the_tokens_inside_it(width, height, rows, cols, data):
    boxes = TokenBoxes(grid_boxes((width, height), rows, cols), (width, height))
    x0 = data.draw(st.integers(0, width - 1))
    x1 = data.draw(st.integers(x0 + 1, width))
    y0 = data.draw(st.integers(0, height - 1))
    y1 = data.draw(st.integers(y0 + 1, height))
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    coverage = mask_coverage(mask, boxes)
    b = boxes.boxes
    inside = (b[:, 0] >= x0) & (b[:, 2] <= x1) & (b[:, 1] >= y0) & (b[:, 3] <= y1)
    outside = (b[:, 2] <= x0) | (b[:, 0] >= x1) | (b[:, 3] <= y0) | (b[:, 1] >= y1)
    assert torch.allclose(coverage[inside], torch.ones_like(coverage[inside]))
    assert torch.all(coverage[outside] == 0)
    # area conservation: covered area summed over tokens == the mask's area (the grid tiles the image)
    areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    assert abs(float((coverage * areas).sum()) - float(mask.sum())) < 1e-6


@given(st.integers(4, 80), st.integers(4, 80), st.booleans(), st.integers(6, 40), st.integers(2, 5))
def test_full_mask_covers_the_image_part_of_each_token(width, height, pad, side, grid):
    window = processed_window((width, height), pad_to_square=pad, resize=side, crop=(side, side))
    boxes = TokenBoxes(grid_boxes((width, height), grid, grid, window=window), (width, height))
    coverage = mask_coverage(torch.ones(height, width), boxes)
    b = boxes.boxes
    in_image = ((b[:, 2].clamp(max=width) - b[:, 0].clamp(min=0)).clamp(min=0)
                * (b[:, 3].clamp(max=height) - b[:, 1].clamp(min=0)).clamp(min=0))
    assert torch.allclose(coverage, in_image / ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])))
    assert torch.all(mask_coverage(torch.zeros(height, width), boxes) == 0)


def test_newline_tokens_get_no_coverage():
    boxes = torch.tensor([[0, 0, 4, 4], [float("nan")] * 4], dtype=torch.float64)
    assert mask_coverage(torch.ones(4, 4), TokenBoxes(boxes, (4, 4))).tolist() == [1.0, 0.0]


def test_selection_rule_coverage_then_score_then_index():
    coverage = torch.tensor([0.0, 0.5, 1.0, 1.0, 0.0, 0.0])
    scores = torch.tensor([9.0, 0.0, 1.0, 2.0, 5.0, 5.0])
    assert select_by_coverage(coverage, scores, 2).tolist() == [2, 3]  # full coverage first
    assert select_by_coverage(coverage, scores, 4).tolist() == [0, 1, 2, 3]  # shortfall: best score (0)
    assert select_by_coverage(coverage, scores, 5).tolist() == [0, 1, 2, 3, 4]  # score tie: lower index
    assert select_by_coverage(torch.zeros(6), scores, 2).tolist() == [0, 4]  # empty mask: scores alone
    with pytest.raises(ValueError, match="keep 7 outside 0..6"):
        select_by_coverage(coverage, scores, 7)


@pytest.mark.parametrize("size", [(200, 100), (100, 300), (112, 112), (57, 230)])
def test_llava_boxes_match_what_the_image_processor_does(size):
    """Paint a block white, run transformers' own image processor (nearest resampling, so no blur),
    and compare each patch's brightness with the coverage the adapter's boxes predict."""
    from vtsched.core.demo import build_processor, get_shape
    from vtsched.core.adapters.llava import LlavaAdapter
    from PIL import Image

    processor = build_processor(get_shape("llava-1.5-geometry"))
    processor.image_processor.resample = 0  # NEAREST
    width, height = size
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    y0, y1, x0, x1 = height // 5, height // 2, width // 3, width - 3
    pixels[y0:y1, x0:x1] = 255
    values = processor.image_processor([Image.fromarray(pixels)], return_tensors="pt")["pixel_values"][0]
    ip = processor.image_processor
    mean, std = torch.tensor(ip.image_mean)[:, None, None], torch.tensor(ip.image_std)[:, None, None]
    white = ((values * std + mean).mean(0) > 0.5).double()  # (336?, 336?) back to 0/1
    patch = 14
    rows, cols = white.shape[0] // patch, white.shape[1] // patch
    measured = white.reshape(rows, patch, cols, patch).mean((1, 3)).flatten()
    adapter = LlavaAdapter.__new__(LlavaAdapter)
    adapter.processor = processor
    boxes = adapter.token_boxes((width, height), (rows, cols))
    mask = torch.zeros(height, width)
    mask[y0:y1, x0:x1] = 1
    predicted = mask_coverage(mask, boxes)
    # nearest resampling moves an edge by at most one processed pixel: 1/14 of a patch per edge
    assert torch.allclose(predicted, measured, atol=2.5 / patch), (predicted - measured).abs().max()
