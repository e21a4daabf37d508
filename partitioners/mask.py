"""``mask``: the subject is what a mask file says it is (with the procedural set's masks: the oracle).

Masks are given by the ``masks`` parameter, one of:

- ``synthetic:SEED:IMAGES``: the procedural set's true masks (:mod:`vtsched.core.demo.synthetic`),
  the subject's (``field=mask``) or the corner mark's (``field=mark_mask``);
- a JSONL dataset (or a folder holding ``data.jsonl``): each record's ``field`` (default ``mask``)
  names the mask file of its ``image``, both relative to the JSONL file (``vtsched eval`` fills in
  its own ``--data`` when ``masks`` is left unset);
- a folder of mask files (``NAME.png`` / ``NAME.npy``) named like the images they belong to, the
  images in ``images`` (default: the ``images/`` folder beside the mask folder);
- one mask file (PNG/NPY), used for every image (a single ``vtsched run``).

Images are matched by content (:func:`~vtsched.core.pixels.image_digest`), so whatever file or
object an image came from, its mask is found. Masks are at the original image size and are mapped
onto the visual tokens through the adapter's pixel boxes (``Sample.pixel_boxes``) by
:mod:`vtsched.core.pixels`, whose rule picks exactly R subject tokens: by coverage, ties and
shortfall by the model's token score. A second mask (``objects``: another field of the dataset,
e.g. ``mark_mask``) makes three groups: subject, objects (the other tokens at least half covered
by it) and background.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from vtsched.core.budget import Budget
from vtsched.core.errors import InputError
from vtsched.core.partition import NON_SUBJECT, SUBJECT, Partition
from vtsched.core.pixels import (
    BACKGROUND, MASK_SUFFIXES, OBJECTS, as_mask, check_mask_inputs, image_digest, load_mask, partition_from_masks,
)
from vtsched.core.policy import Partitioner
from vtsched.core.tokens import PromptBatch

__all__ = ["MaskPartitioner"]

SYNTHETIC_FIELDS = {"mask": "subject_mask", "mark_mask": "mark_mask"}  # dataset field -> SyntheticSample attribute


@dataclass(frozen=True)
class MaskPartitioner(Partitioner):
    """Subject = the R tokens a mask covers most (PNG/NPY files found by image content); ties by token score."""

    name: ClassVar[str] = "mask"
    dataset_param: ClassVar[str] = "masks"  # the parameter `vtsched eval` sets to its --data when unset

    masks: str = ""
    field: str = "mask"
    objects: str = ""
    images: str = ""
    missing: Literal["error", "scores"] = "error"

    def __post_init__(self) -> None:
        if self.missing not in ("error", "scores"):
            raise InputError(f"mask: missing={self.missing!r}; use 'error' or 'scores'")
        if self.masks and not self.masks.startswith("synthetic:") and not Path(self.masks).exists():
            raise InputError(f"mask: masks={self.masks!r} does not exist (a mask file, a folder of masks, "
                             "a JSONL dataset or synthetic:SEED:IMAGES)")

    def group_names(self) -> tuple[str, ...]:
        return (SUBJECT, OBJECTS, BACKGROUND) if self.objects else (SUBJECT, NON_SUBJECT)

    def partition(self, batch: PromptBatch, budget: Budget) -> Partition:
        if not self.masks:
            raise InputError("mask: no masks given; set masks=FILE|FOLDER|DATA.jsonl|synthetic:SEED:IMAGES "
                             "(--partitioner-param masks=...)")
        source = _source(self.masks, self.field, self.objects, self.images)
        subject, other = [], []
        for b, sample in enumerate(batch.samples):
            check_mask_inputs(b, sample, "mask")
            found = source.lookup(sample.image, sample.pixel_boxes.image_size)
            if found is None:
                if self.missing == "error":
                    raise InputError(f"mask: sample {b}: no mask for this image in {self.masks} (matched by image "
                                     "content); set missing=scores to rank such images by the model's score")
                warnings.warn(f"mask: sample {b} has no mask in {self.masks}: its subject is chosen by the "
                              "model's token score alone", stacklevel=2)
                width, height = sample.pixel_boxes.image_size
                found = (torch.zeros(height, width, dtype=torch.float64),
                         torch.zeros(height, width, dtype=torch.float64) if self.objects else None)
            subject.append(found[0])
            other.append(found[1])
        keeps = [budget.resolve(s.num_visual) for s in batch.samples]
        return partition_from_masks(batch.samples, keeps, subject, other if self.objects else None, self.group_names())


# -- where masks come from -----------------------------------------------------------------------
class _Source:
    """Masks by image digest (``entries``), or one mask for every image (``single``)."""

    def __init__(self, where: str, entries: dict[str, tuple[Any, Any]] | None = None, single: Any = None) -> None:
        self.where = where
        self.entries = entries or {}
        self.single = single

    def lookup(self, image: Any, image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """``(subject mask, objects mask or None)`` as float64 ``(H, W)``, or None if the image has none."""
        entry = (self.single, None) if self.single is not None else self.entries.get(image_digest(image))
        if entry is None:
            return None
        second = _materialise(entry[1], image_size) if entry[1] is not None else None
        return _materialise(entry[0], image_size), second


def _materialise(mask: Any, image_size: tuple[int, int]) -> torch.Tensor:
    if isinstance(mask, (str, Path)):
        return load_mask(mask, image_size)
    tensor = as_mask(mask)
    if (tensor.shape[1], tensor.shape[0]) != tuple(image_size):
        raise InputError(f"a mask is {tensor.shape[1]}x{tensor.shape[0]} pixels, the image "
                         f"{image_size[0]}x{image_size[1]}: a mask is at the original image size")
    return tensor


@lru_cache(maxsize=8)
def _source(masks: str, field: str, objects: str, images: str) -> _Source:
    if masks.startswith("synthetic:"):
        return _synthetic(masks, field, objects)
    path = Path(masks)
    if path.is_dir() and (path / "data.jsonl").is_file():
        path = path / "data.jsonl"
    if path.suffix == ".jsonl":
        return _jsonl(path, field, objects)
    if objects:
        raise InputError(f"mask: objects={objects!r} names a dataset field; masks={masks!r} is not a dataset")
    if path.is_dir():
        return _folder(path, Path(images) if images else path.parent / "images")
    if path.suffix.lower() in MASK_SUFFIXES:
        return _Source(masks, single=load_mask(path))
    raise InputError(f"mask: masks={masks!r} is neither a mask file (PNG/NPY), a folder of masks, a JSONL dataset "
                     "nor synthetic:SEED:IMAGES")


def _synthetic(spec: str, field: str, objects: str) -> _Source:
    from vtsched.core.demo.synthetic import generate

    try:
        _, seed, count = spec.split(":")
        samples = generate(int(seed), int(count), types=("subject_colour",))
    except ValueError:
        raise InputError(f"synthetic masks are 'synthetic:SEED:IMAGES', not {spec!r}") from None
    for name in (field, objects):
        if name and name not in SYNTHETIC_FIELDS:
            raise InputError(f"mask: the procedural set has no {name!r} mask; it has {', '.join(SYNTHETIC_FIELDS)}")
    entries = {}
    for sample in samples:
        entries[image_digest(sample.image)] = (getattr(sample, SYNTHETIC_FIELDS[field]),
                                               getattr(sample, SYNTHETIC_FIELDS[objects]) if objects else None)
    return _Source(spec, entries)


def _jsonl(path: Path, field: str, objects: str) -> _Source:
    from vtsched.core.io import load_image, read_text

    entries: dict[str, tuple[Any, Any]] = {}
    seen: set[str] = set()
    for number, line in enumerate(read_text(path, "dataset").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            image = str(record["image"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise InputError(f"{path}:{number}: expected JSON with an 'image' field") from None
        if image in seen or not record.get(field):
            continue
        seen.add(image)
        second = path.parent / str(record[objects]) if objects and record.get(objects) else None
        entries[image_digest(load_image(path.parent / image))] = (path.parent / str(record[field]), second)
    if not entries:
        raise InputError(f"mask: no record of {path} has a {field!r} field naming a mask file")
    return _Source(str(path), entries)


def _folder(folder: Path, images: Path) -> _Source:
    from vtsched.core.io import load_image

    if not images.is_dir():
        raise InputError(f"mask: the images of mask folder {folder} are looked for in {images}, which is not a "
                         "folder; set images=FOLDER")
    masks = {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in MASK_SUFFIXES}
    entries = {image_digest(load_image(p)): (masks[p.stem], None)
               for p in sorted(images.iterdir()) if p.is_file() and p.stem in masks}
    if not entries:
        raise InputError(f"mask: no image in {images} has a mask of the same name in {folder}")
    return _Source(str(folder), entries)
