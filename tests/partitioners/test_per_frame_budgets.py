"""``budget_mode="per_frame"``: an image partitioner applied to each frame of a video on its own, the
budget split evenly over the frames (issue 26: every image partitioner per frame)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vtsched.core.budget import Budget
from vtsched.core.pixels.video import Video
from vtsched.core.scheduler import Scheduler
from vtsched.core.testing.videos import moving_square, video_prompt_batches
from vtsched.partitioners.attention import AttentionReceived
from vtsched.partitioners.cdpruner import CDPruner
from vtsched.partitioners.cls import ClsAttention
from vtsched.partitioners.divprune import DivPrune, cosine_distances, max_min_diverse
from vtsched.partitioners.vispruner import VisPruner


def even_split(keep: int, frames: int) -> list[int]:
    """Written from the rule, not the code: R // F each, one more for the first R % F frames."""
    return [keep // frames + (1 if f < keep % frames else 0) for f in range(frames)]


def kept_per_frame(assignment: torch.Tensor, sample) -> list[torch.Tensor]:
    per_frame = sample.video.tokens_per_frame
    return [torch.nonzero(assignment[f * per_frame:(f + 1) * per_frame] == 0).flatten()
            for f in range(sample.video.frames)]


def with_scores(batch, seed: int):
    """The batch with random [CLS]-style scores (ties drawn too: values on a coarse grid)."""
    gen = torch.Generator().manual_seed(seed)
    return dataclasses.replace(batch, samples=[
        dataclasses.replace(s, cls_scores=torch.randint(0, 4, (s.num_visual,), generator=gen).float())
        for s in batch.samples])


@settings(max_examples=40)
@given(video_prompt_batches(max_frames=5, max_side=3), st.integers(0, 2**16), st.data())
def test_scores_keep_each_frames_share_of_its_own_best_tokens(batch, seed, data):
    batch = with_scores(batch, seed)
    keep = data.draw(st.integers(0, min(s.num_visual for s in batch.samples)), label="keep")
    partition = ClsAttention(budget_mode="per_frame").partition(batch, Budget(count=keep))
    for sample, assignment in zip(batch.samples, partition.assignment):
        quotas = even_split(keep, sample.video.frames)
        for f, kept in enumerate(kept_per_frame(assignment, sample)):
            assert kept.numel() == quotas[f]
            frame_scores = sample.cls_scores[sample.video.tokens_of_frame(f)].tolist()
            best = sorted(range(len(frame_scores)), key=lambda i: (-frame_scores[i], i))[: quotas[f]]
            assert sorted(best) == kept.tolist()  # the frame's top by score, ties to the lower token


@settings(max_examples=30)
@given(video_prompt_batches(max_frames=4, max_side=3), st.data())
def test_divprune_per_frame_is_the_greedy_set_of_each_frame_alone(batch, data):
    keep = data.draw(st.integers(0, min(s.num_visual for s in batch.samples)), label="keep")
    partition = DivPrune(budget_mode="per_frame").partition(batch, Budget(count=keep))
    for sample, assignment in zip(batch.samples, partition.assignment):
        quotas = even_split(keep, sample.video.frames)
        for f, kept in enumerate(kept_per_frame(assignment, sample)):
            frame = sample.visual_features[sample.video.tokens_of_frame(f)]
            chosen, _ = max_min_diverse(cosine_distances(frame), quotas[f])
            assert sorted(chosen.tolist()) == kept.tolist()


def test_a_still_image_is_one_part():
    from vtsched.core.testing import random_image

    s = Scheduler.random("demo")
    batch = s.prepare([random_image(3, 112, 112)], ["what?"])
    for mode in ("global", "per_frame"):
        assert ClsAttention(budget_mode=mode).partition(batch, Budget(count=5)).assignment[0].tolist() == \
            ClsAttention().partition(batch, Budget(count=5)).assignment[0].tolist()


def test_per_frame_on_a_qwen_clip_keeps_every_frames_share():
    """The tiny Qwen2-VL's own clip (its attention scores, its frames): attention, vispruner and cdpruner keep
    the even split per frame, where the global selection need not."""
    s = Scheduler.random("qwen2-vl-tiny")
    clip = Video.from_frames(moving_square(0, 8, 56, 56), 4.0)
    batch = s.prepare([clip], ["where does the square go?"])
    sample = batch.samples[0]
    keep = sample.video.frames + 3
    for partitioner in (AttentionReceived(budget_mode="per_frame"), VisPruner(budget_mode="per_frame"),
                        CDPruner(budget_mode="per_frame")):
        assignment = partitioner.partition(batch, Budget(count=keep)).assignment[0]
        counts = [k.numel() for k in kept_per_frame(assignment, sample)]
        assert counts == even_split(keep, sample.video.frames), type(partitioner).__name__
    assert int(np.sum(counts)) == keep
