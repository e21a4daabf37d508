"""Reading user inputs and writing result files, with errors a user can act on."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from vtsched.core.errors import InputError

__all__ = ["load_image", "read_text", "write_atomic", "check_model_path", "umask_mode"]


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


def write_atomic(path: str | os.PathLike[str], text: str | bytes) -> Path:
    """Write ``text`` (or bytes) to ``path`` via a temporary file, so a failure never leaves half a file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(text.encode("utf-8") if isinstance(text, str) else text)
        os.chmod(tmp, umask_mode())  # mkstemp makes 0600; results are shared like any file the user writes
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


def umask_mode(mode: int = 0o666) -> int:
    """``mode`` as the process umask leaves it: what ``open(path, "w")`` would have created."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def check_model_path(path: str) -> None:
    """Refuse a model path that names a local folder which does not exist, in one plain line.

    A hub id is ``name`` or ``owner/name``; an absolute path, one starting with ``.`` or ``~``, or
    one with more than one ``/`` can only be a folder. Without this check transformers treats a
    missing folder as a hub id and answers with a message about repo-id characters.
    """
    expanded = os.path.expanduser(path)
    looks_local = os.path.isabs(expanded) or path.startswith((".", "~")) or path.count("/") > 1
    if looks_local and not os.path.exists(expanded):
        raise InputError(f"cannot load {path!r}: no such model folder (check the path)")
    if os.path.exists(expanded) and not os.path.isdir(expanded):
        raise InputError(f"model path is a file, not a checkpoint folder: {path}")


def read_config(path: str) -> Any:
    """A checkpoint's transformers config, or one line saying why it cannot be read (no weights load)."""
    from transformers import AutoConfig

    check_model_path(path)
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        where = "folder" if os.path.isdir(path) else "model id or folder"
        raise InputError(f"cannot load {where} {path!r}: {str(exc).splitlines()[0]}") from None
