"""ParVTS reductions, fusion weights, cached decoding, sequential policies."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vtsched.core import Budget, FusionInputs, GenerationConfig, Partition, generate
from vtsched.core.errors import ScheduleError
from vtsched.core.testing import TinyShape, prompts, random_image, tiny_llava, tiny_llava_shapes
from vtsched.policies import ParVTS

from tests.helpers import plan, registry, run_logits, scheduler

ATOL = 1e-6
RULES = st.sampled_from(["fixed", "size", "attention"])
TOKENS = st.sampled_from(["question", "post_image", "last"])


def _setup(shape, batch_inputs, data):
    s = scheduler(*tiny_llava(shape))
    batch = s.prepare(*batch_inputs)
    keep = data.draw(st.integers(0, batch.samples[0].num_visual), label="keep")
    return s, batch, keep


@given(tiny_llava_shapes(), prompts(max_size=2), RULES, TOKENS, st.data())
def test_parvts_at_layer_zero_equals_prune(shape, batch_inputs, rule, tokens, data):
    s, batch, keep = _setup(shape, batch_inputs, data)
    ours = run_logits(s, batch, "parvts", keep, drop_layer=0, fusion=rule, fuse_tokens=tokens)
    torch.testing.assert_close(ours, run_logits(s, batch, "prune", keep), atol=ATOL, rtol=0)


@given(tiny_llava_shapes(), prompts(max_size=2), TOKENS, st.data())
def test_parvts_with_alpha_one_equals_prune_at_every_layer(shape, batch_inputs, tokens, data):
    s, batch, keep = _setup(shape, batch_inputs, data)
    k = data.draw(st.integers(0, shape.layers), label="K")
    ours = run_logits(s, batch, "parvts", keep, drop_layer=k, fusion="fixed", alpha=1.0, fuse_tokens=tokens)
    torch.testing.assert_close(ours, run_logits(s, batch, "prune", keep), atol=ATOL, rtol=0)


@given(tiny_llava_shapes(), prompts(max_size=2), RULES, st.data())
def test_parvts_keeping_every_token_equals_full(shape, batch_inputs, rule, data):
    s = scheduler(*tiny_llava(shape))
    batch = s.prepare(*batch_inputs)
    k = data.draw(st.integers(0, shape.layers), label="K")
    ours = run_logits(s, batch, "parvts", batch.samples[0].num_visual, drop_layer=k, fusion=rule)
    torch.testing.assert_close(ours, run_logits(s, batch, "full"), atol=ATOL, rtol=0)


@given(tiny_llava_shapes(), prompts(max_size=2), RULES, TOKENS, st.data())
def test_a_third_empty_group_changes_nothing(shape, batch_inputs, rule, tokens, data):
    s, batch, keep = _setup(shape, batch_inputs, data)
    k = data.draw(st.integers(0, shape.layers), label="K")
    two = s.make_partitioner("cls").partition(batch, Budget(count=keep))
    three = Partition(("subject", "non_subject", "empty"), two.assignment, two.scores)
    policy = ParVTS(drop_layer=k, fusion=rule, fuse_tokens=tokens, alpha=0.3)
    geometry = s.adapter.geometry
    a = s.engine.prefill(batch, policy.schedule(geometry, two.groups), two, use_cache=False).logits
    b = s.engine.prefill(batch, policy.schedule(geometry, three.groups), three, use_cache=False).logits
    torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


@st.composite
def fusion_inputs(draw):
    streams, batch, tokens = draw(st.integers(2, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 5))
    counts = torch.tensor(draw(st.lists(st.integers(0, 9), min_size=streams * batch, max_size=streams * batch)),
                          dtype=torch.float32).view(streams, batch)
    mass = torch.tensor(draw(st.lists(st.sampled_from([0.0, 1e-9, 0.1, 0.5, 1.0]),
                                      min_size=streams * batch * tokens, max_size=streams * batch * tokens)))
    return FusionInputs(counts, mass.view(streams, batch, tokens), torch.ones(batch, tokens, dtype=torch.bool),
                        draw(st.integers(0, streams - 1)))


@given(fusion_inputs(), RULES, st.floats(0, 1))
def test_fusion_weights_are_finite_and_sum_to_one(inputs, rule, alpha):
    cls = registry().get("fusion_rule", rule)
    weights = (cls(alpha=alpha) if rule == "fixed" else cls()).weights(inputs)
    assert weights.shape == inputs.shape
    assert torch.isfinite(weights).all() and (weights >= 0).all()
    torch.testing.assert_close(weights.sum(0), torch.ones(inputs.shape[1:]))
    empty = inputs.visual_counts == 0
    for s in range(inputs.shape[0]):  # a non-surviving stream with no visual tokens gets no weight
        if s != inputs.survivor and bool(empty[s].all()):
            assert float(weights[s].abs().max()) == 0.0


@given(tiny_llava_shapes(), prompts(max_size=2), RULES, TOKENS, st.integers(1, 4), st.data())
def test_cached_decoding_equals_recomputing_without_cache(shape, batch_inputs, rule, tokens, steps, data):
    """Decode semantics (see ParVTS's docstring): generated tokens live in the subject stream only."""
    s, batch, keep = _setup(shape, batch_inputs, data)
    k = data.draw(st.integers(0, shape.layers), label="K")
    pl = plan(s, batch, "parvts", keep, drop_layer=k, fusion=rule, fuse_tokens=tokens)
    cached = generate(s.engine, batch, pl.schedule, pl.partition, GenerationConfig(max_new_tokens=steps),
                      keep_logits=True)
    for step in range(1, steps):
        tail = [torch.tensor(t[:step]) for t in cached.tokens]
        fresh = s.engine.prefill(batch, pl.schedule, pl.partition, tail=tail, use_cache=False).logits
        torch.testing.assert_close(cached.step_logits[step], fresh, atol=ATOL, rtol=0)


@given(tiny_llava_shapes(), prompts(min_size=2, max_size=3), RULES, st.data())
def test_parvts_batch_equals_samples_one_by_one(shape, batch_inputs, rule, data):
    s, batch, keep = _setup(shape, batch_inputs, data)
    k = data.draw(st.integers(0, shape.layers), label="K")
    config = GenerationConfig(max_new_tokens=3)
    pl = plan(s, batch, "parvts", keep, drop_layer=k, fusion=rule)
    together = generate(s.engine, batch, pl.schedule, pl.partition, config, keep_logits=True)
    for b in range(len(batch)):
        one = batch.select([b])
        pl1 = plan(s, one, "parvts", keep, drop_layer=k, fusion=rule)
        alone = generate(s.engine, one, pl1.schedule, pl1.partition, config, keep_logits=True)
        assert alone.tokens[0] == together.tokens[b]
        for step, logits in enumerate(alone.step_logits):
            torch.testing.assert_close(logits[0], together.step_logits[step][b], atol=ATOL, rtol=0)


def test_results_are_deterministic_under_a_seed():
    s = scheduler(*tiny_llava(TinyShape(layers=3, image_size=42)))
    images, questions = [random_image(3), random_image(4)], ["what colour?", "how many red objects left?"]
    config = GenerationConfig(max_new_tokens=6, do_sample=True, temperature=0.9, top_k=20, top_p=0.9, seed=7)
    runs = [s.run(images, questions, "parvts", budget=3, partitioner="random", generation=config,
                  policy_params={"drop_layer": 1}).generated.tokens for _ in range(2)]
    assert runs[0] == runs[1]
    other = s.run(images, questions, "parvts", budget=3, partitioner="random", policy_params={"drop_layer": 1},
                  generation=GenerationConfig(max_new_tokens=6, do_sample=True, seed=8)).generated.tokens
    assert len(other) == 2


@given(tiny_llava_shapes(), prompts(max_size=2), st.data())
def test_sequential_policies_reduce_to_prune_at_the_ends(shape, batch_inputs, data):
    s, batch, keep = _setup(shape, batch_inputs, data)
    L = shape.layers
    nv = batch.samples[0].num_visual
    prune = run_logits(s, batch, "prune", keep)
    full = run_logits(s, batch, "full")
    # subject-first: insert at L never lets the rest in (prune R); at 0 lets everything in (prune N_v = full)
    torch.testing.assert_close(run_logits(s, batch, "subject-first", keep, insert_layer=L), prune, atol=ATOL, rtol=0)
    torch.testing.assert_close(run_logits(s, batch, "subject-first", keep, insert_layer=0), full, atol=ATOL, rtol=0)
    # non-subject-first: switch at 0 is prune to the subject; at L is prune to the complement
    torch.testing.assert_close(run_logits(s, batch, "non-subject-first", keep, switch_layer=0), prune,
                               atol=ATOL, rtol=0)
    complement = s.engine.prefill(
        batch, *_complement_prune(s, batch, keep), use_cache=False
    ).logits
    torch.testing.assert_close(run_logits(s, batch, "non-subject-first", keep, switch_layer=L), complement,
                               atol=ATOL, rtol=0)
    assert nv >= keep


def _complement_prune(s, batch, keep):
    """prune whose kept group is the non-subject group: swap the partition's group order."""
    part = s.make_partitioner("cls").partition(batch, Budget(count=keep))
    swapped = Partition(("non_subject", "subject"), tuple(1 - a for a in part.assignment))
    return s.make_policy("prune").schedule(s.adapter.geometry, swapped.groups), swapped


def test_parvts_runs_streams_in_one_call_per_layer_and_shares_the_prefix():
    s = scheduler(*tiny_llava(TinyShape(layers=3, image_size=42)))
    batch = s.prepare([random_image(5)], ["what is in the corner?"])
    calls = []  # rows of hidden states each decoder-layer call receives

    def record_rows(module, args, kwargs):
        calls.append(int(kwargs.get("hidden_states", args[0] if args else None).shape[1]))

    hooks = [layer.register_forward_pre_hook(record_rows, with_kwargs=True) for layer in s.adapter.language_model.layers]
    try:
        out = s.engine.prefill(batch, plan(s, batch, "parvts", 2, drop_layer=2).schedule,
                               plan(s, batch, "parvts", 2, drop_layer=2).partition, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    # the shared prefix runs once through the K=2 parallel layers, then joins the subject stream;
    # both streams share one call per layer: 2 (prefix) + 3 (streams) calls, never one per stream
    assert len(calls) == 2 + 3
    prefix = int(out.stats.prefix[0])
    assert prefix == batch.samples[0].image_start and out.stats.prefix_layers == 2
    parallel = [w for w in out.stats.work if w.end <= 2]
    alone = [w for w in out.stats.work if w.start >= 2]
    assert {w.stream for w in parallel} == {"subject", "non_subject"} and {w.stream for w in alone} == {"subject"}
    assert all(int(w.keys[0]) == int(w.queries[0]) + prefix for w in parallel)
    assert all(int(w.keys[0]) == int(w.queries[0]) for w in alone)  # prefix is now part of the stream
    # one call per layer: the prefix alone through layers 0-1, both streams' rows together in the same
    # layers' second call, the subject stream alone after K
    both_streams = sum(int(w.queries[0]) for w in parallel if w.start == 0)
    assert calls == [prefix, prefix, both_streams, both_streams, int(alone[0].queries[0])]


def test_parvts_refuses_drop_layer_out_of_range():
    s = scheduler(*tiny_llava(TinyShape(layers=2)))
    with pytest.raises(ScheduleError, match="drop_layer 5 outside 0..2"):
        s.make_policy("parvts", {"drop_layer": 5}).schedule(s.adapter.geometry)


@given(tiny_llava_shapes(), prompts(max_size=2), st.floats(0, 1), st.data())
def test_fixed_fusion_after_the_last_layer_mixes_the_two_prunes(shape, batch_inputs, alpha, data):
    """K = L, every post-image token fused: the last state is alpha*h_subject + (1-alpha)*h_rest."""
    s, batch, keep = _setup(shape, batch_inputs, data)
    geometry = s.adapter.geometry
    part = s.make_partitioner("cls").partition(batch, Budget(count=keep))
    ours = s.engine.prefill(
        batch, ParVTS(drop_layer=shape.layers, fusion="fixed", alpha=alpha, fuse_tokens="post_image")
        .schedule(geometry, part.groups), part, use_cache=False, return_hidden=True)
    prune = s.make_policy("prune")
    h_s = s.engine.prefill(batch, prune.schedule(geometry, part.groups), part, use_cache=False, return_hidden=True)
    swapped = Partition(("non_subject", "subject"), tuple(1 - a for a in part.assignment))
    h_n = s.engine.prefill(batch, prune.schedule(geometry, swapped.groups), swapped, use_cache=False,
                           return_hidden=True)
    for b in range(len(batch)):
        last_s = h_s.hidden[b, int(h_s.index[b].ge(0).sum()) - 1]
        last_n = h_n.hidden[b, int(h_n.index[b].ge(0).sum()) - 1]
        rest = batch.samples[b].num_visual - keep
        a = alpha if rest > 0 else 1.0  # an empty non-subject stream gets no weight
        expected = s.adapter.model.lm_head(s.adapter.language_model.norm(a * last_s + (1 - a) * last_n)).float()
        torch.testing.assert_close(ours.logits[b], expected, atol=ATOL, rtol=0)


@given(tiny_llava_shapes(), prompts(max_size=1), st.data())
def test_attention_fusion_weights_equal_eager_attention_mass(shape, batch_inputs, data):
    """Attention weights = each stream's share of question-token attention on its visual tokens,
    head-averaged and averaged over layers < K, read from transformers' eager attention."""
    s, batch, keep = _setup(shape, batch_inputs, data)
    k = data.draw(st.integers(1, shape.layers), label="K")
    eager, _ = tiny_llava(shape, torch.float64, "eager")
    pl = plan(s, batch, "parvts", keep, drop_layer=k, fusion="attention", fuse_tokens="question")
    out = s.engine.prefill(batch, pl.schedule, pl.partition, use_cache=False)
    [(layer, names, weights)] = out.stats.fusions
    sample = batch.samples[0]
    masses = []
    for group in names:
        kept_visual = sample.visual_positions[pl.partition.members(0, group)]
        keep_mask = sample.roles != 1
        keep_mask[kept_visual] = True
        positions = torch.nonzero(keep_mask).flatten()
        with torch.inference_mode():
            embeds = eager.get_input_embeddings()(sample.input_ids[None])
            embeds[0, sample.visual_positions] = sample.visual_features.to(embeds.dtype)
            att = eager(inputs_embeds=embeds[:, positions], position_ids=positions[None],
                        output_attentions=True).attentions
        roles = sample.roles[positions]
        question = torch.nonzero(roles == 2).flatten()
        visual = (roles == 1).double()
        per_layer = [(a[0][:, question] * visual).sum(-1).mean(0) for a in att[:k]]
        masses.append(torch.stack(per_layer).mean(0))
    mass = torch.stack(masses)
    total = mass.sum(0)
    sizes = torch.tensor([float(keep), float(sample.num_visual - keep)])
    by_size = (sizes / sizes.sum())[:, None].expand_as(mass) if sizes.sum() > 0 else torch.tensor([[1.0], [0.0]])
    expected = torch.where(total > 1e-6, mass / total.clamp(min=1e-12), by_size)
    torch.testing.assert_close(weights[:, 0, : len(total)].double(), expected, atol=1e-5, rtol=1e-4)
