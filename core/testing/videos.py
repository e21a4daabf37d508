"""Small videos for tests, written and read back with PyAV, and hypothesis strategies that draw them.

Tests never ship video files: :func:`write_video` encodes frames in memory (FFV1 in Matroska,
lossless, so what is read back is what was drawn), and :func:`tiny_videos` draws clips of a few
frames of a moving square on a noisy background, then samples them through
:func:`~vtsched.core.pixels.video.read_video` (uniformly or at a rate), so the reader is exercised
with every drawn clip.
"""

from __future__ import annotations

import io

import numpy as np
from hypothesis import strategies as st

from vtsched.core.demo.shapes import QUESTION_WORDS, random_image
from vtsched.core.pixels.video import Video, read_video

__all__ = ["write_video", "moving_square", "tiny_videos", "video_prompts"]


def write_video(frames: np.ndarray, fps: float = 4.0) -> io.BytesIO:
    """``frames`` ``(F, H, W, 3)`` uint8 RGB encoded losslessly (FFV1, Matroska) in memory, at ``fps``."""
    import av
    from fractions import Fraction

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska") as container:
        stream = container.add_stream("ffv1", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
        stream.pix_fmt = "bgr0"
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    buffer.seek(0)
    return buffer


def moving_square(seed: int, frames: int, width: int, height: int, *, noise: int = 12) -> np.ndarray:
    """``(frames, height, width, 3)`` uint8: a square crossing a flat background, plus a little noise."""
    rng = np.random.default_rng(seed)
    background, colour = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    side = max(1, min(width, height) // 3)
    clip = np.empty((frames, height, width, 3), dtype=np.int64)
    for t in range(frames):
        clip[t] = background
        x = (t * max(1, width // max(1, frames))) % max(1, width - side + 1)
        y = height // 3
        clip[t, y:y + side, x:x + side] = colour
    clip += rng.integers(-noise, noise + 1, clip.shape)
    return clip.clip(0, 255).astype(np.uint8)


@st.composite
def tiny_videos(draw, *, min_frames: int = 3, max_frames: int = 7, min_side: int = 20, max_side: int = 90) -> Video:
    """A clip written with PyAV and read back, sampled either to a drawn frame count or at a drawn rate,
    keeping ``min_frames..max_frames`` frames (at least 3 by default: two temporal steps, so time ids
    differ between frames; the rate, and so Qwen2.5-VL's spacing of them, varies)."""
    kept = draw(st.integers(min_frames, max_frames), label="frames sampled")
    total = draw(st.integers(kept, max_frames + 3), label="frames in the file")
    width, height = draw(st.integers(min_side, max_side)), draw(st.integers(min_side, max_side))
    fps = draw(st.sampled_from([2.0, 4.0, 5.0, 12.0]), label="file fps")
    buffer = write_video(moving_square(draw(st.integers(0, 10_000)), total, width, height), fps)
    rates = [r for r in (0.5, 1.0, 2.0, 3.0, 6.0) if kept <= max(1, round(total / fps * r)) <= total]
    if rates and draw(st.booleans(), label="sample at a rate"):
        return read_video(buffer, fps=draw(st.sampled_from(rates), label="rate"))
    return read_video(buffer, frames=kept)


@st.composite
def video_prompts(draw, *, min_size: int = 1, max_size: int = 3, stills: bool = True):
    """A batch of (video, question) pairs; with ``stills``, prompts after the first may be still images
    (a batch mixing both is what a family that takes video must prepare)."""
    size = draw(st.integers(min_size, max_size))
    visuals, questions = [], []
    for i in range(size):
        if i and stills and draw(st.booleans(), label="still image"):
            visuals.append(random_image(draw(st.integers(0, 10_000)), draw(st.integers(20, 90)),
                                        draw(st.integers(20, 90))))
        else:
            visuals.append(draw(tiny_videos()))
        words = draw(st.lists(st.sampled_from(QUESTION_WORDS), min_size=1, max_size=6))
        questions.append(" ".join(words) + "?")
    return visuals, questions
