"""Video on Qwen2-VL and Qwen2.5-VL: frames read with PyAV, the processor's video inputs, the real token
geometry (temporal patch pairs, merged grid per frame, M-RoPE time ids), exactness through the adapter
kit, and the temporal partitioners."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vtsched.core.adapters import Qwen2_5_VLAdapter, Qwen2VLAdapter
from vtsched.core.budget import Budget
from vtsched.core.demo.shapes import random_image
from vtsched.core.errors import InputError
from vtsched.core.pixels import read_video
from vtsched.core.testing.families import QwenVideoAdapterConformance, TinyQwenShape, tiny_qwen
from vtsched.core.testing.videos import (
    VideoPartitionerConformance, moving_square, tiny_videos, video_prompt_batches, write_video,
)
from vtsched.core.tokens import PromptBatch, Role, Sample, VideoLayout
from vtsched.partitioners.temporal import TemporalRedundancy
from vtsched.partitioners.vidcom2 import VidCom2

from tests.helpers import scheduler

ADAPTERS = {"2": Qwen2VLAdapter, "2.5": Qwen2_5_VLAdapter}


class TestQwen2VLVideo(QwenVideoAdapterConformance):
    adapter_class = Qwen2VLAdapter
    versions = ("2",)


class TestQwen25VLVideo(QwenVideoAdapterConformance):
    adapter_class = Qwen2_5_VLAdapter
    versions = ("2.5",)


# -- reading frames ----------------------------------------------------------------------------------


@given(st.integers(1, 9), st.data())
@settings(max_examples=15)
def test_read_video_samples_evenly_and_at_a_rate(total, data):
    """frames=N keeps linspace(0, total - 1, N) rounded (first and last frame included); fps=F keeps
    round(total / source_fps * F) frames the same way; the frames are the written ones (FFV1 is lossless)."""
    fps = data.draw(st.sampled_from([2.0, 5.0, 25.0]), label="fps")
    clip = moving_square(data.draw(st.integers(0, 99)), total, 30, 22)
    buffer = write_video(clip, fps)
    count = data.draw(st.integers(1, total), label="frames")
    video = read_video(buffer, frames=count)
    expected = [round(i * (total - 1) / (count - 1)) if count > 1 else 0 for i in range(count)]
    assert list(video.indices) == expected and video.total_frames == total and video.fps == fps
    assert np.array_equal(video.frames, clip[expected])
    assert video.size == (30, 22) and video.sampled_fps == pytest.approx(count / total * fps)
    rate = data.draw(st.sampled_from([0.5, 1.0, 2.0]), label="rate")
    want = max(1, round(total / fps * rate))
    if want <= total:
        assert read_video(buffer, fps=rate).num_frames == want
    else:
        with pytest.raises(InputError, match="asks for"):
            read_video(buffer, fps=rate)


def test_read_video_refuses_bad_input_in_one_line(tmp_path):
    import av

    empty = io.BytesIO()  # a stream and its header, no frame
    with av.open(empty, "w", format="avi") as container:
        stream = container.add_stream("ffv1", rate=4)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "bgr0"
        container.start_encoding()
    garbage = tmp_path / "clip.mp4"
    garbage.write_bytes(b"not a video at all" * 10)
    clip = write_video(moving_square(0, 3, 16, 16))
    cases = [
        (lambda: read_video(garbage, frames=2), "cannot read"),
        (lambda: read_video(tmp_path / "missing.mp4", frames=2), "cannot read"),
        (lambda: read_video(empty, frames=1), "no frames"),
        (lambda: read_video(clip, frames=4), "only 3"),
        (lambda: read_video(clip, frames=0), "at least 1"),
        (lambda: read_video(clip, frames=2, fps=1.0), "not both"),
        (lambda: read_video(clip), "not both or neither"),
    ]
    for call, words in cases:
        with pytest.raises(InputError, match=words) as info:
            call()
        assert "\n" not in str(info.value)


# -- token geometry ----------------------------------------------------------------------------------


@given(st.sampled_from(["2", "2.5"]), tiny_videos(min_frames=1, max_frames=6))
@settings(max_examples=12)
def test_video_tokens_map_to_frames_boxes_and_3d_time_ids(version, video):
    """Temporal patch pairs (an odd count padded by repeating the last frame), frame-major merged grids,
    each token's frame and pixel box, and M-RoPE ids: time start + floor(t * interval) with interval 1 on
    Qwen2-VL and tokens_per_second * 2 / sampled fps on Qwen2.5-VL; rows and columns on the merged grid;
    the text after the video resumes at start + max(rows, cols) (transformers' get_rope_index)."""
    model, processor = tiny_qwen(TinyQwenShape(version=version))
    sample = ADAPTERS[version](model, processor).prepare([video], ["what moves?"]).samples[0]
    layout = sample.video
    assert layout.frames == -(-video.num_frames // 2) and sample.grid is None
    assert layout.num_visual == sample.num_visual
    padded = list(video.indices) + [video.indices[-1]] * (2 * layout.frames - video.num_frames)
    assert layout.source_frames == tuple(tuple(padded[2 * t:2 * t + 2]) for t in range(layout.frames))
    assert layout.times == pytest.approx([padded[2 * t] / video.fps for t in range(layout.frames)])
    start = sample.image_start
    rope = sample.rope_positions[:, sample.visual_positions]
    interval = 1.0 if version == "2" else model.config.vision_config.tokens_per_second * 2 / video.sampled_fps
    frame = layout.frame_of_token()
    index = torch.arange(sample.num_visual)
    row, col = (index // layout.cols) % layout.rows, index % layout.cols
    assert rope[0].tolist() == [start + int(t * interval) for t in frame.tolist()]
    assert rope[1].tolist() == (start + row).tolist() and rope[2].tolist() == (start + col).tolist()
    after = int(sample.visual_positions[-1]) + 1
    assert (sample.rope_positions[:, after] == start + max(layout.rows, layout.cols)).all()
    boxes = sample.pixel_boxes
    assert torch.equal(boxes.frames, frame) and boxes.image_size == video.size
    width, height = video.size
    cell_w, cell_h = width / layout.cols, height / layout.rows
    expected = torch.stack((col * cell_w, row * cell_h, (col + 1) * cell_w, (row + 1) * cell_h), -1).double()
    torch.testing.assert_close(boxes.boxes, expected)
    for t in range(layout.frames):
        assert torch.equal(layout.tokens_of_frame(t), torch.nonzero(frame == t).flatten())


def test_a_family_without_video_refuses_a_video_in_one_line():
    from vtsched.core.testing.strategies import TinyShape, tiny_llava

    model, processor = tiny_llava(TinyShape())
    s = scheduler(model, processor)
    video = read_video(write_video(moving_square(1, 4, 28, 28)), frames=4)
    with pytest.raises(InputError, match="takes still images only") as info:
        s.prepare([video], ["what moves?"])
    assert "\n" not in str(info.value)


# -- partitioners across time --------------------------------------------------------------------------


class TestTemporalPartitioner(VideoPartitionerConformance):
    partitioner_class = TemporalRedundancy


class TestVidCom2Partitioner(VideoPartitionerConformance):
    partitioner_class = VidCom2


def _cosine(a: list[float], b: list[float]) -> float:
    """torch's cosine_similarity written out: each norm clamped at 1e-8."""
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (max(math.sqrt(sum(x * x for x in a)), 1e-8) * max(math.sqrt(sum(y * y for y in b)), 1e-8))


def evs_reference(features: torch.Tensor, tokens_per_frame: int, keep: int, *, previous: bool = True) -> set[int]:
    """EVS from its definition (vLLM's compute_retention_mask), one token at a time: the first frame scores
    255, any other token 1 - cos with the same patch of the previous frame (``previous=False``: of the first
    frame, the control); the ``keep`` highest, ties to the lower index."""
    rows = features.tolist()
    score = []
    for i, row in enumerate(rows):
        if i < tokens_per_frame:
            score.append(255.0)
        else:
            other = rows[i - tokens_per_frame] if previous else rows[i % tokens_per_frame]
            score.append(round(1.0 - _cosine(row, other), 9))
    return set(sorted(range(len(rows)), key=lambda i: (-score[i], i))[:keep])


def vidcom2_reference(features: torch.Tensor, frames: int, keep: int, *, weighted: bool = True,
                      most_distinct: bool = True) -> tuple[list[int], set[int]]:
    """VidCom2 from the official code's definition, in plain Python: ``(tokens per frame, chosen tokens)``.

    Channels: the lower-variance half; tokens normalised over them; Gaussian kernel sums (alphas 1/8..2) to
    the video's and the frame's centres; frame weights 1 + p - mean(p), p = softmax(uniqueness / 0.01); the
    budget handed out as seats (one per frame first when it allows; then seat j of frame t has priority
    share_t - j, highest first, ties to the lower frame; at most the frame's tokens); per frame the lowest
    summed similarity. Controls: ``weighted=False`` splits evenly; ``most_distinct=False`` keeps the most
    similar tokens."""
    rows = features.tolist()
    n, width = len(rows), len(rows[0])
    per = n // frames
    mean = [sum(r[c] for r in rows) / n for c in range(width)]
    variance = [sum((r[c] - mean[c]) ** 2 for r in rows) / n for c in range(width)]
    channels = sorted(range(width), key=lambda c: (round(variance[c], 9), c))[:max(1, width // 2)]
    x = []
    for r in rows:
        v = [r[c] for c in channels]
        norm = max(math.sqrt(sum(e * e for e in v)), 1e-12)
        x.append([e / norm for e in v])

    def centre(items: list[list[float]]) -> list[float]:
        return [sum(col) / len(items) for col in zip(*items)]

    def kernel(v: list[float], c: list[float]) -> float:
        squared = sum((a - b) ** 2 for a, b in zip(v, c))
        return sum(math.exp(-squared / (2 * a)) for a in (0.125, 0.25, 0.5, 1.0, 2.0))

    video_centre = centre(x)
    to_video = [kernel(v, video_centre) for v in x]
    to_frame = []
    for t in range(frames):
        c = centre(x[t * per:(t + 1) * per])
        to_frame += [kernel(v, c) for v in x[t * per:(t + 1) * per]]
    uniqueness = [-sum(to_video[t * per:(t + 1) * per]) / per for t in range(frames)]
    top = max(uniqueness)
    e = [math.exp((u - top) / 0.01) for u in uniqueness]
    p = [v / sum(e) for v in e]
    weight = [1 + q - sum(p) / frames for q in p] if weighted else [1.0] * frames
    share = [round(keep * w / frames, 9) for w in weight]
    first = keep >= frames
    seats = [(math.inf if (first and j == 0) else share[t] - j, t) for t in range(frames) for j in range(per)]
    counts = [0] * frames
    for _, t in sorted(seats, key=lambda s: (-s[0], s[1]))[:keep]:
        counts[t] += 1
    chosen = set()
    for t in range(frames):
        tokens = range(t * per, (t + 1) * per)
        sign = 1 if most_distinct else -1
        ranked = sorted(tokens, key=lambda i: (sign * round(to_video[i] + to_frame[i], 9), i))
        chosen |= set(ranked[:counts[t]])
    return counts, chosen


def _per_frame(members: torch.Tensor, tokens_per_frame: int, frames: int) -> list[int]:
    return torch.bincount(members // tokens_per_frame, minlength=frames).tolist()


@given(video_prompt_batches(min_size=1, max_size=1, max_frames=5, max_side=3), st.data())
@settings(max_examples=60)
def test_temporal_keeps_what_evs_keeps(batch, data):
    """temporal = EVS from its definition on small clips: the same tokens, so the same count in every
    frame; a budget of at least one frame keeps the first frame whole."""
    sample = batch.samples[0]
    layout = sample.video
    keep = data.draw(st.integers(0, sample.num_visual), label="keep")
    members = TemporalRedundancy().partition(batch, Budget(count=keep)).members(0, "subject")
    reference = evs_reference(sample.visual_features, layout.tokens_per_frame, keep)
    assert set(members.tolist()) == reference
    counts = _per_frame(members, layout.tokens_per_frame, layout.frames)
    assert counts == _per_frame(torch.tensor(sorted(reference), dtype=torch.long), layout.tokens_per_frame,
                                layout.frames)
    assert sum(counts) == keep and counts[0] == min(keep, layout.tokens_per_frame)


def test_temporal_compares_with_the_previous_frame_not_the_first():
    """The control: a patch that changes at frame 1 and changes back at frame 2 is new at frame 2 (EVS
    compares with the previous frame); comparing with the first frame would call it redundant."""
    a, b, c, d = (torch.tensor(v, dtype=torch.float64) for v in ([1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 0]))
    features = torch.stack([a, c, b, c, a, d])  # 3 frames of 2 tokens: (a, c), (b, c), (a, d)
    batch = PromptBatch([_video_sample(features, 3, 1, 2)])
    members = set(TemporalRedundancy().partition(batch, Budget(count=4)).members(0, "subject").tolist())
    assert members == evs_reference(features, 2, 4) == {0, 1, 2, 4}
    assert evs_reference(features, 2, 4, previous=False) != members


@given(video_prompt_batches(min_size=1, max_size=1, max_frames=5, max_side=3), st.data())
@settings(max_examples=60)
def test_vidcom2_splits_the_budget_and_keeps_what_the_official_rule_keeps(batch, data):
    """vidcom2 = VidCom2 from its definition on small clips: the budget's split over frames (exact counts,
    summing to the budget, at least one per frame when it allows, none above a frame's tokens) and the
    tokens kept in each frame."""
    sample = batch.samples[0]
    layout = sample.video
    keep = data.draw(st.integers(0, sample.num_visual), label="keep")
    members = VidCom2().partition(batch, Budget(count=keep)).members(0, "subject")
    counts, chosen = vidcom2_reference(sample.visual_features, layout.frames, keep)
    assert _per_frame(members, layout.tokens_per_frame, layout.frames) == counts
    assert set(members.tolist()) == chosen
    assert sum(counts) == keep and max(counts) <= layout.tokens_per_frame
    if keep >= layout.frames:
        assert min(counts) >= 1


def test_vidcom2_gives_a_unique_frame_more_and_keeps_distinct_tokens():
    """Controls on a clip whose third frame differs from three alike: an even split and keeping the most
    similar tokens must both disagree with vidcom2, which matches the reference."""
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    frames = [base + 0.05 * torch.randn(4, 6, generator=gen, dtype=torch.float64) for _ in range(4)]
    frames[2] = torch.randn(4, 6, generator=gen, dtype=torch.float64) * 3
    features = torch.cat(frames)
    batch = PromptBatch([_video_sample(features, 4, 2, 2)])
    members = VidCom2().partition(batch, Budget(count=8)).members(0, "subject")
    counts, chosen = vidcom2_reference(features, 4, 8)
    assert _per_frame(members, 4, 4) == counts and set(members.tolist()) == chosen
    assert counts[2] == max(counts) > 2
    assert vidcom2_reference(features, 4, 8, weighted=False)[0] != counts
    assert vidcom2_reference(features, 4, 8, most_distinct=False)[1] != chosen


def test_temporal_partitioners_refuse_a_still_image_in_one_line():
    batch = scheduler(*tiny_qwen(TinyQwenShape())).prepare([random_image(0, 56, 56)], ["what?"])
    for partitioner in (TemporalRedundancy(), VidCom2()):
        with pytest.raises(InputError, match="still image") as info:
            partitioner.partition(batch, Budget(count=1))
        assert "\n" not in str(info.value)


def _video_sample(features: torch.Tensor, frames: int, rows: int, cols: int) -> Sample:
    n = features.shape[0]
    roles = torch.tensor([Role.PREFIX] + [Role.VISUAL] * n + [Role.QUESTION], dtype=torch.long)
    return Sample(torch.arange(n + 2), roles, features, video=VideoLayout(frames, rows, cols))


# -- the command line and the Python API ------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen_checkpoints(tmp_path_factory):
    """The tiny Qwen2-VL and Qwen2.5-VL shapes saved as checkpoints, and a 6-frame clip written with PyAV."""
    from vtsched.core.shapes import build_random_llava

    root = tmp_path_factory.mktemp("video")
    paths = {}
    for name in ("qwen2-vl-tiny", "qwen2.5-vl-tiny"):
        model, processor = build_random_llava(name)
        model.save_pretrained(root / name)
        processor.save_pretrained(root / name)
        paths[name] = root / name
    clip = root / "clip.mkv"
    clip.write_bytes(write_video(moving_square(7, 6, 64, 48), 3.0).getvalue())
    return paths, clip


@pytest.mark.parametrize("name", ["qwen2-vl-tiny", "qwen2.5-vl-tiny"])
def test_run_video_from_the_cli_on_saved_checkpoints(name, qwen_checkpoints, tmp_path, capsys):
    """vtsched run --video on a saved checkpoint, offline: full, prune with each temporal partitioner and
    parvts; a ratio budget keeps exactly its share of the clip's tokens, counted frame by frame."""
    from vtsched.core.cli import main

    paths, clip = qwen_checkpoints
    cases = [["--policy", "full", "--frames", "4"], ["--policy", "prune", "--partitioner", "temporal", "--fps", "2"],
             ["--policy", "prune", "--partitioner", "vidcom2", "--frames", "6"],
             ["--policy", "parvts", "-p", "drop_layer=1", "--partitioner", "vidcom2", "--frames", "4"]]
    for args in cases:
        out = tmp_path / "result.json"
        code = main(["run", "--model", str(paths[name]), "--video", str(clip), "--question", "what moves?",
                     "--budget", "25%", *args, "--max-new-tokens", "2", "--no-plugins", "--json", str(out)])
        last = capsys.readouterr().out.strip().splitlines()[-1]
        assert code == 0 and last.startswith("ran: policy "), (args, last)
        record = json.loads(out.read_text())
        if args[1] != "full":
            frames = 6 if "6" in args else 4 if "--frames" in args else round(6 / 3 * 2)
            per_frame = 4  # 64x48 resized to 56x56 on the tiny shapes: 2x2 merged tokens a frame
            assert len(record["subject_tokens"]) == round(0.25 * (-(-frames // 2)) * per_frame), (args, record)


def test_prune_with_a_temporal_partitioner_equals_the_shortened_sequence():
    """Through the Python API: prune with temporal (and vidcom2) keeps its tokens' original 3-D position ids,
    so its logits equal transformers on the physically shortened video prompt."""
    from vtsched.core.testing.models import shortened_logits, stream_positions

    model, processor = tiny_qwen(TinyQwenShape(version="2.5"))
    s = scheduler(model, processor)
    video = read_video(write_video(moving_square(3, 7, 60, 60), 5.0), frames=7)
    batch = s.prepare([video], ["what moves?"])
    sample = batch.samples[0]
    for name in ("temporal", "vidcom2"):
        plan = s.plan(batch, s.make_policy("prune"), s.make_partitioner(name), Budget.parse("40%"))
        ours = s.engine.prefill(batch, plan.schedule, plan.partition, use_cache=False, return_hidden=True)
        keep = stream_positions(sample, plan.partition.members(0, "subject"))
        assert ours.index[0].tolist() == keep.tolist()
        torch.testing.assert_close(ours.all_logits[0], shortened_logits(model, sample, keep), atol=1e-6, rtol=0)
