"""LLaVA-NeXT through the adapter conformance kit, plus its token map, scores and pixel boxes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings

from vtsched.core import Budget
from vtsched.core.adapters import LlavaNextAdapter
from vtsched.core.adapters.llava_next import NEWLINE_SCORE, next_token_count
from vtsched.core.demo.shapes import llava_config, random_image
from vtsched.core.testing.families import (
    LlavaNextAdapterConformance, TinyNextShape, family_prompts, tiny_llava_next, tiny_llava_next_shapes,
)

from tests.helpers import registry, scheduler


class TestLlavaNextAdapter(LlavaNextAdapterConformance):
    adapter_class = LlavaNextAdapter


@pytest.mark.parametrize(("height", "width", "tokens"), [
    (336, 336, 1176), (672, 672, 2928), (480, 640, 2340), (600, 800, 2340), (768, 1024, 2340), (640, 480, 2352),
    (534, 800, 2144), (1080, 1920, 1948), (336, 1008, 2328), (1008, 336, 2376),
])
def test_token_counts_at_336_px_tiles_match_the_processor(height, width, tokens):
    """REFERENCE-NOTES 1.2's table, from the config alone and from the llava-hf-style processor."""
    config = llava_config("llava-next-7b")
    assert next_token_count(config, height, width) == tokens
    processor = __import__("vtsched.core.demo.shapes", fromlist=["get_shape"]).get_shape("llava-next-7b").processor()
    assert processor._get_number_of_features(height, width, 336, 336) - 1 == tokens
    assert LlavaNextAdapter.geometry_from_config(config).num_visual == 2928


