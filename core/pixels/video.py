"""Video files to frames: a clip read with PyAV, sampled uniformly or at a given rate.

A :class:`Video` is what an adapter that takes video (Qwen2-VL, Qwen2.5-VL) accepts in place of
an image: the sampled RGB frames plus what the model's time positions need (the source frame rate
and which source frames were kept). Reading is separate from the model, so the same frames go to
vtsched and to a reference run of transformers.

Sampling follows qwen-vl-utils (the Qwen models' own reader): ``frames=N`` takes N indices evenly
spaced over the whole clip, first and last frame included (``linspace(0, total - 1, N)``, rounded);
``fps=F`` takes ``round(total / source_fps * F)`` frames the same way (at least one). The sampled
rate transformers derives the temporal spacing from (``VideoMetadata.sampled_fps``) is
``N / total * source_fps``, as here (:attr:`Video.sampled_fps`).

Bad input is refused in one line (:class:`~vtsched.core.errors.InputError`): a file PyAV cannot
open or that has no video stream, a clip with no frames, more frames asked for than it has, both or
neither of ``frames`` and ``fps``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from vtsched.core.errors import InputError

__all__ = ["Video", "read_video", "sample_indices"]


@dataclass(frozen=True, eq=False)
class Video:
    """Sampled frames of one clip.

    Attributes:
        frames: ``(F, H, W, 3)`` uint8 RGB frames, in time order.
        fps: the source clip's frame rate (frames per second).
        indices: the source frame index of each sampled frame.
        total_frames: how many frames the source clip has.
    """

    frames: np.ndarray
    fps: float
    indices: tuple[int, ...]
    total_frames: int

    def __post_init__(self) -> None:
        if self.frames.ndim != 4 or self.frames.shape[-1] != 3 or self.frames.shape[0] == 0:
            raise InputError(f"a video is (frames, height, width, 3) RGB with at least one frame, "
                             f"got {tuple(self.frames.shape)}")
        if len(self.indices) != self.frames.shape[0]:
            raise InputError(f"{self.frames.shape[0]} frames but {len(self.indices)} source indices")

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of a frame, as ``PIL.Image.size`` (what pixel boxes are measured in)."""
        return int(self.frames.shape[2]), int(self.frames.shape[1])

    @property
    def sampled_fps(self) -> float:
        """Sampled frames per second of the clip: ``frames / total_frames * fps``."""
        return self.num_frames / self.total_frames * self.fps

    @property
    def timestamps(self) -> tuple[float, ...]:
        """Seconds into the clip of each sampled frame."""
        return tuple(i / self.fps for i in self.indices)

    @classmethod
    def from_frames(cls, frames: np.ndarray, fps: float) -> Video:
        """All of ``frames`` ``(F, H, W, 3)`` as a clip of rate ``fps`` (nothing sampled away)."""
        frames = np.asarray(frames, dtype=np.uint8)
        return cls(frames, float(fps), tuple(range(frames.shape[0])), int(frames.shape[0]))


def sample_indices(total: int, source_fps: float, *, frames: int | None = None, fps: float | None = None) -> list[int]:
    """Source frame indices to keep: ``frames`` evenly spaced, or enough for ``fps`` frames per second."""
    if (frames is None) == (fps is None):
        raise InputError("give either a frame count or a sampling rate (fps), not both or neither")
    if total <= 0:
        raise InputError("the video has no frames")
    if fps is not None:
        if not fps > 0:
            raise InputError(f"the sampling rate must be positive, got {fps}")
        frames = max(1, round(total / source_fps * fps))
        if frames > total:
            raise InputError(f"{fps} frames per second asks for {frames} frames; the video has {total} "
                             f"at {source_fps:g} fps")
    assert frames is not None
    if frames < 1:
        raise InputError(f"the frame count must be at least 1, got {frames}")
    if frames > total:
        raise InputError(f"{frames} frames asked for; the video has only {total}")
    return np.rint(np.linspace(0, total - 1, frames)).astype(int).tolist()


def read_video(source: str | Path | BinaryIO, *, frames: int | None = None, fps: float | None = None) -> Video:
    """The clip in ``source`` (a path or a binary file object), sampled to ``frames`` frames or at ``fps``.

    Two passes over the file: the first counts the frames (by demuxing, without decoding), the
    second decodes and keeps the sampled ones, so a long clip is never held in memory whole.
    """
    import av

    name = str(source) if isinstance(source, (str, Path)) else "the video"
    container = _open(source, name)
    try:
        if not container.streams.video:
            raise InputError(f"{name} has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        total = sum(1 for packet in container.demux(stream) if packet.size)
    except av.FFmpegError as exc:
        raise InputError(f"cannot read {name}: {exc}") from None
    finally:
        container.close()
    if total == 0:
        raise InputError(f"{name} has no frames")
    if rate is None or float(rate) <= 0:
        raise InputError(f"{name} states no frame rate")
    wanted = sample_indices(total, float(rate), frames=frames, fps=fps)
    kept = _decode(source, name, wanted)
    return Video(np.stack(kept), float(rate), tuple(wanted), total)


def _open(source: str | Path | BinaryIO, name: str) -> Any:
    import av

    if not isinstance(source, (str, Path)):
        source.seek(0)
    try:
        return av.open(str(source) if isinstance(source, Path) else source)
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise InputError(f"cannot read {name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def _decode(source: str | Path | BinaryIO, name: str, wanted: list[int]) -> list[np.ndarray]:
    """RGB arrays of the source frames numbered ``wanted`` (sorted; an index may repeat)."""
    import av

    container = _open(source, name)
    kept: list[np.ndarray] = []
    try:
        position = 0
        for index, frame in enumerate(container.decode(container.streams.video[0])):
            if position == len(wanted):
                break
            if index == wanted[position]:
                array = frame.to_ndarray(format="rgb24")
                while position < len(wanted) and wanted[position] == index:
                    kept.append(array)
                    position += 1
    except av.FFmpegError as exc:
        raise InputError(f"cannot read {name}: decoding failed ({exc})") from None
    finally:
        container.close()
    if len(kept) < len(wanted):
        raise InputError(f"{name}: only {len(kept)} of the {len(wanted)} sampled frames could be decoded")
    return kept
