"""Video on Qwen2-VL and Qwen2.5-VL: frames read with PyAV, the processor's video inputs, the real token
geometry (temporal patch pairs, merged grid per frame, M-RoPE time ids), exactness through the adapter
kit, and the temporal partitioners."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vtsched.core.adapters import Qwen2_5_VLAdapter, Qwen2VLAdapter
from vtsched.core.errors import InputError
from vtsched.core.pixels import read_video
from vtsched.core.testing.families import QwenVideoAdapterConformance, TinyQwenShape, tiny_qwen
from vtsched.core.testing.videos import moving_square, tiny_videos, write_video

from .helpers import scheduler

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
