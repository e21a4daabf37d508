"""Masks to tokens, as properties over arbitrary image sizes and each preprocessing window core/pixels
knows (resize + center-crop as llava-hf, pad-to-square as the original LLaVA, plain grids): a rectangle
covers each token by exactly the share of the token's pixels it covers; a full mask ties every token;
an empty mask falls back to the scores; padding and newline tokens are never covered."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from vtsched.core.partition import top_k_partition
from vtsched.core.pixels import TokenBoxes, grid_boxes, mask_coverage, partition_from_masks, processed_window
from vtsched.core.tokens import Role, Sample

GROUPS = ("subject", "non_subject")


@st.composite
def token_boxes(draw, *, modes=("grid", "crop", "pad")):
    """Boxes of a token grid under one preprocessing mode, for an arbitrary image size."""
    width, height = draw(st.integers(2, 70)), draw(st.integers(2, 70))
    rows, cols = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    mode = draw(st.sampled_from(modes))
    side = draw(st.integers(4, 48))
    window = {"grid": None,
              "crop": processed_window((width, height), resize=side, crop=(side, side)),
              "pad": processed_window((width, height), pad_to_square=True, resize=(side, side))}[mode]
    return TokenBoxes(grid_boxes((width, height), rows, cols, window=window), (width, height)), mode


def _in_image_area(boxes: TokenBoxes, x0=0.0, y0=0.0, x1=None, y1=None) -> torch.Tensor:
    """Per token, the area of its box inside the rectangle (the whole image by default)."""
    width, height = boxes.image_size
    x1 = float(width) if x1 is None else x1
    y1 = float(height) if y1 is None else y1
    b = boxes.boxes
    w = (b[:, 2].clamp(max=x1) - b[:, 0].clamp(min=x0)).clamp(min=0)
    h = (b[:, 3].clamp(max=y1) - b[:, 1].clamp(min=y0)).clamp(min=0)
    return w * h


def _sample(boxes: TokenBoxes, scores: torch.Tensor) -> Sample:
    n = boxes.num_visual
    roles = torch.tensor([Role.PREFIX] + [Role.VISUAL] * n, dtype=torch.long)
    return Sample(torch.zeros(n + 1, dtype=torch.long), roles, torch.zeros(n, 2), scores, pixel_boxes=boxes)


@given(token_boxes(), st.data())
def test_a_rectangle_covers_each_token_by_the_share_of_its_pixels_inside(drawn, data):
    boxes, _ = drawn
    width, height = boxes.image_size
    x0 = data.draw(st.integers(0, width - 1))
    x1 = data.draw(st.integers(x0 + 1, width))
    y0 = data.draw(st.integers(0, height - 1))
    y1 = data.draw(st.integers(y0 + 1, height))
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    b = boxes.boxes
    expected = _in_image_area(boxes, x0, y0, x1, y1) / ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))
    torch.testing.assert_close(mask_coverage(mask, boxes), expected, atol=1e-9, rtol=0)


@given(token_boxes(), st.data())
def test_tokens_that_saw_only_padding_are_never_covered(drawn, data):
    boxes, _ = drawn
    width, height = boxes.image_size
    mask = torch.tensor(data.draw(st.lists(st.booleans(), min_size=width * height, max_size=width * height)))
    coverage = mask_coverage(mask.view(height, width), boxes)
    assert torch.all(coverage[_in_image_area(boxes) == 0] == 0)
    assert torch.all((coverage >= 0) & (coverage <= 1))


@given(token_boxes(), st.integers(0, 36), st.data())
def test_an_empty_mask_gives_the_score_partition(drawn, keep, data):
    boxes, _ = drawn
    n = boxes.num_visual
    keep = min(keep, n)
    scores = torch.tensor(data.draw(st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0]), min_size=n, max_size=n)))
    width, height = boxes.image_size
    ours = partition_from_masks([_sample(boxes, scores)], [keep], [torch.zeros(height, width)], None, GROUPS)
    assert torch.equal(ours.assignment[0], top_k_partition([scores], [keep]).assignment[0])


@given(token_boxes(modes=("grid", "crop")), st.integers(0, 36), st.data())
def test_a_full_mask_covers_every_token_and_the_score_picks(drawn, keep, data):
    boxes, mode = drawn
    n = boxes.num_visual
    keep = min(keep, n)
    width, height = boxes.image_size
    # a crop window lies inside the image: every token is wholly image, so a full mask covers all
    assert torch.allclose(mask_coverage(torch.ones(height, width), boxes), torch.ones(n, dtype=torch.float64))
    scores = torch.tensor(data.draw(st.lists(st.floats(0, 1), min_size=n, max_size=n)))
    ours = partition_from_masks([_sample(boxes, scores)], [keep], [torch.ones(height, width)], None, GROUPS)
    assert torch.equal(ours.assignment[0], top_k_partition([scores], [keep]).assignment[0])


def test_newline_tokens_are_chosen_only_after_every_covered_token():
    boxes = torch.tensor([[0, 0, 2, 2], [float("nan")] * 4, [2, 0, 4, 2], [float("nan")] * 4], dtype=torch.float64)
    sample = _sample(TokenBoxes(boxes, (4, 2)), torch.tensor([0.0, 9.0, 0.0, 9.0]))
    ours = partition_from_masks([sample], [3], [torch.ones(2, 4)], None, GROUPS)
    assert set(ours.members(0, "subject").tolist()) >= {0, 2}
