"""A procedural video QA set: every answer is known because every pixel of every frame is drawn.

Each clip (``FRAMES`` frames of 112x112, 2 frames per second) shows:

- a *subject* (a big shape of one colour) that moves in a straight line, left to right, right to left,
  top to bottom or bottom to top, from one side of the frame to the other;
- a *flash*: a small square in one corner, present in exactly one frame (in the first, middle or last
  third of the clip);
- a *background* that changes colour once, between two frames, and stays.

Questions have single-word answers, tagged ``subject`` or ``non-subject`` and by type (the subject's
direction, colour and shape; the flash's colour and when it appears; the background at the start and at
the end). The generator is a pure function of ``(seed, index, frames)``.

``vtsched eval --data video:SEED:CLIPS[:FRAMES]`` scores it (the ``video`` evaluator of
:mod:`vtsched.core.tools.video_eval`, registered through ``vtsched_register_evaluators``, the hook a
plugin's evaluator uses), on a model whose family takes video (Qwen2-VL, Qwen2.5-VL); a sweep's
``datasets`` take the same spec. No demo video model is shipped
(training one did not fit the hour of a shared 2-core CPU), so on the tiny random checkpoints the
accuracy says nothing: what the set measures there is agreement with ``full``, the KL and the cost.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["QUESTIONS", "VideoSample", "draw_clip", "generate", "parse_spec", "render_clip", "when_of"]

FRAME_SIZE = 112
FPS = 2.0
DEFAULT_FRAMES = 8
COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 90, 220),
    "yellow": (235, 210, 40), "white": (240, 240, 240), "purple": (150, 60, 190),
}
BACKGROUNDS = {"black": (20, 20, 20), "grey": (115, 115, 115), "brown": (120, 75, 35), "teal": (20, 115, 115)}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("right", "left", "down", "up")
CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")
WHEN = ("beginning", "middle", "end")
RADIUS = 18
PATH = (32, 80)  # the subject's centre travels between these coordinates along its axis
MARK_SIZE, MARK_INSET = 12, 3

# question type -> (tag, question text, clip key holding the answer)
QUESTIONS: dict[str, tuple[str, str, str]] = {
    "subject_direction": ("subject", "Which way does the big shape move: left, right, up or down?", "direction"),
    "subject_colour": ("subject", "What colour is the big shape?", "subject_colour"),
    "subject_shape": ("subject", "What shape is the big object?", "shape"),
    "flash_colour": ("non-subject", "What colour is the small square that appears in one frame?", "mark_colour"),
    "flash_when": ("non-subject", "When does the small square appear: beginning, middle or end?", "when"),
    "background_start": ("non-subject", "What colour is the background at the start?", "background_start"),
    "background_end": ("non-subject", "What colour is the background at the end?", "background_end"),
}


@dataclass
class VideoSample:
    id: str
    video: Any  # vtsched.core.pixels.Video
    question: str
    answer: str
    tag: str
    type: str
    clip: dict[str, Any] = field(default_factory=dict)


def draw_clip(rng: np.random.Generator, frames: int) -> dict[str, Any]:
    """Choose a clip: every attribute uniformly; the flash's colour differs from the subject's, the two
    backgrounds differ, the flash's frame lies in the third its ``when`` names, the background changes
    between frames ``change - 1`` and ``change``."""
    if frames < 3:
        raise ValueError(f"a clip needs at least 3 frames (one per third), got {frames}")
    subject = str(rng.choice(list(COLOURS)))
    start = str(rng.choice(list(BACKGROUNDS)))
    when = str(rng.choice(WHEN))
    third = WHEN.index(when)
    flash = int(rng.integers(-(-third * frames // 3), -(-(third + 1) * frames // 3)))
    return {
        "frames": frames, "shape": str(rng.choice(SHAPES)), "subject_colour": subject,
        "direction": str(rng.choice(DIRECTIONS)),
        "mark_colour": str(rng.choice([c for c in COLOURS if c != subject])), "corner": str(rng.choice(CORNERS)),
        "flash_frame": flash, "when": when,
        "background_start": start, "background_end": str(rng.choice([b for b in BACKGROUNDS if b != start])),
        "change": int(rng.integers(1, frames)),
    }


def when_of(frame: int, frames: int) -> str:
    """Which third of ``frames`` frame ``frame`` falls in: ``beginning`` (``3 * frame < frames``), ``middle``, ``end``."""
    return WHEN[min(2, 3 * frame // frames)]


def subject_centre(clip: dict[str, Any], t: int) -> tuple[int, int]:
    """``(x, y)`` of the subject's centre in frame ``t``: along its axis from one end of the path to the other."""
    frames = clip["frames"]
    low, high = PATH
    along = low + round((high - low) * t / (frames - 1))
    along = {"right": along, "down": along, "left": low + high - along, "up": low + high - along}[clip["direction"]]
    middle = FRAME_SIZE // 2
    return (along, middle) if clip["direction"] in ("right", "left") else (middle, along)


