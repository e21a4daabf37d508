"""Full and prune against transformers' own code, batching, backends."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from vtsched.core import GenerationConfig, Role, generate
from vtsched.core.testing import TinyShape, prompts, random_image, tiny_llava, tiny_llava_shapes

from tests.helpers import hf_inputs, hf_logits, plan, run_logits, scheduler

ATOL = 1e-6  # float64 models; the norms compute in float32, so differences are ~1e-8


@given(tiny_llava_shapes(), prompts(max_size=1))
def test_full_equals_transformers_forward_at_every_position(shape, batch_inputs):
    model, processor = tiny_llava(shape)
    s = scheduler(model, processor)
    images, questions = batch_inputs
    batch = s.prepare(images, questions)
    pl = plan(s, batch, "full")
    out = s.engine.prefill(batch, pl.schedule, pl.partition, use_cache=False, return_hidden=True)
    reference = hf_logits(model, processor, images[0], questions[0])
    assert out.all_logits.shape[1] == reference.shape[0]
    torch.testing.assert_close(out.all_logits[0], reference, atol=ATOL, rtol=0)
    assert hf_inputs(processor, images[0], questions[0])["input_ids"][0].tolist() == batch.samples[0].input_ids.tolist()


@given(tiny_llava_shapes(), prompts(max_size=1), st.integers(1, 6))
def test_full_greedy_tokens_equal_transformers_generate(shape, batch_inputs, new_tokens):
    model, processor = tiny_llava(shape)
    s = scheduler(model, processor)
    images, questions = batch_inputs
    batch = s.prepare(images, questions)
    pl = plan(s, batch, "full")
    ours = generate(s.engine, batch, pl.schedule, pl.partition, GenerationConfig(max_new_tokens=new_tokens))
    inputs = hf_inputs(processor, images[0], questions[0])
    with torch.inference_mode():
        theirs = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                                pad_token_id=0, min_new_tokens=new_tokens)
    assert ours.tokens[0] == theirs[0, inputs["input_ids"].shape[1]:].tolist()


@given(tiny_llava_shapes(), prompts(max_size=2))
def test_prune_keeping_every_token_equals_full(shape, batch_inputs):
    model, processor = tiny_llava(shape)
    s = scheduler(model, processor)
    batch = s.prepare(*batch_inputs)
    nv = batch.samples[0].num_visual
    torch.testing.assert_close(run_logits(s, batch, "prune", nv), run_logits(s, batch, "full"), atol=ATOL, rtol=0)


@given(tiny_llava_shapes(), prompts(max_size=1), st.data())
def test_prune_equals_transformers_on_physically_shortened_sequence(shape, batch_inputs, data):
    model, processor = tiny_llava(shape)
    s = scheduler(model, processor)
    batch = s.prepare(*batch_inputs)
    sample = batch.samples[0]
    keep = data.draw(st.integers(0, sample.num_visual), label="budget")
    partitioner = data.draw(st.sampled_from(["cls", "random", "uniform"]), label="partitioner")
    pl = plan(s, batch, "prune", keep, partitioner)
    ours = s.engine.prefill(batch, pl.schedule, pl.partition, use_cache=False, return_hidden=True)

    # transformers alone: embed, place features, drop the pruned tokens, keep original position ids.
    with torch.inference_mode():
        embeds = model.get_input_embeddings()(sample.input_ids[None])
        visual = sample.visual_positions
        embeds[0, visual] = sample.visual_features.to(embeds.dtype)
        kept_visual = visual[pl.partition.members(0, "subject")]
        keep_mask = sample.roles != Role.VISUAL
        keep_mask[kept_visual] = True
        positions = torch.nonzero(keep_mask).flatten()
        reference = model(inputs_embeds=embeds[:, positions], position_ids=positions[None]).logits[0].float()
    assert ours.index[0].tolist() == positions.tolist()
    torch.testing.assert_close(ours.all_logits[0], reference, atol=ATOL, rtol=0)


@given(tiny_llava_shapes(), prompts(min_size=2, max_size=3), st.sampled_from(["full", "prune"]),
       st.integers(0, 4))
def test_batch_equals_samples_one_by_one(shape, batch_inputs, policy, keep):
    model, processor = tiny_llava(shape)
    s = scheduler(model, processor)
    batch = s.prepare(*batch_inputs)
    keep = min(keep, batch.samples[0].num_visual)
    config = GenerationConfig(max_new_tokens=3)
    pl = plan(s, batch, policy, keep)
    together = generate(s.engine, batch, pl.schedule, pl.partition, config, keep_logits=True)
    for b in range(len(batch)):
        one = batch.select([b])
        pl1 = plan(s, one, policy, keep)
        alone = generate(s.engine, one, pl1.schedule, pl1.partition, config, keep_logits=True)
        assert alone.tokens[0] == together.tokens[b]
        for step, logits in enumerate(alone.step_logits):
            torch.testing.assert_close(logits[0], together.step_logits[step][b], atol=ATOL, rtol=0)


@given(tiny_llava_shapes(), prompts(max_size=2), st.sampled_from(["full", "prune", "parvts"]))
def test_sdpa_equals_eager(shape, batch_inputs, policy):
    sdpa = scheduler(*tiny_llava(shape, torch.float32, "sdpa"))
    eager = scheduler(*tiny_llava(shape, torch.float32, "eager"))
    batch = sdpa.prepare(*batch_inputs)
    keep = batch.samples[0].num_visual // 2
    params = {"drop_layer": 1} if policy == "parvts" else {}
    torch.testing.assert_close(
        run_logits(sdpa, batch, policy, keep, **params), run_logits(eager, batch, policy, keep, **params),
        atol=1e-4, rtol=1e-4,
    )


def test_padding_and_positions_do_not_leak_between_samples():
    """A short and a long prompt in one batch: the short one's logits match it run alone."""
    model, processor = tiny_llava(TinyShape(layers=2))
    s = scheduler(model, processor)
    images = [random_image(1), random_image(2)]
    batch = s.prepare(images, ["red?", "what is the colour of the small object in the top left corner?"])
    assert batch.samples[0].length != batch.samples[1].length
    together = run_logits(s, batch, "full")
    alone = run_logits(s, batch.select([0]), "full")
    torch.testing.assert_close(together[0], alone[0], atol=ATOL, rtol=0)
