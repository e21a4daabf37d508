"""Pixels to tokens: where each visual token's pixels came from, and how much of it a mask covers.

One module per concern, every name re-exported here (``from vtsched.core.pixels import ...``, the
path adapters, partitioners and plugins use):

- :mod:`~vtsched.core.pixels.boxes`: each token's rectangle of the original image (what an
  adapter states; nothing here guesses a geometry);
- :mod:`~vtsched.core.pixels.coverage`: masks to token coverage, the one selection rule of
  mask-based partitioners, and the partition built from masks;
- :mod:`~vtsched.core.pixels.mask_files`: PNG/NPY masks, read once each (:class:`MaskCache`);
- :mod:`~vtsched.core.pixels.mask_sources`: finding an image's masks (files, folders, JSONL
  data sets, data sets in memory by a registered scheme);
- :mod:`~vtsched.core.pixels.images`: images keyed by content, and as RGB arrays;
- :mod:`~vtsched.core.pixels.video`: video files read with PyAV, frames sampled uniformly or at a rate.
"""

from __future__ import annotations

from vtsched.core.pixels.boxes import TokenBoxes, grid_boxes, processed_window, video_boxes
from vtsched.core.pixels.coverage import (
    BACKGROUND, OBJECTS, check_mask_inputs, coverage_ranking, mask_coverage, mask_groups, partition_from_masks,
    select_by_coverage, token_scores,
)
from vtsched.core.pixels.images import image_digest, rgb_array
from vtsched.core.pixels.mask_files import MASK_CACHE, MASK_SUFFIXES, MaskCache, as_mask, check_mask_size, load_mask
from vtsched.core.pixels.mask_sources import MaskSource, is_scheme_spec, mask_source, register_mask_scheme
from vtsched.core.pixels.video import Video, read_video, sample_indices

__all__ = [
    "TokenBoxes", "grid_boxes", "processed_window", "mask_coverage", "select_by_coverage", "coverage_ranking",
    "token_scores", "mask_groups", "load_mask", "as_mask", "image_digest", "rgb_array", "check_mask_inputs",
    "partition_from_masks", "MASK_SUFFIXES", "OBJECTS", "BACKGROUND", "check_mask_size", "MaskCache", "MASK_CACHE",
    "MaskSource", "mask_source", "register_mask_scheme", "is_scheme_spec", "video_boxes", "Video", "read_video",
    "sample_indices",
]
