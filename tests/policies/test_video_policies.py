"""Policies on video prompts of the tiny Qwen2-VL and Qwen2.5-VL: fastv, dart and parvts run
unchanged (the policy kit on clips; fastv and dart equal the model's own layers on the shortened sequence; parvts
with alpha 1 equals prune), and framefusion's merges equal a brute-force reference written from the official code."""

from __future__ import annotations

import math
from typing import ClassVar

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from vtsched.core.budget import Budget
from vtsched.core.events import KeepTop, MergeFrames
from vtsched.core.events.merge_frames import frame_merges
from vtsched.core.partition import Partition
from vtsched.core.pixels import read_video
from vtsched.core.schedule import Schedule, Stream
from vtsched.core.testing import EventConformance
from vtsched.core.testing.conformance.events import removed_at
from vtsched.core.testing.families import TinyQwenShape, tiny_qwen
from vtsched.core.testing.models import (
    rotary_ids,
    bound_scheduler,
    decoder_slice,
    layer_embeds,
    one_sequence,
)
from vtsched.core.testing.videos import (
    VideoPolicyConformance,
    moving_square,
    write_video,
)
from vtsched.core.tokens import Role
from vtsched.policies import DART, FastV, FrameFusion, ParVTS

VERSIONS = ("2", "2.5")


# -- the policy kit on video clips -----------------------------------------------------------------------


class TestFastVOnVideo(VideoPolicyConformance):
    policy_class = FastV
    policy_params: ClassVar[dict[str, object]] = {"drop_layer": 1}


class TestDARTOnVideo(VideoPolicyConformance):
    policy_class = DART
    policy_params: ClassVar[dict[str, object]] = {"drop_layer": 1}


class TestParVTSOnVideo(VideoPolicyConformance):
    policy_class = ParVTS
    policy_params: ClassVar[dict[str, object]] = {"drop_layer": 1}
    partitioner_name = "temporal"


class TestFrameFusionOnVideo(VideoPolicyConformance):
    policy_class = FrameFusion
    policy_params: ClassVar[dict[str, object]] = {"merge_layers": 1, "drop_layer": 1, "threshold": 0.0}


class TestFrameFusionCascadeOnVideo(VideoPolicyConformance):
    policy_class = FrameFusion
    # every repeated patch passes: the merges go down to R
    policy_params: ClassVar[dict[str, object]] = {"merge_layers": 2, "drop_layer": 2, "threshold": -1.0}
    min_layers = 2


class TestMergeFramesEvent(EventConformance):
    """The event kit (on the kit's still images nothing merges: every patch appears once); the merges
    themselves are held to the brute-force reference below."""

    event_class = MergeFrames


# -- fastv, dart, parvts: exactness on video -----------------------------------------------------------------


def _clip(seed: int, frames: int, side: int = 60, fps: float = 4.0, noise: int = 12):
    return read_video(write_video(moving_square(seed, frames, side, side, noise=noise), fps), frames=frames)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("policy", [FastV(drop_layer=1), DART(drop_layer=2)])
