"""Images as the mask path sees them: keyed by content, and as RGB arrays.

Masks are found for an image by its content (:func:`image_digest`), whatever file or object it came
from; SAM-style predictors take an ``(H, W, 3)`` uint8 array (:func:`rgb_array`).
"""

from __future__ import annotations

import hashlib
from typing import Any

from vtsched.core.errors import InputError

__all__ = ["image_digest", "rgb_array"]


def image_digest(image: Any) -> str:
    """sha256 of an image's content (mode, size and pixels) or of an array's dtype, shape and bytes:
    how masks are found for an image and cached, whatever file or object it came from."""
    import numpy as np

    digest = hashlib.sha256()
    if hasattr(image, "tobytes") and hasattr(image, "mode"):  # PIL
        digest.update(f"pil:{image.mode}:{image.size}:".encode())
        digest.update(image.tobytes())
    else:
        array = np.ascontiguousarray(np.asarray(image))
        digest.update(f"array:{array.dtype}:{array.shape}:".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def rgb_array(image: Any, who: str = "") -> Any:
    """``(H, W, 3)`` uint8 RGB numpy array of a PIL image or such an array (what SAM's predictor takes);
    anything else is one line naming ``who``."""
    import numpy as np

    if hasattr(image, "convert"):
        from vtsched.core.io import to_rgb

        return np.asarray(to_rgb(image))
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        prefix = f"{who}: " if who else ""
        raise InputError(f"{prefix}an image is a PIL image or an (H, W, 3) uint8 array, not {array.dtype} {array.shape}")
    return array
