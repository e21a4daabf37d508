"""Each peer baseline's defining property, on tiny random LLaVA models."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vtsched.core import Budget, Role
from vtsched.core.testing import prompts, tiny_llava, tiny_llava_shapes
from vtsched.partitioners.visionzip import merge_contextual

from tests.helpers import plan, run_logits, scheduler

ATOL = 1e-6


def kept_visual(out, sample) -> set[int]:
    """Visual-token numbers (0..Nv-1) present in the surviving stream after the last layer."""
    index = out.index[0][out.index[0] >= 0]
    visual = sample.visual_positions.tolist()
    return {visual.index(p) for p in index.tolist() if p in visual}


@given(tiny_llava_shapes(max_layers=3), prompts(max_size=1), st.data())
def test_fastv_keeps_the_top_r_under_eager_attention(shape, batch_inputs, data):
    s = scheduler(*tiny_llava(shape))
    eager, processor = tiny_llava(shape, torch.float64, "eager")
    batch = s.prepare(*batch_inputs)
    sample = batch.samples[0]
    keep = data.draw(st.integers(0, sample.num_visual), label="R")
    k = data.draw(st.integers(1, shape.layers), label="K")
    pl = plan(s, batch, "fastv", keep, drop_layer=k)
    out = s.engine.prefill(batch, pl.schedule, pl.partition, use_cache=False, return_hidden=True)
    with torch.inference_mode():
        embeds = eager.get_input_embeddings()(sample.input_ids[None])
        embeds[0, sample.visual_positions] = sample.visual_features.to(embeds.dtype)
        att = eager(inputs_embeds=embeds, output_attentions=True).attentions[k - 1]
    scores = att[0, :, -1, sample.visual_positions].mean(0)  # last prompt token, head-averaged
    expected = set(torch.sort(-scores, stable=True).indices[:keep].tolist())
    assert kept_visual(out, sample) == expected


@given(tiny_llava_shapes(), prompts(max_size=2))
def test_vtw_at_the_last_layer_is_full_and_at_zero_is_no_image(shape, batch_inputs):
    s = scheduler(*tiny_llava(shape))
    batch = s.prepare(*batch_inputs)
    torch.testing.assert_close(run_logits(s, batch, "vtw", drop_layer=shape.layers), run_logits(s, batch, "full"),
                               atol=ATOL, rtol=0)
    torch.testing.assert_close(run_logits(s, batch, "vtw", drop_layer=0), run_logits(s, batch, "prune", 0),
                               atol=ATOL, rtol=0)


@given(st.lists(st.integers(0, 5), min_size=1, max_size=3, unique=True), st.sampled_from([0.25, 0.3, 0.5, 0.75]))
def test_pdrop_token_counts_per_layer_match_its_configuration(stages, ratio):
    """PyramidDrop's counts: floor(N * ratio ** (s + 1)) of the original N at stage s."""
    from vtsched.core.testing import TinyShape, random_image

    stages = tuple(sorted(stages))
    s = scheduler(*tiny_llava(TinyShape(layers=6, image_size=56)))  # 16 visual tokens
    batch = s.prepare([random_image(9)], ["what is in the corner?"])
    pl = plan(s, batch, "pdrop", None, layers="/".join(map(str, stages)), ratio=ratio)
    out = s.engine.prefill(batch, pl.schedule, pl.partition, use_cache=False)
    per_layer = {}
    for w in out.stats.work:
        for layer in range(w.start, w.end):
            per_layer[layer] = int(w.visual[0])
    expected, count = {}, 16
    for layer in range(6):
        if layer in stages:
            count = int(16 * ratio ** (stages.index(layer) + 1) + 1e-9)
        expected[layer] = count
    assert per_layer == expected


def test_pdrop_fits_its_ratio_to_a_budget_and_refuses_unreachable_ones():
    from vtsched.core.demo.shapes import llava_config
    from vtsched.core.adapters import LlavaAdapter
    from vtsched.core.errors import BudgetError
    from vtsched.policies import PDrop
    from vtsched.policies.pdrop import average_tokens

    geometry = LlavaAdapter.geometry_from_config(llava_config("llava-1.5-7b"))
    policy = PDrop(layers=(2, 6, 12))
    ratio = policy.stage_ratio(geometry, Budget(count=64))
    assert 63 < average_tokens(576, (2, 6, 12), ratio, 32) <= 64  # floored counts: within one step
    assert average_tokens(576, (2, 6, 12), ratio + 1e-6, 32) > 64  # the largest ratio within the budget
    with pytest.raises(BudgetError, match="at least 144.0") as refused:  # an unreachable budget is refused
        PDrop(layers=(8, 16, 24)).schedule(geometry, budget=Budget(count=64))
    assert "-p layers=3/16/24" in str(refused.value)
    # without layers, the first stage moves to where the budget is reachable
    assert PDrop().stage_layers(geometry, Budget(count=64)) == (3, 16, 24)
    assert PDrop().stage_layers(geometry) == (8, 16, 24)


@given(st.integers(2, 30), st.integers(1, 8), st.integers(0, 10_000))
def test_visionzip_merged_tokens_are_means_of_their_assigned_tokens(n_rest, contextual, seed):
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(40, 6, generator=gen, dtype=torch.float64)
    keys = torch.randn(40, 4, generator=gen)
    rest = torch.sort(torch.randperm(40, generator=gen)[:n_rest]).values
    targets, merged, joined = merge_contextual(features, keys, rest, contextual)
    assert targets.numel() == min(contextual, n_rest)
    assert torch.isin(targets, rest).all()
    for t, target in enumerate(targets):
        members = rest[joined == target]
        assert target in members.tolist()
        torch.testing.assert_close(merged[t], features[members].mean(0))
    normed = torch.nn.functional.normalize(keys, dim=-1)
    for token, target in zip(rest.tolist(), joined.tolist()):
        if token not in targets.tolist():  # joined the most similar target
            sims = normed[token] @ normed[targets].T
            assert sims.argmax().item() == targets.tolist().index(target)


@given(tiny_llava_shapes(max_visual_side=4), prompts(max_size=1), st.data())
def test_visionzip_runs_as_transformers_on_its_merged_shortened_sequence(shape, batch_inputs, data):
    s = scheduler(*tiny_llava(shape))
    model = s.adapter.model
    batch = s.prepare(*batch_inputs)
    sample = batch.samples[0]
    keep = data.draw(st.integers(1, sample.num_visual), label="R")
    pl = plan(s, batch, "visionzip", keep)
    out = s.engine.prefill(batch, pl.schedule, pl.partition, use_cache=False, return_hidden=True)
    features = sample.visual_features.clone()
    if pl.partition.features[0] is not None:
        targets, merged = pl.partition.features[0]
        features[targets] = merged
    with torch.inference_mode():
        embeds = model.get_input_embeddings()(sample.input_ids[None])
        embeds[0, sample.visual_positions] = features.to(embeds.dtype)
        kept = sample.visual_positions[pl.partition.members(0, "subject")]
        mask = sample.roles != Role.VISUAL
        mask[kept] = True
        positions = torch.nonzero(mask).flatten()
        reference = model(inputs_embeds=embeds[:, positions], position_ids=positions[None]).logits[0, -1].float()
    assert len(kept) == keep
    torch.testing.assert_close(out.logits[0], reference, atol=ATOL, rtol=0)