def test_fastv_and_dart_on_video_equal_the_models_layers_on_the_shortened_sequence(version, policy):
    """The visual tokens the ranker kept at layer K continue alone: the model's own layers on the whole clip up
    to K, then on the kept tokens (each with its 3-D M-RoPE ids), give the engine's last-token logits."""
    model, processor = tiny_qwen(TinyQwenShape(version=version, layers=3))
    scheduler = bound_scheduler(model, processor)
    batch = scheduler.prepare([_clip(5, 6)], ["what moves across the frames?"])
    plan = scheduler.plan(batch, policy, None, Budget.parse("40%"))
    ran = scheduler.engine.prefill(batch, plan.schedule, plan.partition, use_cache=False, return_hidden=True)
    kept = ran.index[0][ran.index[0] >= 0]
    assert int((batch.samples[0].roles[kept] == Role.VISUAL).sum()) == round(0.4 * batch.num_visual[0])
    expected = removed_at(model, batch.samples[0], policy.drop_layer, kept)
    torch.testing.assert_close(ran.logits[0].to(expected.dtype), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("version", VERSIONS)
def test_parvts_on_video_with_alpha_one_equals_prune(version):
    """ParVTS with the fixed fusion at alpha 1 keeps only the subject stream's text: it equals prune with the
    same temporal partition (the removal-only part of parvts is the shortened sequence prune is held to)."""
    model, processor = tiny_qwen(TinyQwenShape(version=version, layers=3))
    scheduler = bound_scheduler(model, processor)
    batch = scheduler.prepare([_clip(2, 6), _clip(3, 4)], ["what moves?", "is the square there?"])
    partitioner = scheduler.make_partitioner("temporal")
    budget = Budget.parse("50%")
    pruned = scheduler.plan(batch, scheduler.make_policy("prune"), partitioner, budget)
    parallel = scheduler.plan(batch, ParVTS(drop_layer=2, fusion="fixed", alpha=1.0), partitioner, budget)
    a = scheduler.engine.prefill(batch, pruned.schedule, pruned.partition, use_cache=False, return_hidden=True)
    b = scheduler.engine.prefill(batch, parallel.schedule, parallel.partition, use_cache=False, return_hidden=True)
    torch.testing.assert_close(b.logits, a.logits, atol=1e-6, rtol=0)


# -- framefusion: the merges against a brute-force reference ----------------------------------------------


def reference_merges(states: list[list[float]], patches: list[int], threshold: float,
                     most: int) -> dict[int, int]:
    """member -> root, written from the official rule with plain lists: compare each token with the previous
    token of its patch; those at or above the threshold pass; keep the ``most`` most similar (earlier first on
    ties); a passing token joins the nearest earlier token of its patch that does not pass."""
    def cosine(a: list[float], b: list[float]) -> float:
        dot = sum(x * y for x, y in zip(a, b))
        return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))

    previous: dict[int, int] = {}
    passing: list[tuple[float, int, int]] = []  # (similarity, rank in patch order, token)
    order = sorted(range(len(states)), key=lambda i: (patches[i], i))
    for rank, i in enumerate(order):
        p = patches[i]
        if p in previous:
            s = cosine(states[previous[p]], states[i])
            if s >= threshold:
                passing.append((s, rank, i))
        previous[p] = i
    chosen = sorted(passing, key=lambda e: (-e[0], e[1]))[:max(most, 0)]
    merged = {i for _, _, i in chosen}
    roots = {}
    for i in merged:
        earlier = [j for j in range(i) if patches[j] == patches[i] and j not in merged]
        roots[i] = max(earlier)
    return roots


