"""The carry event: text states of ending streams join the survivor as extra tokens.

The main property, carrying equals the streams run apart and joined by hand through the model's own
decoder, is in the adapter kit (``test_carry_equals_the_streams_run_apart_and_joined_by_hand``, run
for every family); batch == one by one and cached decoding == recompute are in the policy kit
(``TestParVTSCarry``). Here: what nothing attends to changes nothing, the split layout, what a
prefill reports, and how schedules spell the event.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vtsched.core import Carry, EndStream, GenerationConfig, Schedule, ScheduleError, Stream, generate
from vtsched.core.cost import executed_prefill_flops, prefill_flops
from vtsched.core.engine import Engine
from vtsched.core.testing import TinyShape, prompts, random_image, tiny_llava, tiny_llava_shapes
from vtsched.core.testing.strategies import schedules
from vtsched.core.tokens import Role

from tests.helpers import plan, registry, scheduler

ATOL = 1e-6
TOKENS = st.sampled_from(["question", "post_image", "last"])


def _generate(s, batch, pl, steps):
    return generate(s.engine, batch, pl.schedule, pl.partition, GenerationConfig(max_new_tokens=steps),
                    keep_logits=True)


@given(tiny_llava_shapes(), prompts(max_size=2), TOKENS, st.data())
def test_carried_tokens_no_layer_attends_to_change_nothing_in_prefill_or_decoding(shape, batch_inputs, tokens, data):
    """Carried after the last layer, no layer ever sees the copies: logits and every decoded step equal
    prune's, although the copies took slots (the next token's place moved, its rotary id must not)."""
    s = scheduler(*tiny_llava(shape))
    batch = s.prepare(*batch_inputs)
    keep = data.draw(st.integers(0, min(batch.num_visual)), label="keep")
    carried = plan(s, batch, "parvts", keep, drop_layer=shape.layers, merge="carry", fuse_tokens=tokens)
    pruned = plan(s, batch, "prune", keep)
    ours, theirs = _generate(s, batch, carried, 3), _generate(s, batch, pruned, 3)
    for step, (a, b) in enumerate(zip(ours.step_logits, theirs.step_logits)):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0, msg=f"step {step}")
    assert ours.tokens == theirs.tokens


@given(tiny_llava_shapes(min_layers=2), prompts(min_size=1, max_size=2), TOKENS, st.data())
def test_split_streams_carry_as_packed_ones_do(shape, batch_inputs, tokens, data):
    model, processor = tiny_llava(shape)
    s = scheduler(model, processor)
    batch = s.prepare(*batch_inputs)
    keep = data.draw(st.integers(0, min(batch.num_visual)), label="keep")
    k = data.draw(st.integers(0, shape.layers), label="K")
    pl = plan(s, batch, "parvts", keep, drop_layer=k, merge=data.draw(st.sampled_from(["carry", "both"])),
              fuse_tokens=tokens)
    split = Engine(s.engine.parts, s.engine.fusion_rules, split_above=0)
    packed = s.engine.prefill(batch, pl.schedule, pl.partition, use_cache=False).logits
    torch.testing.assert_close(split.prefill(batch, pl.schedule, pl.partition, use_cache=False).logits, packed,
                               atol=ATOL, rtol=0)


def test_a_prefill_reports_its_own_positions_and_counts_the_copies():
    s = scheduler(*tiny_llava(TinyShape(layers=3, heads=2, kv_heads=1, image_size=42)))
    batch = s.prepare([random_image(1, 40, 30), random_image(2, 30, 50)], ["what colour?", "what is in the corner here?"])
    pl = plan(s, batch, "parvts", 4, drop_layer=1, merge="carry", fuse_tokens="post_image")
    out = s.engine.prefill(batch, pl.schedule, pl.partition, use_cache=False, return_hidden=True)
    assert out.index is not None
    for b, sample in enumerate(batch.samples):
        post_image = int(torch.isin(sample.roles, torch.tensor(Role.FUSED["post_image"])).sum())
        own = out.index[b][out.index[b] >= 0]
        text = torch.nonzero(sample.roles != Role.VISUAL).flatten()
        subject = sample.visual_positions[pl.partition.members(b, pl.partition.groups[0])]
        assert own.tolist() == sorted(torch.cat((text, subject)).tolist())  # each position once: its own copy
        slots = out.slots(b, text)  # where the prompt's own copies sit, never a carried copy
        assert out.index[b][slots].tolist() == text.tolist()
        dropped = [p for p in sample.visual_positions.tolist() if p not in set(subject.tolist())]
        if dropped:
            with pytest.raises(ScheduleError, match="not in the sequence that ran"):
                out.slots(b, torch.tensor(dropped[:1]))
        assert int(out.stats.carries[0][2][b]) == post_image
        survivor_after = [w for w in out.stats.work if w.start >= 1 and w.stream == pl.schedule.survivor]
        assert all(int(w.carried[b]) == post_image for w in survivor_after)
    # the copies are paid for: the same schedule without them costs less, by their tokens' work
    plain = plan(s, batch, "parvts", 4, drop_layer=1, merge="fuse", fuse_tokens="post_image")
    base = s.engine.prefill(batch, plain.schedule, plain.partition, use_cache=False)
    g = s.adapter.geometry
    assert bool((prefill_flops(out.stats, g) > prefill_flops(base.stats, g)).all())
    assert bool((executed_prefill_flops(out.stats, g) > executed_prefill_flops(base.stats, g)).all())
    assert bool((out.stats.carried_per_layer(g.num_layers) > 0).all())


def _streams(*events):
    return Schedule(4, ("s", "n"), (Stream("s", ("s",)), Stream("n", ("n",))), "s", tuple(events))


@pytest.mark.parametrize("events,message", [
    ([Carry(2, ("s",), "s"), EndStream(2, "n")], "cannot carry its own tokens"),
    ([Carry(2, (), "s"), EndStream(2, "n")], "one or more distinct source streams"),
    ([EndStream(1, "n"), Carry(2, ("n",), "s")], "stream already ended"),
    ([Carry(2, ("n",), "s", "answer"), EndStream(2, "n")], "tokens must be one of"),  # type: ignore[arg-type]
])
def test_invalid_carries_are_refused_clearly(events, message):
    with pytest.raises(ScheduleError, match=message):
        _streams(*events)


def test_a_carry_reads_in_explain_and_survives_json():
    schedule = _streams(Carry(2, ("n",), "s", "question"), EndStream(2, "n"))
    assert "@2   carry question tokens of n -> s (as extra tokens)" in schedule.explain()
    assert Schedule.from_json(schedule.to_json()) == schedule
    policy = registry().policy("parvts")(merge="carry")
    assert "merge=carry" in policy.describe()


# -- any schedule, carries among the other events -------------------------------------------------
def _random_partition(schedule, batch, seed):
    from vtsched.core import Partition

    g = torch.Generator().manual_seed(seed)
    assignment = tuple(torch.randint(0, len(schedule.groups), (n,), generator=g) for n in batch.num_visual)
    return Partition(schedule.groups, assignment)


@given(schedules(max_layers=3), tiny_llava_shapes(), prompts(min_size=2, max_size=3), st.integers(0, 99))
def test_any_schedule_runs_a_batch_as_its_samples_one_by_one_and_decodes_as_it_recomputes(schedule, shape,
                                                                                          batch_inputs, seed):
    """Drawn schedules mix every event kind (carries with fuses, inserts, kept tops, ends) on any streams."""
    from dataclasses import replace

    s = scheduler(*tiny_llava(replace(shape, layers=schedule.num_layers)))
    batch = s.prepare(*batch_inputs)
    partition = _random_partition(schedule, batch, seed)
    together = generate(s.engine, batch, schedule, partition, GenerationConfig(max_new_tokens=2), keep_logits=True)
    for b in range(len(batch)):
        alone_partition = type(partition)(partition.groups, (partition.assignment[b],))
        alone = generate(s.engine, batch.select([b]), schedule, alone_partition, GenerationConfig(max_new_tokens=2),
                         keep_logits=True)
        for step, logits in enumerate(alone.step_logits):
            torch.testing.assert_close(together.step_logits[step][b], logits[0], atol=ATOL, rtol=0)
    tail = [torch.tensor(t[:1], dtype=torch.long) for t in together.tokens]
    again = s.engine.prefill(batch, schedule, partition, tail=tail, use_cache=False)
    torch.testing.assert_close(together.step_logits[1], again.logits, atol=ATOL, rtol=0)


def test_the_answer_position_diagnostic_runs(tmp_path):
    """docs/diagnostics/answer_position.py, quoted by docs/demo-model.md, on a few images so it never rots."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "docs" / "diagnostics" / "answer_position.py"
    out = subprocess.run([sys.executable, str(script), "--images", "2", "--attention"], capture_output=True, text=True,
                         timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert "average the answer position alone" in out.stdout and "carried" in out.stdout
