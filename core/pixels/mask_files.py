"""Mask files: PNG/NPY masks read as ``(height, width)`` float64 in [0, 1], each file once.

One-line errors for a file of the wrong size or type (:func:`load_mask`), and a cache
(:class:`MaskCache`) so that a mask partitioner, which looks a mask up for every sample of every
batch, decodes a file once per process rather than once per sample.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from vtsched.core.errors import InputError

__all__ = ["MASK_SUFFIXES", "as_mask", "load_mask", "check_mask_size", "MaskCache", "MASK_CACHE"]

MASK_SUFFIXES = (".png", ".npy")


def as_mask(values: Any, what: str = "mask") -> torch.Tensor:
    """A 2-D mask as a float64 tensor in [0, 1]: bool and integer arrays are 1 where nonzero, float
    arrays are soft coverage and must lie in [0, 1]. Anything else is one :class:`InputError` line."""
    import numpy as np

    array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise InputError(f"{what} has shape {tuple(array.shape)}: a mask is 2-D (height, width)")
    if array.dtype == np.bool_ or np.issubdtype(array.dtype, np.integer):
        return torch.from_numpy(array != 0).to(torch.float64)
    if np.issubdtype(array.dtype, np.floating):
        if array.size and not (np.isfinite(array).all() and array.min() >= 0.0 and array.max() <= 1.0):
            raise InputError(f"{what} has float values outside [0, 1]: a soft mask is a coverage fraction")
        return torch.from_numpy(array.astype(np.float64))
    raise InputError(f"{what} has dtype {array.dtype}: a mask is bool, integer (nonzero = inside) or float in [0, 1]")


def load_mask(path: str | Path, image_size: tuple[int, int] | None = None) -> torch.Tensor:
    """A mask file as ``(height, width)`` float64 in [0, 1] (see :func:`as_mask`).

    PNG: one channel (bilevel, grayscale or palette indices), nonzero inside; an RGB PNG is
    refused. NPY: a 2-D bool, integer or float array (loaded without pickle). With ``image_size``
    ``(width, height)`` a mask of another size is refused, naming both sizes.
    """
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise InputError(f"mask file not found: {p}" if not p.exists() else f"mask path is not a file: {p}")
    if p.suffix.lower() == ".npy":
        try:
            array = np.load(p, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"not a NPY mask file: {p} ({reason})") from None
    else:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(p) as image:
                if image.mode not in ("1", "L", "P", "I", "I;16", "F"):
                    raise InputError(f"mask {p} is a {image.mode} image: a mask has one channel "
                                     "(bilevel, grayscale or palette; nonzero = inside)")
                array = np.asarray(image.convert("L") if image.mode == "1" else image)
        except UnidentifiedImageError:
            raise InputError(f"not a mask file (PNG or NPY): {p}") from None
        except OSError as exc:
            raise InputError(f"cannot read mask {p}: {exc}") from None
        if array.dtype.kind == "f":
            array = array != 0  # 32-bit float images: nonzero inside, like the integer modes
    mask = as_mask(array, f"mask {p}")
    if image_size is not None:
        check_mask_size(mask, image_size, f"mask {p}")
    return mask


def check_mask_size(mask: torch.Tensor, image_size: tuple[int, int], what: str = "a mask") -> None:
    """Refuse, in one line naming both sizes, a mask that is not at the ``(width, height)`` image size."""
    if (mask.shape[1], mask.shape[0]) != tuple(image_size):
        raise InputError(f"{what} is {mask.shape[1]}x{mask.shape[0]} pixels, the image "
                         f"{image_size[0]}x{image_size[1]}: a mask is at the original image size")


class MaskCache:
    """Masks read from files, kept by path while the file is unchanged, up to ``max_bytes``.

    A file is read again when its modification time or size changed; the least recently used masks
    are dropped first when the cache is full. The returned tensor is shared between callers: read
    it, do not write to it.
    """

    def __init__(self, max_bytes: int = 256 * 2**20) -> None:
        self.max_bytes = max_bytes
        self._masks: OrderedDict[str, tuple[tuple[int, int], torch.Tensor]] = OrderedDict()
        self._bytes = 0

    def read(self, path: str | Path, image_size: tuple[int, int] | None = None) -> torch.Tensor:
        """:func:`load_mask` of ``path``, from the cache while the file is unchanged."""
        p = Path(path)
        try:
            stat = p.stat()
        except OSError:
            return load_mask(p, image_size)  # it says what is wrong with the path, in one line
        key, stamp = str(p.resolve()), (stat.st_mtime_ns, stat.st_size)
        held = self._masks.get(key)
        if held is not None and held[0] == stamp:
            self._masks.move_to_end(key)
            mask = held[1]
        else:
            mask = load_mask(p)
            self._store(key, stamp, mask)
        if image_size is not None:
            check_mask_size(mask, image_size, f"mask {p}")
        return mask

    def clear(self) -> None:
        self._masks.clear()
        self._bytes = 0

    def _store(self, key: str, stamp: tuple[int, int], mask: torch.Tensor) -> None:
        old = self._masks.pop(key, None)
        if old is not None:
            self._bytes -= _size(old[1])
        self._masks[key] = (stamp, mask)
        self._bytes += _size(mask)
        while self._bytes > self.max_bytes and len(self._masks) > 1:
            _, (_, dropped) = self._masks.popitem(last=False)
            self._bytes -= _size(dropped)


def _size(mask: torch.Tensor) -> int:
    return mask.numel() * mask.element_size()


MASK_CACHE = MaskCache()  # the process's mask files, shared by every mask source
