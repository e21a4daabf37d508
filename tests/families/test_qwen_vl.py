"""Qwen2-VL and Qwen2.5-VL through the adapter conformance kit, plus scores, positions, token counts
and bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings

from vtsched.core import Budget
from vtsched.core.adapters import Qwen2_5_VLAdapter, Qwen2VLAdapter
from vtsched.core.demo.shapes import get_shape, llava_config, random_image
from vtsched.core.errors import InputError
from vtsched.core.testing.families import (
    QwenAdapterConformance, TinyQwenShape, family_prompts, tiny_qwen, tiny_qwen_shapes,
)

from tests.helpers import registry, scheduler

ADAPTERS = {"2": Qwen2VLAdapter, "2.5": Qwen2_5_VLAdapter}


class TestQwen2VLAdapter(QwenAdapterConformance):
    adapter_class = Qwen2VLAdapter
    versions = ("2",)


class TestQwen25VLAdapter(QwenAdapterConformance):
    adapter_class = Qwen2_5_VLAdapter
    versions = ("2.5",)


def _recorded_attention(model, adapter, pixel_values, grid_thw):
    """The eager tower's own softmax weights in the scored block, recorded as it runs, per image."""
    module = __import__(type(model).__module__, fromlist=["eager_attention_forward"])
    original = module.eager_attention_forward
    target = adapter.visual.blocks[adapter._score_block()].attn
    seen = []

    def recording(attn, *args, **kwargs):
        out, weights = original(attn, *args, **kwargs)
        if attn is target:
            seen.append(weights[0])  # (heads, n, n) of one image
        return out, weights

    with pytest.MonkeyPatch.context() as patch, torch.inference_mode():
        patch.setattr(module, "eager_attention_forward", recording)
        out = adapter.visual(pixel_values.double(), grid_thw=grid_thw)
    return seen, out


@given(tiny_qwen_shapes(max_layers=1), family_prompts(max_size=2, min_side=20, max_side=130))
@settings(max_examples=10)
def test_attention_scores_equal_the_eager_towers_own_weights(shape, inputs):
    """Score = head mean, column sum, 2x2 mean of the scored block's softmax weights, in LLM order.

    The reference records the eager tower's weights as it runs and maps tower order to LLM order by
    matching the merger's outputs (not through the window index the adapter uses)."""
    sdpa_model, processor = tiny_qwen(shape)
    eager_model, _ = tiny_qwen(shape, torch.float64, "eager")
    adapter = ADAPTERS[shape.version](sdpa_model, processor)
    eager = ADAPTERS[shape.version](eager_model, processor)
    images, questions = inputs
    batch = adapter.prepare(images, questions)
    pixels = processor.image_processor(images, return_tensors="pt")
    weights, out = _recorded_attention(eager_model, eager, pixels["pixel_values"], pixels["image_grid_thw"])
    assert len(weights) == len(images)
    received = torch.cat([w.mean(0).sum(0) for w in weights]).view(-1, 4).mean(1)  # tower order
    with torch.inference_mode():
        tower_order = eager.visual.merger(out.last_hidden_state)
    distance = torch.cdist(out.pooler_output, tower_order)
    llm_to_tower = distance.argmin(1)
    assert llm_to_tower.unique().numel() == llm_to_tower.numel()
    reference = received[llm_to_tower]
    ours = torch.cat([s.extras["attention_scores"] for s in batch.samples])
    torch.testing.assert_close(ours, reference.float(), atol=1e-5, rtol=1e-5)


def test_rope_positions_and_grid():
    """M-RoPE ids from the model's get_rope_index: image tokens share a temporal id, text after the
    image resumes at start + max(rows, cols); boxes are 28-px cells of the smart-resized image."""
    model, processor = tiny_qwen(TinyQwenShape(version="2"))
    adapter = Qwen2VLAdapter(model, processor)
    image = random_image(0, 112, 56)  # 2 x 4 merged tokens
    sample = adapter.prepare([image], ["what colour?"]).samples[0]
    assert sample.grid == (2, 4) and sample.num_visual == 8
    rope = sample.rope_positions
    start = sample.image_start
    visual = sample.visual_positions
    assert (rope[0, visual] == start).all()
    assert rope[1, visual].tolist() == [start] * 4 + [start + 1] * 4
    assert rope[2, visual].tolist() == [start + c for c in range(4)] * 2
    after = int(visual[-1]) + 1
    assert (rope[:, after] == start + 4).all()
    assert (rope[:, :start] == torch.arange(start)).all()
    boxes = sample.pixel_boxes.boxes
    assert boxes[0].tolist() == [0.0, 0.0, 28.0, 28.0] and boxes[-1].tolist() == [84.0, 28.0, 112.0, 56.0]


@pytest.mark.parametrize(("height", "width", "tokens"), [
    (336, 336, 144), (480, 640, 391), (672, 672, 576), (1080, 1920, 1222),
])
def test_token_counts_at_the_default_pixel_range(height, width, tokens):
    """REFERENCE-NOTES 2.2: smart_resize to 28-px units, at most 1280 merged tokens."""
    processor = get_shape("qwen2.5-vl-7b").processor()
    grid = processor.image_processor([random_image(0, width, height)], return_tensors="pt")["image_grid_thw"][0]
    assert int(grid.prod()) // 4 == tokens
    assert Qwen2_5_VLAdapter.geometry_from_config(llava_config("qwen2.5-vl-7b")).num_visual == 576


