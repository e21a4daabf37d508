"""A procedural subject/background VQA set: every answer is known because every pixel is drawn.

Each image has one large *subject* (shape, colour, position) and peripheral details: a small
square mark in one corner, a background colour and a background pattern. Questions have
single-word answers and are tagged ``subject`` or ``non-subject`` and by type. The generator is a
pure function of ``(seed, index)``: the same seed always gives the same samples, whatever their
number. The true subject mask of each image comes with it, and the mask of its corner mark
(:func:`mark_mask`; exported as ``marks/`` and the ``mark_mask`` field), so a partition can be
scored against, or built from, the truth.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from vtsched.core.pixels.mask_sources import MaskSource, register_mask_scheme

__all__ = [
    "CORNERS",
    "MARK_SIZE",
    "MASK_FIELDS",
    "POSITIONS",
    "QUESTIONS",
    "SHAPES",
    "SUBJECT_COLOURS",
    "SyntheticSample",
    "draw_scene",
    "export",
    "generate",
    "mark_mask",
    "mark_origin",
    "mask_source",
    "render",
    "scene_rng",
]

IMAGE_SIZE = 112
SUBJECT_COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 90, 220),
    "yellow": (235, 210, 40), "white": (240, 240, 240), "purple": (150, 60, 190),
}
BACKGROUNDS = {"black": (20, 20, 20), "grey": (115, 115, 115), "brown": (120, 75, 35), "teal": (20, 115, 115)}
SHAPES = ("circle", "square", "triangle", "cross")
POSITIONS = {"left": (36, 56), "right": (76, 56), "top": (56, 36), "bottom": (56, 76), "center": (56, 56)}
CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")
PATTERNS = ("plain", "striped")
SUBJECT_RADIUS = 20
MARK_SIZE = 12
MARK_INSET = 3

# question type -> (tag, question text, scene key holding the answer)
QUESTIONS: dict[str, tuple[str, str, str]] = {
    "subject_colour": ("subject", "What colour is the big shape?", "subject_colour"),
    "subject_shape": ("subject", "What shape is the big object?", "shape"),
    "subject_position": ("subject", "Where is the big shape?", "position"),
    "background_colour": ("non-subject", "What colour is the background?", "background"),
    "background_pattern": ("non-subject", "Is the background plain or striped?", "pattern"),
    "mark_colour": ("non-subject", "What colour is the small square in the corner?", "mark_colour"),
    "mark_corner": ("non-subject", "Which corner has the small square?", "corner"),
}


@dataclass
class SyntheticSample:
    id: str
    image: Any  # PIL image
    question: str
    answer: str
    tag: str
    type: str
    scene: dict[str, str] = field(default_factory=dict)
    subject_mask: np.ndarray | None = None
    mark_mask: np.ndarray | None = None

    def record(self, image_path: str) -> dict[str, Any]:
        return {"id": self.id, "image": image_path, "question": self.question, "answer": self.answer,
                "tag": self.tag, "type": self.type, "scene": self.scene}


def draw_scene(rng: np.random.Generator) -> dict[str, str]:
    """Choose a scene: every attribute uniformly, the mark's colour different from the subject's."""
    subject_colour = str(rng.choice(list(SUBJECT_COLOURS)))
    mark_colour = str(rng.choice([c for c in SUBJECT_COLOURS if c != subject_colour]))
    return {
        "shape": str(rng.choice(SHAPES)), "subject_colour": subject_colour,
        "position": str(rng.choice(list(POSITIONS))), "background": str(rng.choice(list(BACKGROUNDS))),
        "pattern": str(rng.choice(PATTERNS)), "mark_colour": mark_colour, "corner": str(rng.choice(CORNERS)),
    }


def _shape_polygon(shape: str, cx: int, cy: int, r: int) -> list[tuple[float, float]] | None:
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "cross":
        w = r // 3
        return [(cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w), (cx + r, cy + w),
                (cx + w, cy + w), (cx + w, cy + r), (cx - w, cy + r), (cx - w, cy + w), (cx - r, cy + w),
                (cx - r, cy - w), (cx - w, cy - w)]
    return None


def render(scene: dict[str, str]) -> tuple[Any, np.ndarray]:
    """The image of a scene (PIL, RGB, 112x112) and its subject mask ``(H, W)`` bool."""
    from PIL import Image, ImageDraw

    size = IMAGE_SIZE
    background = BACKGROUNDS[scene["background"]]
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    if scene["pattern"] == "striped":
        stripe = _stripe_colour(background)
        for y in range(0, size, 8):
            draw.rectangle((0, y, size - 1, y + 2), fill=stripe)
    mask_image = Image.new("L", (size, size), 0)
    mask_draw = ImageDraw.Draw(mask_image)
    cx, cy = POSITIONS[scene["position"]]
    r = SUBJECT_RADIUS
    colour = SUBJECT_COLOURS[scene["subject_colour"]]
    polygon = _shape_polygon(scene["shape"], cx, cy, r)
    for d, fill in ((draw, colour), (mask_draw, 255)):
        if scene["shape"] == "circle":
            d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif scene["shape"] == "square":
            s = int(r * 0.85)
            d.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
        else:
            assert polygon is not None
            d.polygon(polygon, fill=fill)
    x0, y0 = mark_origin(scene["corner"])
    draw.rectangle((x0, y0, x0 + MARK_SIZE - 1, y0 + MARK_SIZE - 1), fill=SUBJECT_COLOURS[scene["mark_colour"]])
    return image, np.asarray(mask_image) > 0


def mark_mask(scene: dict[str, str]) -> np.ndarray:
    """The corner mark's mask ``(H, W)`` bool: exactly the pixels :func:`render` paints with the mark."""
    mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    x0, y0 = mark_origin(scene["corner"])
    mask[y0 : y0 + MARK_SIZE, x0 : x0 + MARK_SIZE] = True
    return mask