@st.composite
def frame_states(draw):
    """States of a clip's visual tokens, frame-major (``frames x patches``), where a token either repeats the
    same patch of the frame before with a little noise, or is new; the grid's coordinates as (height, width).
    (Exact repeats tie at a cosine of 1 up to rounding, which two implementations order differently: the cap's
    order among exact repeats is checked apart, in test_exact_repeats_merge_in_order.)"""
    frames, rows, cols = draw(st.integers(1, 5)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dim = draw(st.integers(2, 5))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    clip = [torch.randn(rows * cols, dim, generator=gen, dtype=torch.float64)]
    for _ in range(frames - 1):
        frame = clip[-1] + draw(st.sampled_from([0.01, 0.1, 1.0])) * torch.randn(rows * cols, dim, generator=gen,
                                                                                 dtype=torch.float64)
        new = torch.rand(rows * cols, generator=gen) < draw(st.sampled_from([0.0, 0.3, 1.0]))
        frame[new] = torch.randn(int(new.sum()), dim, generator=gen, dtype=torch.float64)
        clip.append(frame)
    states = torch.cat(clip)
    cell = torch.arange(rows * cols).repeat(frames)
    return states, cell // cols + 7, cell % cols + 7  # offsets: M-RoPE ids start after the text


@settings(max_examples=200, deadline=None)
@given(frame_states(), st.sampled_from([-1.0, 0.0, 0.6, 0.95]), st.integers(0, 50))
def test_frame_merges_equal_the_brute_force_reference(clip, threshold, most):
    states, height, width = clip
    roots, members = frame_merges(states, height, width, threshold, most)
    patches = (height * 100 + width).tolist()
    assert dict(zip(members, roots)) == reference_merges(states.tolist(), patches, threshold, most)
    assert len(members) == len(set(members)) <= most and not set(members) & set(roots)


def test_exact_repeats_merge_in_order():
    """A frozen clip (3 identical frames of 2 patches): every later token passes; with room for all they join
    the first frame's token of their patch (one run, one root), and a cap keeps the count exact."""
    frame = torch.tensor([[1.0, 2.0], [-3.0, 0.5]], dtype=torch.float64)
    states, cell = frame.repeat(3, 1), torch.arange(2).repeat(3)
    roots, members = frame_merges(states, cell * 0, cell, 0.99, 10)
    assert sorted(zip(members, roots)) == [(2, 0), (3, 1), (4, 0), (5, 1)]
    assert len(frame_merges(states, cell * 0, cell, 0.99, 3)[1]) == 3


def test_frame_merges_leave_a_still_image_whole():
    """One frame: every patch once, nothing to compare, nothing merges (framefusion is FastV on an image)."""
    states = torch.ones(6, 4, dtype=torch.float64)
    cell = torch.arange(6)
    assert frame_merges(states, cell // 3, cell % 3, -1.0, 6) == ([], [])


@torch.inference_mode()
def _reference_logits(model, sample, layers: tuple[int, ...], threshold: float, floor: int) -> tuple[torch.Tensor, list]:
    """The model's own layers one at a time; entering each layer in ``layers``, the brute-force merges on the
    states of the tokens still present (patch = token index mod tokens per frame, from Sample.video), the roots'
    states set to the mean of root and members, the members removed. Last-token logits and the kept positions."""
    lm = model.model.language_model
    video = sample.video
    per_frame = video.rows * video.cols
    visual = sample.visual_positions.tolist()
    patch_of = {p: k % per_frame for k, p in enumerate(visual)}
    hidden = layer_embeds(model, sample)[0]
    present = list(range(hidden.shape[0]))
    for layer in range(len(lm.layers)):
        if layer in layers:
            tokens = [p for p in present if p in patch_of]
            roots = reference_merges([hidden[p].tolist() for p in tokens], [patch_of[p] for p in tokens], threshold,
                                     max(len(tokens) - floor, 0))
            merged = hidden.clone()
            for root in set(roots.values()):
                group = [tokens[root]] + [tokens[m] for m, r in roots.items() if r == root]
                merged[tokens[root]] = hidden[group].sum(0) / len(group)
            hidden = merged
            gone = {tokens[m] for m in roots}
            present = [p for p in present if p not in gone]
        ids = rotary_ids(sample, torch.tensor(present))
        with decoder_slice(lm, [lm.layers[layer]], final_norm=False) as one:
            out = one(inputs_embeds=hidden[present][None], position_ids=ids, attention_mask=one_sequence(ids))
        hidden = hidden.clone()
        hidden[present] = out.last_hidden_state[0]
    return model.lm_head(lm.norm(hidden[present[-1]])).float(), present


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("threshold", [-1.0, 0.5])
def test_merge_frames_on_video_equals_the_reference_run(version, threshold):
    """Merging entering layers 0 and 1 (a cascade: the second compares with what the first left), on real clips
    of a tiny Qwen: the engine's logits and kept positions equal the layer-by-layer brute-force run."""
    model, processor = tiny_qwen(TinyQwenShape(version=version, layers=3))
    scheduler = bound_scheduler(model, processor)
    batch = scheduler.prepare([_clip(11, 8, noise=4)], ["what moves?"])
    sample, floor = batch.samples[0], 5
    events = tuple(MergeFrames(layer, "main", "subject", threshold, floor) for layer in (0, 1))
    schedule = Schedule(3, ("subject",), (Stream("main", ("subject",)),), "main", events)
    ran = scheduler.engine.prefill(batch, schedule, Partition.single(batch.num_visual), use_cache=False, return_hidden=True)
    expected, present = _reference_logits(model, sample, (0, 1), threshold, floor)
    assert ran.index[0][ran.index[0] >= 0].tolist() == present
    if threshold == -1.0:  # every repeated patch passes: the cap leaves exactly the floor
        assert sum(p in set(sample.visual_positions.tolist()) for p in present) == floor
    torch.testing.assert_close(ran.logits[0].to(expected.dtype), expected, atol=1e-6, rtol=0)


def test_framefusion_keeps_exactly_the_budget_and_is_fastv_on_a_still_image():
    from vtsched.core.demo.shapes import random_image

    model, processor = tiny_qwen(TinyQwenShape(version="2.5", layers=3))
    scheduler = bound_scheduler(model, processor)
    budget = Budget.parse("30%")
    video = scheduler.prepare([_clip(4, 8, noise=2)], ["what moves?"])
    plan = scheduler.plan(video, FrameFusion(threshold=0.0), None, budget)
    ran = scheduler.engine.prefill(video, plan.schedule, plan.partition, use_cache=False, return_hidden=True)
    visual = set(video.samples[0].visual_positions.tolist())
    assert sum(p in visual for p in ran.index[0].tolist()) == round(0.3 * video.num_visual[0])
    still = scheduler.prepare([random_image(1, 56, 84)], ["what colour?"])
    ours = scheduler.plan(still, FrameFusion(), None, budget)
    fastv = scheduler.plan(still, FastV(), None, budget)
    a = scheduler.engine.prefill(still, ours.schedule, ours.partition, use_cache=False, return_hidden=True)
    b = scheduler.engine.prefill(still, fastv.schedule, fastv.partition, use_cache=False, return_hidden=True)
    assert a.index.tolist() == b.index.tolist()
    torch.testing.assert_close(a.logits, b.logits, atol=1e-9, rtol=0)
    assert isinstance(ours.schedule.events[-1], KeepTop)


def test_framefusions_dry_run_is_an_upper_bound_on_video_and_exact_on_a_still_image():
    """merge_frames counts no change (how many merge depends on the states): the sweep's estimate is FastV's at
    the same R, exact where nothing merges (a still image) and above what ran where tokens merged (a clip)."""
    from vtsched.core.cost import prefill_flops
    from vtsched.core.demo.shapes import random_image
    from vtsched.core.tools.sweep.plan import estimate_prefill_flops

    model, processor = tiny_qwen(TinyQwenShape(version="2", layers=3))
    scheduler = bound_scheduler(model, processor)
    policy = FrameFusion(merge_layers=2, drop_layer=2, threshold=-1.0)
    for visual, merges in ((_clip(6, 8, noise=2), True), (random_image(2, 56, 84), False)):
        batch = scheduler.prepare([visual], ["what moves?"])
        plan = scheduler.plan(batch, policy, None, Budget.parse("25%"))
        ran = scheduler.engine.prefill(batch, plan.schedule, plan.partition, use_cache=False)
        roles = batch.samples[0].roles
        after = torch.arange(roles.numel()) > torch.nonzero(roles == Role.VISUAL).max()
        sizes = {g: int(n) for g, n in zip(plan.partition.groups, plan.partition.sizes()[0])}
        estimate = estimate_prefill_flops(plan.schedule, scheduler.adapter.geometry, sizes,
                                          prefix=int((roles == Role.PREFIX).sum()), suffix=int(after.sum()),
                                          question=int((roles == Role.QUESTION).sum()),
                                          share_prefix=scheduler.engine.share_prefix)
        executed = float(prefill_flops(ran.stats, scheduler.adapter.geometry)[0])
        if merges:
            assert executed < estimate
        else:
            assert executed == pytest.approx(estimate, rel=1e-9)


@pytest.mark.parametrize("version", VERSIONS)
def test_framefusions_declared_flops_equal_the_flop_counter_on_video(version):
    """After tokens merged away, what the run declares (layers and scoring) equals torch's flop counter on an eager
    model: the merged tokens' rows are gone from every later layer's work."""
    from torch.utils.flop_counter import FlopCounterMode

    from vtsched.core.cost import executed_prefill_flops, scoring_flops

    model, processor = tiny_qwen(TinyQwenShape(version=version, layers=3), torch.float64, "eager")
    scheduler = bound_scheduler(model, processor)
    batch = scheduler.prepare([_clip(8, 8, noise=2)], ["what moves?"])
    plan = scheduler.plan(batch, FrameFusion(merge_layers=2, drop_layer=2, threshold=-1.0), None, Budget.parse("25%"))
    with FlopCounterMode(display=False) as counter:
        ran = scheduler.engine.prefill(batch, plan.schedule, plan.partition, use_cache=False)
    g = scheduler.adapter.geometry
    declared = float((executed_prefill_flops(ran.stats, g) + scoring_flops(ran.stats, g))[0]) + 2 * g.hidden_size * g.vocab_size
    assert counter.get_total_flops() == pytest.approx(declared, rel=1e-9)
    assert float(ran.stats.visual_per_layer(g.num_layers)[0]) == round(0.25 * batch.num_visual[0])  # merged at layer 0
