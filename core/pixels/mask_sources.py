"""Where masks come from: a mask file, a folder of masks, a JSONL data set, or a data set in memory.

A :class:`MaskSource` finds an image's masks by the image's content (:func:`image_digest`), so
whatever file or object an image came from, its mask is found. :func:`mask_source` reads a spec
once per process (the mask partitioner's ``masks`` parameter) and the files behind it through the
shared :data:`~vtsched.core.pixels.mask_files.MASK_CACHE`.

A data set that holds its masks in memory (the procedural set) registers a scheme with
:func:`register_mask_scheme` from its own module, so ``masks=SCHEME:...`` reaches it while no code
here, nor the mask partitioner, knows any data set.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from vtsched.core.errors import InputError
from vtsched.core.pixels.images import image_digest
from vtsched.core.pixels.mask_files import MASK_CACHE, MASK_SUFFIXES, as_mask, check_mask_size

__all__ = ["MaskSource", "mask_source", "register_mask_scheme", "is_scheme_spec", "SchemeReader"]

SchemeReader = Callable[[str, str, str], "MaskSource"]  # (spec after "SCHEME:", field, objects) -> its masks
_SCHEMES: dict[str, SchemeReader] = {}
_SCHEME = re.compile(r"[a-z][a-z0-9_-]+:")  # at least two letters, so a Windows drive is no scheme


class MaskSource:
    """Masks by image digest (``entries``), or one mask for every image (``single``).

    An entry is ``(subject, objects or None)``, each a mask file path or a 2-D array at the
    original image size.
    """

    def __init__(self, where: str, entries: Mapping[str, tuple[Any, Any]] | None = None, single: Any = None) -> None:
        self.where = where
        self.entries = dict(entries or {})
        self.single = single

    def lookup(self, image: Any, image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """``(subject mask, objects mask or None)`` as float64 ``(H, W)``, or None if the image has none."""
        entry = (self.single, None) if self.single is not None else self.entries.get(image_digest(image))
        if entry is None:
            return None
        second = _materialise(entry[1], image_size) if entry[1] is not None else None
        return _materialise(entry[0], image_size), second


def register_mask_scheme(scheme: str, reader: SchemeReader) -> None:
    """Let ``masks=SCHEME:SPEC`` name the masks of a data set held in memory; ``reader(SPEC, field,
    objects)`` returns its :class:`MaskSource`. Called by the data set's own module when imported."""
    if not _SCHEME.fullmatch(scheme + ":"):
        raise ValueError(f"a mask scheme is lower-case letters, digits, '-' or '_', not {scheme!r}")
    _SCHEMES[scheme] = reader


def is_scheme_spec(spec: str) -> bool:
    """Whether ``spec`` is written ``SCHEME:...`` rather than as a path (registered or not yet)."""
    return bool(_SCHEME.match(spec)) and not Path(spec).exists()


def _materialise(mask: Any, image_size: tuple[int, int]) -> torch.Tensor:
    if isinstance(mask, (str, Path)):
        return MASK_CACHE.read(mask, image_size)
    tensor = as_mask(mask)
    check_mask_size(tensor, image_size)
    return tensor


@lru_cache(maxsize=8)
def mask_source(masks: str, field: str = "mask", objects: str = "", images: str = "") -> MaskSource:
    """The masks ``masks`` names: ``SCHEME:SPEC`` (a registered data set in memory), a JSONL data set
    (or a folder holding ``data.jsonl``) whose ``field`` and ``objects`` name mask files, a folder of
    mask files named like the images in ``images``, or one mask file for every image."""
    scheme, _, spec = masks.partition(":")
    if scheme in _SCHEMES and is_scheme_spec(masks):
        return _SCHEMES[scheme](spec, field, objects)
    path = Path(masks)
    if is_scheme_spec(masks):
        known = ", ".join(f"{s}:..." for s in sorted(_SCHEMES)) or "none yet"
        raise InputError(f"mask: no mask source is registered for {scheme!r} (registered: {known}); a data set "
                         "held in memory registers its scheme when its module is imported")
    if path.is_dir() and (path / "data.jsonl").is_file():
        path = path / "data.jsonl"
    if path.suffix == ".jsonl":
        return _jsonl(path, field, objects)
    if objects:
        raise InputError(f"mask: objects={objects!r} names a dataset field; masks={masks!r} is not a dataset")
    if path.is_dir():
        return _folder(path, Path(images) if images else path.parent / "images")
    if path.suffix.lower() in MASK_SUFFIXES:
        return MaskSource(masks, single=MASK_CACHE.read(path))
    raise InputError(f"mask: masks={masks!r} is neither a mask file (PNG/NPY), a folder of masks, a JSONL dataset "
                     "nor a registered SCHEME:SPEC")


def _jsonl(path: Path, field: str, objects: str) -> MaskSource:
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
    return MaskSource(str(path), entries)


def _folder(folder: Path, images: Path) -> MaskSource:
    from vtsched.core.io import load_image

    if not images.is_dir():
        raise InputError(f"mask: the images of mask folder {folder} are looked for in {images}, which is not a "
                         "folder; set images=FOLDER")
    masks = {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in MASK_SUFFIXES}
    entries = {image_digest(load_image(p)): (masks[p.stem], None)
               for p in sorted(images.iterdir()) if p.is_file() and p.stem in masks}
    if not entries:
        raise InputError(f"mask: no image in {images} has a mask of the same name in {folder}")
    return MaskSource(str(folder), entries)