def _stripe_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Stripes a clearly different shade of the background: darker on light, lighter on dark."""
    if sum(background) / 3 > 60:
        return tuple(int(c * 0.55) for c in background)  # type: ignore[return-value]
    return tuple(min(255, c + 70) for c in background)  # type: ignore[return-value]


def mark_origin(corner: str) -> tuple[int, int]:
    """``(x, y)`` of the top-left pixel of the corner mark in ``corner`` (``"top-left"``, ...)."""
    far = IMAGE_SIZE - MARK_INSET - MARK_SIZE
    return {"top-left": (MARK_INSET, MARK_INSET), "top-right": (far, MARK_INSET),
            "bottom-left": (MARK_INSET, far), "bottom-right": (far, far)}[corner]




def scene_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


def generate(seed: int, num_images: int, *, types: tuple[str, ...] | None = None,
             one_question_per_image: bool = False) -> Iterator[SyntheticSample]:
    """Samples of images ``0..num_images-1`` of ``seed``: every question type per image, or one
    drawn type per image with ``one_question_per_image`` (for training)."""
    types = tuple(QUESTIONS) if types is None else types
    for index in range(num_images):
        rng = scene_rng(seed, index)
        scene = draw_scene(rng)
        image, mask = render(scene)
        chosen = (str(rng.choice(types)),) if one_question_per_image else types
        for qtype in chosen:
            tag, question, key = QUESTIONS[qtype]
            yield SyntheticSample(f"s{seed}-{index}-{qtype}", image, question, scene[key], tag, qtype,
                                  dict(scene), mask, mark_mask(scene))


def export(samples: Iterator[SyntheticSample], folder: str | Path) -> Path:
    """Write ``data.jsonl``, ``images/``, ``masks/`` (subject masks, the ``mask`` field) and ``marks/``
    (corner-mark masks, the ``mark_mask`` field): the format ``vtsched eval`` reads."""
    from PIL import Image
    from vtsched.core.io import write_atomic

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    lines, written = [], set()
    for sample in samples:
        image_id = sample.id.rsplit("-", 1)[0]
        image_path = f"images/{image_id}.png"
        if image_id not in written:
            sample.image.save(folder / image_path)
            if sample.subject_mask is not None:
                Image.fromarray(sample.subject_mask.astype(np.uint8) * 255).save(folder / f"masks/{image_id}.png")
            if sample.mark_mask is not None:
                (folder / "marks").mkdir(exist_ok=True)
                Image.fromarray(sample.mark_mask.astype(np.uint8) * 255).save(folder / f"marks/{image_id}.png")
            written.add(image_id)
        record = sample.record(image_path)
        record["mask"] = f"masks/{image_id}.png"
        if sample.mark_mask is not None:
            record["mark_mask"] = f"marks/{image_id}.png"
        lines.append(json.dumps(record))
    return write_atomic(folder / "data.jsonl", "\n".join(lines) + "\n")


MASK_FIELDS = {"mask": "subject_mask", "mark_mask": "mark_mask"}  # data set field -> SyntheticSample attribute


def mask_source(spec: str, field: str = "mask", objects: str = "") -> MaskSource:
    """The true masks of the set ``SEED:IMAGES`` generates, by image content: what the mask
    partitioner reads for ``masks=synthetic:SEED:IMAGES`` (the subject's with ``field=mask``, the
    corner mark's with ``field=mark_mask``), the same fields :func:`export` writes. Registered below
    as the ``synthetic`` mask scheme, so the partitioner needs no knowledge of this set."""
    from vtsched.core.errors import InputError
    from vtsched.core.pixels.images import image_digest

    try:
        seed, count = spec.split(":")
        samples = generate(int(seed), int(count), types=("subject_colour",))
    except ValueError:
        raise InputError(f"synthetic masks are 'synthetic:SEED:IMAGES', not 'synthetic:{spec}'") from None
    for name in (field, objects):
        if name and name not in MASK_FIELDS:
            raise InputError(f"mask: the procedural set has no {name!r} mask; it has {', '.join(MASK_FIELDS)}")
    entries = {image_digest(sample.image): (getattr(sample, MASK_FIELDS[field]),
                                            getattr(sample, MASK_FIELDS[objects]) if objects else None)
               for sample in samples}
    return MaskSource(f"synthetic:{spec}", entries)


register_mask_scheme("synthetic", mask_source)