@given(tiny_llava_next_shapes(max_layers=1), family_prompts(max_size=2, min_side=8, max_side=100))
@settings(max_examples=15)
def test_provenance_scores_and_boxes(shape, inputs):
    """Every token comes from one (tile, row, col) or is a newline ending a grid row; scores are its
    tile's CLS attention (newlines rank first); boxes cover the tokens' pixels; counts match the model."""
    model, processor = tiny_llava_next(shape)
    adapter = LlavaNextAdapter(model, processor)
    images, questions = inputs
    batch = adapter.prepare(images, questions)
    side = shape.tile_patches
    for sample, image in zip(batch.samples, images):
        width, height = image.size
        assert sample.num_visual == next_token_count(model.config, height, width)
        prov = sample.extras["provenance"]
        tile, row, col = prov.unbind(-1)
        newline = tile < 0
        assert (tile[: side * side] == 0).all() and (row[: side * side] * side + col[: side * side]
                                                     == torch.arange(side * side)).all()
        grid = prov[side * side:]
        ends = torch.nonzero(grid[:, 0] < 0).flatten()
        if grid.numel():  # (an extreme aspect can unpad the whole grid away, as the model does)
            assert ends[-1] == grid.shape[0] - 1  # the grid ends with a newline
            widths = torch.diff(torch.cat((torch.tensor([-1]), ends))) - 1
            assert (widths == widths[0]).all()  # every grid row has the same width
        assert torch.equal(sample.cls_scores[newline], torch.full((int(newline.sum()),), NEWLINE_SCORE))
        assert bool((sample.cls_scores[~newline] <= 1).all())
        boxes = sample.pixel_boxes
        assert torch.equal(boxes.has_pixels, ~newline)
        b = boxes.boxes[~newline]
        assert bool((b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all())
        # overview tile: a side x side grid over the whole image
        base = boxes.boxes[: side * side]
        assert torch.allclose(base[:, 2].max(), torch.tensor(float(width), dtype=torch.float64))
        assert torch.allclose(base[:, 3].max(), torch.tensor(float(height), dtype=torch.float64))
        # grid tokens: centres inside the image but for what the unpadding kept at the edges
        centre = (b[side * side:, :2] + b[side * side:, 2:]) / 2
        cell = max(width, height)  # one token never spans more than the image
        assert bool((centre[:, 0] > -cell).all() and (centre[:, 0] < width + cell).all())


def test_cls_scores_equal_each_tiles_eager_attention():
    """A token's score is its own tile's CLS->patch attention at the feature layer (the eager tower's weights)."""
    shape = TinyNextShape(tile_patches=3)
    sdpa, processor = tiny_llava_next(shape)
    eager, _ = tiny_llava_next(shape, torch.float64, "eager")
    image = random_image(3, 70, 40)
    sample = LlavaNextAdapter(sdpa, processor).prepare([image], ["what?"]).samples[0]
    pixels = processor.image_processor([image], return_tensors="pt")
    tiles = pixels["pixel_values"][0]
    with torch.inference_mode():
        attentions = eager.model.vision_tower(tiles.double(), output_attentions=True).attentions
    reference = attentions[eager.config.vision_feature_layer][:, :, 0, 1:].mean(1)  # (tiles, 9)
    prov = sample.extras["provenance"]
    image_tokens = prov[:, 0] >= 0
    t, r, c = prov[image_tokens].unbind(-1)
    torch.testing.assert_close(sample.cls_scores[image_tokens], reference[t, r * 3 + c].float(), atol=1e-6, rtol=0)


def test_fixed_672_input_gives_the_papers_span():
    """``image_size=672`` squash-resizes every image, so every aspect gives the 2,928-token span
    (here on 28-px tiles: a 56x56 input gives 24 tokens), with boxes on the original image."""
    model, processor = tiny_llava_next(TinyNextShape())
    adapter = LlavaNextAdapter(model, processor, image_size=56)
    images = [random_image(1, 90, 20), random_image(2, 20, 70)]
    batch = adapter.prepare(images, ["red?", "what colour is the big shape?"])
    assert batch.num_visual == [24, 24]
    for sample, image in zip(batch.samples, images):
        boxes = sample.pixel_boxes.boxes[sample.pixel_boxes.has_pixels]
        assert sample.pixel_boxes.image_size == image.size
        assert float(boxes[:, 2].max()) == pytest.approx(image.size[0])
        assert float(boxes[:, 3].max()) == pytest.approx(image.size[1])
        assert float(boxes[:, 0].min()) == pytest.approx(0.0)


@pytest.mark.parametrize("mode", ["global", "per_tile"])
def test_budgets_keep_newlines_and_split_over_tiles(mode):
    model, processor = tiny_llava_next(TinyNextShape(tile_patches=3))
    s = scheduler(model, processor)
    batch = s.prepare([random_image(5, 84, 84)], ["what colour?"])
    sample = batch.samples[0]
    tile = sample.extras["provenance"][:, 0]
    newlines = int((tile < 0).sum())
    keep = newlines + 10
    partition = s.make_partitioner("cls", {"budget_mode": mode}).partition(batch, Budget(count=keep))
    subject = partition.members(0, "subject")
    assert subject.numel() == keep
    assert bool((tile[subject] < 0).sum() == newlines)  # every newline kept, counted in the budget
    per_tile = torch.bincount(tile[subject][tile[subject] >= 0], minlength=int(tile.max()) + 1)
    if mode == "per_tile":  # 10 over 5 tiles of 9 tokens each: 2 per tile
        assert per_tile.tolist() == [2, 2, 2, 2, 2]
    else:  # the 10 best-scored image tokens wherever they are
        image = torch.nonzero(tile >= 0).flatten()
        best = image[torch.sort(-sample.cls_scores[image], stable=True).indices[:10]]
        assert set(best.tolist()) <= set(subject.tolist())


def test_explain_shapes_say_what_runs():
    """7B and CPU shapes explain without weights; 2,928 tokens at 672x672."""
    from vtsched.core.adapters import LlavaNextAdapter as A
    from vtsched.core.planner import Planner

    for name in ("llava-next-7b", "llava-next-cpu"):
        geometry = A.geometry_from_config(llava_config(name))
        assert geometry.num_visual == 2928
        planner = Planner(registry(), geometry, A.default_partitioner)
        check = planner.check(planner.policy("parvts"), Budget(count=320))
        assert check.keep == 320 and check.partitioner == "cls"


def test_bad_inputs_get_one_line_errors():
    import numpy as np

    from vtsched.core.errors import InputError

    model, processor = tiny_llava_next(TinyNextShape())
    adapter = LlavaNextAdapter(model, processor)
    image = random_image(0, 56, 56)
    for images, words in (([np.zeros((4, 56, 56, 3), dtype=np.uint8)], "video"),
                          ([[image, image]], "one image per prompt"), ([None], "no image")):
        with pytest.raises(InputError, match=words) as info:
            adapter.prepare(images, ["what?"])
        assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="image_size"):
        LlavaNextAdapter(model, processor, image_size=0)


def test_a_processor_chat_template_is_the_prompt():
    """A checkpoint's own conversation format (vicuna, mistral) replaces the built-in template."""
    import copy

    model, processor = tiny_llava_next(TinyNextShape())
    processor = copy.deepcopy(processor)  # the tiny model's processor is cached: leave it alone
    processor.chat_template = (
        "{% for m in messages %}SYSTEM. USER: {% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n"
        "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}{% if add_generation_prompt %} ASSISTANT:{% endif %}"
    )
    adapter = LlavaNextAdapter(model, processor)
    assert adapter.prompt_template == "SYSTEM. USER: <image>\n{question} ASSISTANT:"
    image = random_image(0, 50, 40)
    sample = adapter.prepare([image], ["what colour?"]).samples[0]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert processor(images=[image], text=[text], return_tensors="pt")["input_ids"][0].tolist() == \
        sample.input_ids.tolist()
