"""Reading user inputs and writing result files, with errors a user can act on."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import InputError

__all__ = ["load_image", "read_text", "write_atomic"]


def load_image(path: str | os.PathLike[str]) -> Any:
    """Open an image file as RGB, or raise :class:`InputError` saying what is wrong with it."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.exists():
        raise InputError(f"image not found: {p}")
    if p.is_dir():
        raise InputError(f"image path is a folder, not a file: {p}")
    try:
        with Image.open(p) as image:
            return image.convert("RGB")
    except UnidentifiedImageError:
        raise InputError(f"not an image file (PIL cannot read it): {p}") from None
    except OSError as exc:
        raise InputError(f"cannot read image {p}: {exc}") from None


def write_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file, so a failure never leaves half a file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def read_text(path: str | os.PathLike[str], what: str = "file") -> str:
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{what} file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {what} file {p}: {exc}") from None
