"""Hidden states from generation: the states `generate(..., hidden_states=N)` returns for the prompt's
last positions and for the generated tokens equal transformers' own ``hidden_states[-1]`` at the
same positions, under full and under prune (the shortened sequence with its original position ids),
and asking for them changes no generated token."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vtsched.core import GenerationConfig, Role, generate
from vtsched.core.errors import VtschedError
from vtsched.core.testing import TinyShape, prompts, random_image, tiny_llava, tiny_llava_shapes

from tests.helpers import hf_inputs, plan, scheduler

ATOL = 1e-6  # float64 models; the norms compute in float32, so differences are ~1e-8


@torch.inference_mode()
def reference_states(model, sample, kept: torch.Tensor, generated: list[int]) -> torch.Tensor:
    """transformers alone: ``hidden_states[-1]`` of the prompt's ``kept`` positions (original position
    ids kept) followed by the generated tokens at positions ``length, length + 1, ...``."""
    embed = model.get_input_embeddings()
    prompt = embed(sample.input_ids[None])
    prompt[0, sample.visual_positions] = sample.visual_features.to(prompt.dtype)
    tail = embed(torch.tensor([generated], dtype=torch.long))
    embeds = torch.cat((prompt[:, kept], tail), dim=1)
    positions = torch.cat((kept, torch.arange(sample.length, sample.length + len(generated))))[None]
    return model(inputs_embeds=embeds, position_ids=positions, output_hidden_states=True).hidden_states[-1][0]


@settings(max_examples=12)
@given(tiny_llava_shapes(), prompts(max_size=1), st.sampled_from(["full", "prune"]), st.integers(0, 4),
       st.integers(0, 6), st.data())
def test_returned_states_equal_transformers_hidden_states(shape, batch_inputs, policy, new_tokens, last, data):
    model, processor = tiny_llava(shape)
    s = scheduler(model, processor)
    batch = s.prepare(*batch_inputs)
    sample = batch.samples[0]
    budget = data.draw(st.integers(0, sample.num_visual), label="budget") if policy == "prune" else None
    pl = plan(s, batch, policy, budget, "random" if policy == "prune" else None)
    config = GenerationConfig(max_new_tokens=new_tokens)
    ours = generate(s.engine, batch, pl.schedule, pl.partition, config, hidden_states=last)
    plain = generate(s.engine, batch, pl.schedule, pl.partition, config)
    assert ours.tokens == plain.tokens  # asking for the states changes nothing generated
    assert plain.hidden_states is None

    kept = torch.ones(sample.length, dtype=torch.bool)
    if policy == "prune":
        kept = sample.roles != Role.VISUAL
        kept[sample.visual_positions[pl.partition.members(0, "subject")]] = True
    kept = torch.nonzero(kept).flatten()
    reference = reference_states(model, sample, kept, ours.tokens[0])
    asked = torch.cat((kept >= sample.length - last, torch.ones(len(ours.tokens[0]), dtype=torch.bool)))
    positions = torch.cat((kept, torch.arange(sample.length, sample.length + len(ours.tokens[0]))))

    states = ours.hidden_states
    assert states.positions[0].tolist() == positions[asked].tolist()
    torch.testing.assert_close(states.states[0], reference[asked], atol=ATOL, rtol=0)
    if len(ours.tokens[0]):
        last_token = sample.length + len(ours.tokens[0]) - 1  # fed once more so that its state exists
        torch.testing.assert_close(states.at(0, last_token), reference[-1], atol=ATOL, rtol=0)
    assert states.at(0, -1) is None


def test_prompt_states_match_transformers_forward_on_the_whole_prompt():
    """The plain case without the helper's embedding: transformers' forward from the processor's inputs."""
    model, processor = tiny_llava(TinyShape())
    s = scheduler(model, processor)
    image, question = random_image(5), "what colour is it?"
    batch = s.prepare([image], [question])
    pl = plan(s, batch, "full")
    result = s.answer(batch, pl, GenerationConfig(max_new_tokens=0), hidden_states=3)
    with torch.inference_mode():
        theirs = model(**hf_inputs(processor, image, question), output_hidden_states=True).hidden_states[-1][0]
    length = batch.samples[0].length
    assert result.generated.hidden_states.positions[0].tolist() == [length - 3, length - 2, length - 1]
    torch.testing.assert_close(result.generated.hidden_states.states[0], theirs[-3:], atol=ATOL, rtol=0)
    assert not torch.allclose(theirs[-1], theirs[-2])  # distinct positions: a shifted read would fail


def test_a_negative_count_is_refused():
    model, processor = tiny_llava(TinyShape())
    s = scheduler(model, processor)
    batch = s.prepare([random_image(5)], ["q?"])
    pl = plan(s, batch, "full")
    with pytest.raises(VtschedError, match="hidden_states must be >= 0"):
        generate(s.engine, batch, pl.schedule, pl.partition, GenerationConfig(max_new_tokens=1), hidden_states=-1)