def test_bad_inputs_get_one_line_errors():
    model, processor = tiny_qwen(TinyQwenShape())
    adapter = Qwen2_5_VLAdapter(model, processor)
    image = random_image(0, 56, 56)
    cases = [
        (([np.zeros((4, 56, 56, 3), dtype=np.uint8)], ["what?"]), "video"),
        (([[image, image]], ["what?"]), "one image per prompt"),
        (([None], ["what?"]), "no image"),
        (([image], ["what <|image_pad|> is it?"]), "vision token"),
    ]
    for args, words in cases:
        with pytest.raises(InputError, match=words) as info:
            adapter.prepare(*args)
        assert "\n" not in str(info.value)
    adapter.prompt_template = "<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(InputError, match="exactly one") as info:
        adapter.prepare([image], ["what?"])
    assert "\n" not in str(info.value)


def test_cls_on_qwen_names_attention_and_attention_is_the_default():
    s = scheduler(*tiny_qwen(TinyQwenShape()))
    batch = s.prepare([random_image(1, 84, 84)], ["what colour?"])
    with pytest.raises(InputError, match="--partitioner attention") as info:
        s.make_partitioner("cls").partition(batch, Budget(count=2))
    assert "\n" not in str(info.value)
    assert s.planner.default_partitioner(s.make_policy("prune")) == "attention"
    assert s.planner.default_partitioner(s.make_policy("visionzip")) == "visionzip"
    partition = s.make_partitioner("attention").partition(batch, Budget(count=3))
    scores = batch.samples[0].extras["attention_scores"]
    subject, rest = partition.members(0, "subject"), partition.members(0, "non_subject")
    assert scores[subject].min() >= scores[rest].max()


def test_budget_larger_than_a_samples_tokens_is_refused_per_sample():
    from vtsched.core.errors import BudgetError

    s = scheduler(*tiny_qwen(TinyQwenShape()))
    batch = s.prepare([random_image(1, 112, 112), random_image(2, 40, 40)], ["red?", "what colour?"])
    small = min(batch.num_visual)
    assert batch.num_visual[0] != batch.num_visual[1]
    with pytest.raises(BudgetError, match=f"the {small} visual tokens of this image"):
        s.plan(batch, s.make_policy("prune"), None, Budget(count=small + 1))


def test_explain_shapes_without_weights():
    from vtsched.core.planner import Planner

    for name, adapter in (("qwen2.5-vl-7b", Qwen2_5_VLAdapter), ("qwen2.5-vl-cpu", Qwen2_5_VLAdapter),
                          ("qwen2-vl-7b", Qwen2VLAdapter)):
        config = llava_config(name)
        assert registry().adapter_for_config(config) is adapter
        geometry = adapter.geometry_from_config(config)
        planner = Planner(registry(), geometry, adapter.default_partitioner)
        check = planner.check(planner.policy("parvts"), Budget(count=64))
        assert check.partitioner == "attention" and check.keep == 64 and geometry.num_visual == 576


@given(tiny_qwen_shapes(max_layers=2), family_prompts(max_size=1, min_side=40, max_side=130))
@settings(max_examples=6)
def test_decoding_after_pruning_continues_at_max_rotary_id_plus_one(shape, inputs):
    """Tokens decoded after a pruned prefill take M-RoPE ids max(prompt ids) + 1, + 2, ... on all three
    rows: the model run on the shortened prompt plus the generated tokens at those ids (transformers
    alone) gives the engine's step logits. A delta cached from the unpruned prompt would be off by
    the pruned count."""
    from vtsched.core.generation import GenerationConfig, generate
    from vtsched.core.tokens import Role

    model, processor = tiny_qwen(shape)
    s = scheduler(model, processor)
    batch = s.prepare(*inputs)
    sample = batch.samples[0]
    plan = s.plan(batch, s.make_policy("prune"), s.make_partitioner("random"), Budget(count=sample.num_visual // 2))
    ours = generate(s.engine, batch, plan.schedule, plan.partition, GenerationConfig(max_new_tokens=3),
                    keep_logits=True)
    keep_mask = sample.roles != Role.VISUAL
    keep_mask[sample.visual_positions[plan.partition.members(0, "subject")]] = True
    keep = torch.nonzero(keep_mask).flatten()
    with torch.inference_mode():
        embeds = model.get_input_embeddings()(sample.input_ids[None])
        embeds[0, sample.visual_positions] = sample.visual_features.to(embeds.dtype)
        new = torch.tensor(ours.tokens[0][:-1])
        embeds = torch.cat((embeds[:, keep], model.get_input_embeddings()(new[None])), dim=1)
        rope = sample.rope_positions[:, keep]
        after = int(sample.rope_positions.max()) + 1 + torch.arange(new.numel())
        rope = torch.cat((rope, after[None].expand(3, -1)), dim=1)
        logits = model(inputs_embeds=embeds, position_ids=rope[:, None]).logits[0]
    for step, step_logits in enumerate(ours.step_logits):
        torch.testing.assert_close(step_logits[0], logits[keep.numel() - 1 + step].float(), atol=1e-6, rtol=0)
