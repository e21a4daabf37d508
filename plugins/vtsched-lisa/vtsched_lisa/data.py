"""Segmentation datasets: JSONL with image and mask paths, ReasonSeg's polygon JSON, the procedural set.

- **JSONL** (a ``.jsonl`` file, or a folder holding ``data.jsonl``): one record per line with
  ``image`` and ``mask`` (PNG/NPY, at the image's size, nonzero = target; paths relative to the
  file), ``question``, and optionally ``ignore`` (a mask of pixels left out of the metrics), ``id``
  and ``tag``.
- **ReasonSeg** (a folder of ``NAME.jpg`` + ``NAME.json``): each JSON's ``shapes`` are polygons
  labelled ``target`` (1) or ``ignore``, drawn largest first as LISA's ``get_mask_from_json`` does
  (with PIL's polygon fill instead of ``cv2.fillPoly``: edge pixels may differ); the question is
  LISA's val prompt on the first of ``text``: ``"{text} Please output segmentation mask."`` for
  a sentence (``is_sentence``), ``"What is {text} in this image? Please output segmentation
  mask."`` otherwise; tag ``long`` or ``short``.
- **``synthetic:SEED:IMAGES``**: the procedural set, two questions per image with true masks:
  ``"Segment the big shape."`` (tag ``subject``, the subject mask) and ``"Segment the small square
  in the corner."`` (tag ``corner``, the corner mark's mask).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vtsched.core.errors import InputError

__all__ = ["SegItem", "load_seg_items", "reasonseg_mask", "SYNTHETIC_QUESTIONS"]

SYNTHETIC_QUESTIONS = {"subject": "Segment the big shape.", "corner": "Segment the small square in the corner."}


@dataclass
class SegItem:
    id: str
    image: Any  # a path or a PIL image
    question: str
    mask: Any  # a path or an (H, W) array
    tag: str = "all"
    ignore: Any = None

    def load(self) -> tuple[Any, np.ndarray, np.ndarray | None]:
        """``(image, truth (H, W) bool, ignore (H, W) bool or None)``."""
        from vtsched.core.io import load_image
        from vtsched.core.pixels import load_mask

        image = load_image(self.image) if isinstance(self.image, (str, Path)) else self.image
        size = tuple(image.size)

        def read(value: Any) -> np.ndarray:
            if isinstance(value, (str, Path)):
                return load_mask(value, size).numpy() >= 0.5
            array = np.asarray(value)
            if (array.shape[1], array.shape[0]) != size:
                raise InputError(f"{self.id}: a mask is {array.shape[1]}x{array.shape[0]}, the image {size[0]}x{size[1]}")
            return array.astype(bool)

        return image, read(self.mask), None if self.ignore is None else read(self.ignore)


def load_seg_items(spec: str, limit: int | None = None) -> list[SegItem]:
    """The items of a dataset spec (see the module docstring), at most ``limit``."""
    if spec.startswith("synthetic:"):
        items = _synthetic(spec)
    else:
        path = Path(spec)
        if path.is_dir() and (path / "data.jsonl").is_file():
            path = path / "data.jsonl"
        if path.is_file():
            items = _jsonl(path)
        elif path.is_dir():
            items = _reasonseg(path)
        else:
            raise InputError(f"segmentation data not found: {spec} (a JSONL file, a folder with data.jsonl, a "
                             "ReasonSeg folder of .jpg + .json, or synthetic:SEED:IMAGES)")
    if not items:
        raise InputError(f"segmentation data {spec} holds no items")
    return items[:limit] if limit else items


def _synthetic(spec: str) -> list[SegItem]:
    from vtsched.core.demo.synthetic import generate

    try:
        _, seed, count = spec.split(":")
        seed_i, count_i = int(seed), int(count)
    except ValueError:
        raise InputError(f"expected synthetic:SEED:IMAGES, got {spec!r}") from None
    items = []
    for s in generate(seed_i, count_i, types=("subject_colour",)):
        base = s.id.rsplit("-", 1)[0]
        items.append(SegItem(f"{base}-subject", s.image, SYNTHETIC_QUESTIONS["subject"], s.subject_mask, "subject"))
        items.append(SegItem(f"{base}-corner", s.image, SYNTHETIC_QUESTIONS["corner"], s.mark_mask, "corner"))
    return items


def _jsonl(path: Path) -> list[SegItem]:
    items = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except ValueError as exc:
            raise InputError(f"{path}:{number}: not JSON ({exc})") from None
        missing = [k for k in ("image", "mask", "question") if k not in r]
        if missing:
            raise InputError(f"{path}:{number}: a segmentation record needs {', '.join(missing)}")
        ignore = path.parent / r["ignore"] if r.get("ignore") else None
        items.append(SegItem(str(r.get("id", number)), path.parent / r["image"], str(r["question"]),
                             path.parent / r["mask"], str(r.get("tag", "all")), ignore))
    return items


def reasonseg_mask(record: dict[str, Any], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(target, ignore)`` bool masks of a ReasonSeg JSON record for an image of ``size`` (w, h)."""
    from PIL import Image, ImageDraw

    shapes = []
    for shape in record.get("shapes", []):
        label = str(shape.get("label", "")).lower()
        if label not in ("target", "ignore"):
            continue
        points = [(float(x), float(y)) for x, y in shape["points"]]
        xs, ys = np.array([p[0] for p in points]), np.array([p[1] for p in points])
        area = 0.5 * abs(float(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))
        shapes.append((area, 1 if label == "target" else 255, points))
    canvas = Image.new("L", size, 0)
    draw = ImageDraw.Draw(canvas)
    for _, value, points in sorted(shapes, key=lambda s: -s[0]):  # largest first; smaller ones drawn over
        if len(points) >= 3:
            draw.polygon(points, fill=value)
    label = np.asarray(canvas)
    return label == 1, label == 255


def _reasonseg(folder: Path) -> list[SegItem]:
    from PIL import Image

    items = []
    for path in sorted(folder.glob("*.json")):
        image_path = next((path.with_suffix(s) for s in (".jpg", ".jpeg", ".png") if path.with_suffix(s).is_file()),
                          None)
        if image_path is None:
            continue
        try:
            record = json.loads(path.read_text())
        except ValueError as exc:
            raise InputError(f"{path}: not JSON ({exc})") from None
        texts = record.get("text") or []
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            raise InputError(f"{path}: no text (ReasonSeg records hold a list of queries)")
        sentence = bool(record.get("is_sentence"))
        text = str(texts[0]).strip()
        question = (f"{text} Please output segmentation mask." if sentence
                    else f"What is {text} in this image? Please output segmentation mask.")
        with Image.open(image_path) as image:
            size = image.size
        target, ignore = reasonseg_mask(record, size)
        items.append(SegItem(path.stem, image_path, question, target, "long" if sentence else "short",
                             ignore if ignore.any() else None))
    return items
