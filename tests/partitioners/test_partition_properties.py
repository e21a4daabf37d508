"""Partitions are disjoint covers of the requested size, deterministic, and CLS scores are right."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vtsched.core import Budget, BudgetError, Partition, ScheduleError
from vtsched.core.testing import TinyShape, prompts, random_image, tiny_llava, tiny_llava_shapes
from vtsched.partitioners.uniform import farthest_point_scores

from tests.helpers import scheduler

PARTITIONERS = ["cls", "random", "uniform"]


@given(tiny_llava_shapes(), prompts(max_size=3), st.sampled_from(PARTITIONERS), st.data())
def test_partitions_are_disjoint_covers_of_the_requested_size(shape, batch_inputs, name, data):
    s = scheduler(*tiny_llava(shape))
    batch = s.prepare(*batch_inputs)
    nv = batch.samples[0].num_visual
    keep = data.draw(st.integers(0, nv), label="keep")
    partition = s.make_partitioner(name).partition(batch, Budget(count=keep))
    for b, sample in enumerate(batch.samples):
        subject = set(partition.members(b, "subject").tolist())
        rest = set(partition.members(b, "non_subject").tolist())
        assert len(subject) == keep
        assert subject.isdisjoint(rest)
        assert subject | rest == set(range(sample.num_visual))
    again = s.make_partitioner(name).partition(batch, Budget(count=keep))
    assert all(torch.equal(a, b) for a, b in zip(partition.assignment, again.assignment))


@given(tiny_llava_shapes(), prompts(max_size=2))
def test_cls_subject_is_top_scored(shape, batch_inputs):
    s = scheduler(*tiny_llava(shape))
    batch = s.prepare(*batch_inputs)
    keep = batch.samples[0].num_visual // 2
    partition = s.make_partitioner("cls").partition(batch, Budget(count=keep))
    for b, sample in enumerate(batch.samples):
        subject = partition.members(b, "subject")
        others = partition.members(b, "non_subject")
        if len(subject) and len(others):
            assert sample.cls_scores[subject].min() >= sample.cls_scores[others].max()


@given(tiny_llava_shapes(), prompts(max_size=2))
def test_cls_scores_equal_eager_attention_reference(shape, batch_inputs):
    """Our CLS row (one query, patch keys) equals the vision tower's own eager attention weights."""
    s = scheduler(*tiny_llava(shape, torch.float64, "sdpa"))
    eager_model, processor = tiny_llava(shape, torch.float64, "eager")
    images, questions = batch_inputs
    batch = s.prepare(images, questions)
    pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"].double()
    with torch.inference_mode():
        out = eager_model.model.vision_tower(pixels, output_attentions=True)
    layer = eager_model.config.vision_feature_layer  # -2: the layer whose output LLaVA reads
    reference = out.attentions[layer][:, :, 0, 1:].mean(1)
    for b, sample in enumerate(batch.samples):
        torch.testing.assert_close(sample.cls_scores.double(), reference[b].double(), atol=1e-6, rtol=1e-5)


def test_random_partition_depends_on_seed():
    s = scheduler(*tiny_llava(TinyShape(image_size=56)))
    batch = s.prepare([random_image(0)], ["what?"])
    a = s.make_partitioner("random", {"seed": 1}).partition(batch, Budget(count=5))
    b = s.make_partitioner("random", {"seed": 2}).partition(batch, Budget(count=5))
    assert not torch.equal(a.assignment[0], b.assignment[0])


def test_uniform_spreads_tokens_over_the_grid():
    scores = farthest_point_scores(24, 24)
    top4 = torch.topk(scores, 4).indices
    rows, cols = top4 // 24, top4 % 24
    # four evenly spread tokens land in four different quadrants
    quadrants = {(int(r) // 12, int(c) // 12) for r, c in zip(rows, cols)}
    assert len(quadrants) == 4
    assert len(set(scores.tolist())) == 576  # a strict ranking


def test_out_of_range_budget_is_refused():
    s = scheduler(*tiny_llava(TinyShape()))
    batch = s.prepare([random_image(0)], ["what?"])
    with pytest.raises(BudgetError, match="exceeds the 4 visual tokens"):
        s.make_partitioner("cls").partition(batch, Budget(count=5))


def test_partition_validates_group_ids():
    with pytest.raises(ScheduleError, match="group id outside"):
        Partition(("a", "b"), (torch.tensor([0, 2]),))
    with pytest.raises(ScheduleError, match="unknown group"):
        Partition(("a",), (torch.tensor([0]),)).members(0, "zz")
