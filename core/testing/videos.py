"""Small videos for tests, written and read back with PyAV, and hypothesis strategies that draw them.

Tests never ship video files: :func:`write_video` encodes frames in memory (FFV1 in Matroska,
lossless, so what is read back is what was drawn), and :func:`tiny_videos` draws clips of a few
frames of a moving square on a noisy background, then samples them through
:func:`~vtsched.core.pixels.video.read_video` (uniformly or at a rate), so the reader is exercised
with every drawn clip.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
from hypothesis import strategies as st

from vtsched.core.demo.shapes import QUESTION_WORDS, random_image
from vtsched.core.pixels.boxes import video_boxes
from vtsched.core.pixels.video import Video, read_video
from vtsched.core.testing.conformance import PartitionerConformance, PolicyConformance
from vtsched.core.tokens import PromptBatch, Role, Sample, VideoLayout

__all__ = ["write_video", "moving_square", "tiny_videos", "video_prompts", "video_prompt_batches",
           "VideoPartitionerConformance", "VideoPolicyConformance"]


def write_video(frames: np.ndarray, fps: float = 4.0) -> io.BytesIO:
    """``frames`` ``(F, H, W, 3)`` uint8 RGB encoded losslessly (FFV1, Matroska) in memory, at ``fps``."""
    import av
    from fractions import Fraction

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska") as container:
        stream = container.add_stream("ffv1", rate=Fraction(fps).limit_denominator(1000))
        assert isinstance(stream, av.VideoStream)  # what a video codec's stream is (and what mypy needs told)
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


@st.composite
def video_prompt_batches(draw, *, min_size: int = 1, max_size: int = 3, max_frames: int = 4, max_side: int = 3,
                         hidden_size: int = 6, distinct_visual: bool = False) -> PromptBatch:
    """Synthetic video prompt batches for temporal partitioners, no model needed.

    Each sample has its own layout (1..``max_frames`` frames of a grid of 1..``max_side`` rows and
    columns) and features built frame by frame: a frame either repeats the previous one exactly,
    repeats it with a few tokens changed, or is new, and one sample in a few repeats one frame
    throughout, so ties (unchanged tokens, identical frames) are drawn as well as clear differences.
    ``distinct_visual`` makes every sample's token count different.
    """
    size = draw(st.integers(max(min_size, 2 if distinct_visual else 1), max_size))
    layout = st.tuples(st.integers(1, max_frames), st.integers(1, max_side), st.integers(1, max_side))
    layouts = draw(st.lists(layout, min_size=size, max_size=size,
                            unique_by=(lambda g: g[0] * g[1] * g[2]) if distinct_visual else None))
    samples = []
    for frames, rows, cols in layouts:
        gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
        per_frame = rows * cols
        clip = [torch.randn(per_frame, hidden_size, generator=gen, dtype=torch.float64)]
        for _ in range(frames - 1):
            how = draw(st.sampled_from(["same", "some", "new"]), label="next frame")
            frame = clip[-1].clone() if how != "new" else torch.randn(per_frame, hidden_size, generator=gen,
                                                                       dtype=torch.float64)
            if how == "some":
                changed = torch.rand(per_frame, generator=gen) < 0.5
                frame[changed] = torch.randn(int(changed.sum()), hidden_size, generator=gen, dtype=torch.float64)
            clip.append(frame)
        features = torch.cat(clip)
        n = features.shape[0]
        prefix, question = draw(st.integers(1, 3)), draw(st.integers(1, 4))
        roles = torch.tensor([Role.PREFIX] * prefix + [Role.VISUAL] * n + [Role.QUESTION] * question + [Role.SUFFIX],
                             dtype=torch.long)
        ids = torch.randint(10, 60, (roles.numel(),), generator=gen)
        samples.append(Sample(input_ids=ids, roles=roles, visual_features=features,
                              video=VideoLayout(frames, rows, cols, tuple(0.5 * t for t in range(frames))),
                              pixel_boxes=video_boxes((28 * cols, 28 * rows), frames, rows, cols)))
    return PromptBatch(samples)


class VideoPartitionerConformance(PartitionerConformance):
    """The partitioner kit on video: synthetic batches with frame layouts (:func:`video_prompt_batches`)
    and clips a tiny Qwen2-VL / Qwen2.5-VL prepared; for partitioners that compare frames."""

    def prompt_batches(self, *, distinct_visual: bool = False) -> st.SearchStrategy[PromptBatch]:
        return video_prompt_batches(min_size=1, max_size=3, distinct_visual=distinct_visual)

    def model_shapes(self) -> st.SearchStrategy[Any]:
        from vtsched.core.testing.families import tiny_qwen_shapes

        return tiny_qwen_shapes(min_layers=1, max_layers=1)

    def build_tiny_model(self, shape: Any, *, dtype: torch.dtype = torch.float64,
                         attn_implementation: str = "sdpa") -> tuple[torch.nn.Module, Any]:
        from vtsched.core.testing.families import tiny_qwen

        return tiny_qwen(shape, dtype, attn_implementation)  # type: ignore[no-any-return]

    def model_prompts(self) -> st.SearchStrategy[Any]:
        return video_prompts(min_size=1, max_size=2, stills=False)


class VideoPolicyConformance(PolicyConformance):
    """The policy kit with its model checks (batch = one by one, cached = recompute) on video clips a tiny
    Qwen2-VL / Qwen2.5-VL prepared (:func:`video_prompts`, no still images), instead of images on tiny LLaVA."""

    model_examples = 4

    def model_shapes(self) -> st.SearchStrategy[Any]:
        from vtsched.core.testing.families import tiny_qwen_shapes

        return tiny_qwen_shapes(min_layers=self.min_layers, max_layers=self.max_layers)

    def build_tiny_model(self, shape: Any, *, dtype: torch.dtype = torch.float64,
                         attn_implementation: str = "sdpa") -> tuple[torch.nn.Module, Any]:
        from vtsched.core.testing.families import tiny_qwen

        return tiny_qwen(shape, dtype, attn_implementation)  # type: ignore[no-any-return]

    def prompts(self, *, min_size: int = 1, max_size: int = 3) -> st.SearchStrategy[Any]:
        return video_prompts(min_size=min_size, max_size=max_size, stills=False)