def mark_origin(corner: str) -> tuple[int, int]:
    far = FRAME_SIZE - MARK_INSET - MARK_SIZE
    return {"top-left": (MARK_INSET, MARK_INSET), "top-right": (far, MARK_INSET),
            "bottom-left": (MARK_INSET, far), "bottom-right": (far, far)}[corner]


def render_clip(clip: dict[str, Any]) -> np.ndarray:
    """``(frames, 112, 112, 3)`` uint8 RGB frames of ``clip``."""
    from PIL import Image, ImageDraw

    out = np.empty((clip["frames"], FRAME_SIZE, FRAME_SIZE, 3), dtype=np.uint8)
    colour = COLOURS[clip["subject_colour"]]
    for t in range(clip["frames"]):
        background = BACKGROUNDS[clip["background_start" if t < clip["change"] else "background_end"]]
        image = Image.new("RGB", (FRAME_SIZE, FRAME_SIZE), background)
        draw = ImageDraw.Draw(image)
        cx, cy = subject_centre(clip, t)
        r = RADIUS
        if clip["shape"] == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
        elif clip["shape"] == "square":
            s = int(r * 0.85)
            draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=colour)
        else:
            draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=colour)
        if t == clip["flash_frame"]:
            x0, y0 = mark_origin(clip["corner"])
            draw.rectangle((x0, y0, x0 + MARK_SIZE - 1, y0 + MARK_SIZE - 1), fill=COLOURS[clip["mark_colour"]])
        out[t] = np.asarray(image)
    return out


def generate(seed: int, num_clips: int, *, frames: int = DEFAULT_FRAMES,
             types: tuple[str, ...] | None = None) -> Iterator[VideoSample]:
    """Samples of clips ``0..num_clips-1`` of ``seed``: every question type (or ``types``) per clip."""
    from vtsched.core.pixels.video import Video

    for index in range(num_clips):
        clip = draw_clip(np.random.default_rng([seed, index, frames]), frames)
        video = Video.from_frames(render_clip(clip), FPS)
        for kind in types or tuple(QUESTIONS):
            tag, question, key = QUESTIONS[kind]
            yield VideoSample(f"video{seed}-{index}-{kind}", video, question, str(clip[key]), tag, kind, clip)


def parse_spec(spec: str) -> tuple[int, int, int]:
    """``SEED:CLIPS[:FRAMES]`` (what follows ``video:``) as ``(seed, clips, frames)``; one line if malformed."""
    from vtsched.core.errors import InputError

    parts = spec.split(":")
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        seed, clips = int(parts[0]), int(parts[1])
        frames = int(parts[2]) if len(parts) == 3 else DEFAULT_FRAMES
    except ValueError:
        raise InputError(f"video data is 'video:SEED:CLIPS[:FRAMES]', not 'video:{spec}'") from None
    if clips < 1 or frames < 3:
        raise InputError(f"video:{spec}: at least 1 clip and 3 frames (one per third of the clip)")
    return seed, clips, frames
