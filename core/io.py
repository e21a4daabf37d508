"""Reading user inputs and writing result files, with errors a user can act on."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from vtsched.core.errors import InputError

__all__ = [
    "load_image", "to_rgb", "read_text", "write_atomic", "check_model_path", "umask_mode", "prepare_output",
    "apply_umask", "check_processor_files", "read_config",
]


def load_image(path: str | os.PathLike[str]) -> Any:
    """Open an image file as the RGB picture a viewer shows, or raise :class:`InputError` saying why not.

    The EXIF orientation is applied (a phone photo stored sideways comes out upright) and every mode
    is converted as :func:`to_rgb` says (16-bit scaled, transparency composited on white).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = Path(path)
    if not p.exists():
        raise InputError(f"image not found: {p}")
    if p.is_dir():
        raise InputError(f"image path is a folder, not a file: {p}")
    try:
        with Image.open(p) as image:
            return to_rgb(ImageOps.exif_transpose(image))
    except UnidentifiedImageError:
        raise InputError(f"not an image file (PIL cannot read it): {p}") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read image {p}: {exc}") from None


def to_rgb(image: Any) -> Any:
    """An 8-bit RGB copy of a PIL image, as an image viewer shows it.

    - 16-bit grayscale (``I;16*``, and ``I`` holding 0..65535) is scaled by 255/65535, not clipped
      (PIL's own ``convert`` clips it, which turns a typical 16-bit image white);
      ``I`` values outside 0..65535 are clipped to that range first;
    - floating point (``F``) in 0..1 is scaled by 255, otherwise clipped to 0..255;
    - transparency (``RGBA``, ``LA``, ``PA``, ``P`` with a transparent colour, ...) is composited
      on white, as a viewer shows it on a white page;
    - everything else (``CMYK``, ``P``, ``L``, ``1``, ``YCbCr``, ...) is PIL's conversion.
    """
    import numpy as np
    from PIL import Image

    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image).astype(np.float64)
        eight = np.rint(np.clip(values, 0, 65535) * (255.0 / 65535.0)).astype(np.uint8)
        return Image.fromarray(eight, "L").convert("RGB")
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        scaled = values * 255.0 if values.size and values.min() >= 0.0 and values.max() <= 1.0 else values
        return Image.fromarray(np.rint(np.clip(scaled, 0, 255)).astype(np.uint8), "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def write_atomic(path: str | os.PathLike[str], text: str | bytes) -> Path:
    """Write ``text`` (or bytes) to ``path`` via a temporary file, so a failure never leaves half a file.

    The file gets the mode ``open(path, "w")`` would give it (the user's umask), and a location that
    cannot be written is one line (:class:`InputError`), though commands refuse it before their work
    (:func:`prepare_output`).
    """
    p = Path(path)
    prepare_output(p, "file")
    try:
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    except OSError as exc:
        raise InputError(f"cannot write {p}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(text.encode("utf-8") if isinstance(text, str) else text)
        os.chmod(tmp, umask_mode())  # mkstemp makes 0600; results are shared like any file the user writes
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def prepare_output(path: str | os.PathLike[str], kind: str = "file", what: str | None = None, *,
                   create: bool = True) -> Path:
    """Make sure ``path`` can be written before any work is done, or refuse it in one line.

    ``kind`` is ``"file"`` (its parent folder is created) or ``"folder"`` (the folder itself is);
    with ``create=False`` nothing is created, and the nearest existing folder above it must be
    writable (what a command checks first, so a refused request leaves no empty folders). A file
    where a folder has to be, a folder where the file has to be, or a place the user may not write
    to is an :class:`InputError` naming ``what`` (the option, e.g. ``--out``).
    """
    p = Path(path).expanduser()
    label = f"{what} {path}" if what else str(path)
    folder = p if kind == "folder" else p.parent
    if kind == "file" and p.is_dir():
        raise InputError(f"{label}: is a folder; give a file name")
    if kind == "folder" and p.exists() and not p.is_dir():
        raise InputError(f"{label}: is a file, not a folder; give a folder")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise InputError(f"{label}: {existing} is a file, so nothing can be written under it; choose another path")
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"{label}: cannot create folder {folder}: {exc.strerror or exc}") from None
        existing = folder
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{label}: folder {existing} is not writable")
    if kind == "file" and p.exists() and not os.access(p, os.W_OK):
        raise InputError(f"{label}: file exists and is not writable")
    return p


def apply_umask(paths: Any) -> None:
    """Give files written by other libraries (safetensors writes 0600) the user's umask, as ours have."""
    mode = umask_mode()
    for path in paths:
        if Path(path).is_file():
            os.chmod(path, mode)


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

    A hub id is ``name`` or ``owner/name``; an absolute path, one starting with ``.`` or ``~``, one
    with more than one ``/``, or one whose first part is a local folder (``ckpt/nosuch`` beside a
    ``ckpt/`` folder) can only be a folder. Without this check transformers treats a missing folder
    as a hub id and answers with a message about repo-id characters or the hub's address.
    """
    expanded = os.path.expanduser(path)
    first = expanded.split("/", 1)[0]
    looks_local = (os.path.isabs(expanded) or path.startswith((".", "~")) or path.count("/") > 1
                   or ("/" in path and os.path.isdir(first)))
    if looks_local and not os.path.exists(expanded):
        raise InputError(f"cannot load {path!r}: no such model folder (check the path)")
    if os.path.exists(expanded) and not os.path.isdir(expanded):
        raise InputError(f"model path is a file, not a checkpoint folder: {path}")
    if os.path.isdir(expanded) and not os.path.exists(os.path.join(expanded, "config.json")):
        raise InputError(f"{path!r} has no config.json, so it is not a checkpoint folder "
                         "(save_pretrained writes config.json, the weights and the processor files)")


def check_processor_files(path: str) -> None:
    """Refuse a local checkpoint folder without its tokenizer and processor, before its weights load."""
    expanded = os.path.expanduser(path)
    if not os.path.isdir(expanded):
        return  # a hub id: transformers fetches what it needs
    names = set(os.listdir(expanded))
    if not names & {"tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json"}:
        raise InputError(f"{path!r} has no tokenizer files (tokenizer.json or tokenizer_config.json); save the "
                         "processor into it too: processor.save_pretrained(folder)")
    if not names & {"processor_config.json", "preprocessor_config.json"}:
        raise InputError(f"{path!r} has no image processor file (processor_config.json or "
                         "preprocessor_config.json); save the processor into it too: processor.save_pretrained(folder)")


def read_config(path: str) -> Any:
    """A checkpoint's transformers config, or one line saying why it cannot be read (no weights load)."""
    from transformers import AutoConfig

    check_model_path(path)
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        first_line = str(exc).splitlines()[0]
        if not os.path.isdir(os.path.expanduser(path)) and ("connect" in first_line or "offline" in first_line.lower()):
            raise InputError(f"cannot load {path!r}: it is not a local folder, and the model hub cannot be "
                             "reached (offline?); give the path of a checkpoint folder") from None
        where = "folder" if os.path.isdir(path) else "model id or folder"
        raise InputError(f"cannot load {where} {path!r}: {first_line}") from None
