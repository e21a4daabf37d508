"""``mask``: the subject is what a mask file says it is (with the procedural set's masks: the oracle).

Masks are given by the ``masks`` parameter, one of:

- ``SCHEME:SPEC``: the masks of a data set held in memory, which registers its scheme
  (:func:`~vtsched.core.pixels.mask_sources.register_mask_scheme`): the procedural set's true masks
  are ``synthetic:SEED:IMAGES``, the subject's (``field=mask``) or the corner mark's
  (``field=mark_mask``);
- a JSONL dataset (or a folder holding ``data.jsonl``): each record's ``field`` (default ``mask``)
  names the mask file of its ``image``, both relative to the JSONL file (``vtsched eval`` fills in
  its own ``--data`` when ``masks`` is left unset);
- a folder of mask files (``NAME.png`` / ``NAME.npy``) named like the images they belong to, the
  images in ``images`` (default: the ``images/`` folder beside the mask folder);
- one mask file (PNG/NPY), used for every image (a single ``vtsched run``).

Images are matched by content (:func:`~vtsched.core.pixels.image_digest`), so whatever file or
object an image came from, its mask is found; where masks come from, and reading each file once,
is core's (:mod:`vtsched.core.pixels.mask_sources`), so this module holds only the partition.
Masks are at the original image size and are mapped onto the visual tokens through the adapter's
pixel boxes (``Sample.pixel_boxes``) by :mod:`vtsched.core.pixels`, whose rule picks exactly R
subject tokens: by coverage, ties and shortfall by the model's token score. A second mask
(``objects``: another field of the dataset, e.g. ``mark_mask``) makes three groups: subject, objects
(the other tokens at least half covered by it) and background.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch

from vtsched.core.budget import Budget
from vtsched.core.errors import InputError
from vtsched.core.partition import NON_SUBJECT, SUBJECT, Partition
from vtsched.core.pixels import (
    BACKGROUND, OBJECTS, check_mask_inputs, is_scheme_spec, mask_source, partition_from_masks,
)
from vtsched.core.policy import Partitioner
from vtsched.core.tokens import PromptBatch

__all__ = ["MaskPartitioner"]

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
        if self.masks and not is_scheme_spec(self.masks) and not Path(self.masks).exists():
            raise InputError(f"mask: masks={self.masks!r} does not exist (a mask file, a folder of masks, "
                             "a JSONL dataset or SCHEME:SPEC, e.g. synthetic:SEED:IMAGES)")

    def group_names(self) -> tuple[str, ...]:
        return (SUBJECT, OBJECTS, BACKGROUND) if self.objects else (SUBJECT, NON_SUBJECT)

    def partition(self, batch: PromptBatch, budget: Budget) -> Partition:
        if not self.masks:
            raise InputError("mask: no masks given; set masks=FILE|FOLDER|DATA.jsonl|synthetic:SEED:IMAGES "
                             "(--partitioner-param masks=...)")
        source = mask_source(self.masks, self.field, self.objects, self.images)
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
