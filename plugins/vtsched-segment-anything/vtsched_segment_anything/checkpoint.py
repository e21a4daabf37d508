"""Loading Meta's SAM checkpoints (``sam_vit_h_4b8939.pth`` and friends) safely, variant checked.

A checkpoint is a ``.pth`` state dict in Meta's layout (``image_encoder.*``, ``prompt_encoder.*``,
``mask_decoder.*``). It is read with ``torch.load(weights_only=True)`` (never unpickling code),
its variant is read from its shapes (the image encoder's width and number of blocks), and the
model is built by segment-anything's own registry (``sam_model_registry``) and loaded strictly.

Variants known out of the box are Meta's three; :func:`register_variant` adds another (a tiny SAM
in tests, a custom encoder), with the builder that makes its modules.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from vtsched.core.errors import InputError

__all__ = ["SamVariant", "register_variant", "variants", "detect_variant", "read_state_dict", "load_sam",
           "fingerprint", "ENV_CHECKPOINT", "import_segment_anything"]

ENV_CHECKPOINT = "VTSCHED_SAM_CHECKPOINT"
PATCH_EMBED = "image_encoder.patch_embed.proj.weight"
PARTS = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
_BLOCK = re.compile(r"^image_encoder\.blocks\.(\d+)\.")


@dataclass(frozen=True)
class SamVariant:
    """A SAM image-encoder size and the builder of its (randomly initialised) modules."""

    name: str
    embed_dim: int
    depth: int
    build: Callable[[], torch.nn.Module]

    def describe(self) -> str:
        return f"{self.name} (image encoder {self.embed_dim} wide, {self.depth} blocks)"


_CUSTOM: dict[str, SamVariant] = {}
_ALIASES = {"default": "vit_h"}


def import_segment_anything() -> Any:
    """``segment_anything``, or one line saying how to install it (it needs torchvision too)."""
    try:
        import segment_anything
    except ImportError as exc:
        raise InputError(f"the sam partitioner needs segment-anything and torchvision ({exc}); install the plugin: "
                         "pip install -c constraints.txt -e plugins/vtsched-segment-anything") from None
    return segment_anything


def _meta_variants() -> dict[str, SamVariant]:
    registry = import_segment_anything().sam_model_registry
    sizes = {"vit_h": (1280, 32), "vit_l": (1024, 24), "vit_b": (768, 12)}
    return {name: SamVariant(name, dim, depth, registry[name]) for name, (dim, depth) in sizes.items()}


def register_variant(name: str, embed_dim: int, depth: int, build: Callable[[], torch.nn.Module]) -> SamVariant:
    """Make ``variant=NAME`` (and detection of an encoder ``embed_dim`` wide with ``depth`` blocks)
    build with ``build()``. Idempotent: registering the same variant again returns it; another
    variant under a registered name, or one of Meta's names, is refused."""
    if name in ("vit_h", "vit_l", "vit_b", "default", "auto"):
        raise ValueError(f"{name!r} is a built-in SAM variant name")
    variant = SamVariant(name, embed_dim, depth, build)
    known = _CUSTOM.setdefault(name, variant)
    if known != variant:
        raise ValueError(f"SAM variant {name!r} is already registered as {known.describe()}")
    return known


def variants() -> dict[str, SamVariant]:
    """Every variant by name: Meta's (from segment-anything's registry) and the registered ones."""
    return {**_meta_variants(), **_CUSTOM}


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of a ``.pth`` file, read with ``weights_only=True``; one line if it is not one."""
    if not path.exists():
        raise InputError(f"SAM checkpoint not found: {path}")
    if not path.is_file():
        raise InputError(f"SAM checkpoint is not a file: {path}")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if not (magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80"):  # torch.save's zip, or a legacy pickle
        raise InputError(f"{path} is not a SAM checkpoint: not a PyTorch file (Meta's .pth state dicts are)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ... on foreign files
        text = str(exc).strip()
        if "Weights only load failed" in text:
            raise InputError(f"{path} is not a SAM checkpoint: it pickles Python objects besides tensors, which "
                             "torch.load(weights_only=True) refuses (Meta's checkpoints are plain state dicts)"
                             ) from None
        reason = text.splitlines()[0][:160] if text else type(exc).__name__
        raise InputError(f"{path} is not a SAM checkpoint: torch.load(weights_only=True) cannot read it "
                         f"({reason})") from None
    if isinstance(state, Mapping) and not any(str(k).startswith(PARTS) for k in state):
        for wrapper in ("model", "state_dict"):  # fine-tuning scripts often wrap the state dict
            if isinstance(state.get(wrapper), Mapping):
                state = state[wrapper]
                break
    if not isinstance(state, Mapping) or PATCH_EMBED not in state:
        keys = ", ".join(list(map(str, state))[:3]) if isinstance(state, Mapping) else type(state).__name__
        raise InputError(f"{path} is not a SAM checkpoint: it has no {PATCH_EMBED} (it holds: {keys or 'nothing'})")
    missing = [part for part in PARTS if not any(str(k).startswith(part) for k in state)]
    if missing:
        parts = ", ".join(p + "*" for p in missing)
        raise InputError(f"{path} is not a whole SAM checkpoint: it has no {parts} weights")
    return dict(state)


def detect_variant(state: Mapping[str, torch.Tensor], known: Mapping[str, SamVariant]) -> tuple[int, int, str | None]:
    """``(embed_dim, depth, name)`` of a state dict's image encoder; ``name`` None if no variant matches."""
    embed_dim = int(state[PATCH_EMBED].shape[0])
    blocks = {int(m.group(1)) for k in state if (m := _BLOCK.match(str(k)))}
    depth = max(blocks) + 1 if blocks else 0
    for name, variant in known.items():
        if (variant.embed_dim, variant.depth) == (embed_dim, depth):
            return embed_dim, depth, name
    return embed_dim, depth, None


def load_sam(path: str | Path, variant: str = "auto", device: str = "cpu") -> torch.nn.Module:
    """A SAM model from a checkpoint: built by its variant's builder, weights loaded strictly, in eval
    mode without gradients. ``variant`` ``auto`` takes the variant the shapes say; a named one must
    match them (``vit_h``, ``vit_l``, ``vit_b``, ``default`` = ``vit_h``, or a registered name)."""
    path = Path(path)
    known = variants()
    named = _ALIASES.get(variant, variant)
    if named != "auto" and named not in known:
        raise InputError(f"unknown SAM variant {variant!r}; known: auto, {', '.join(known)}")
    state = read_state_dict(path)
    embed_dim, depth, detected = detect_variant(state, known)
    if detected is None:
        sizes = "; ".join(f"{v.name} {v.embed_dim}/{v.depth}" for v in known.values())
        raise InputError(f"{path}: a SAM image encoder {embed_dim} wide with {depth} blocks is no known variant "
                         f"(width/blocks: {sizes})")
    if named != "auto" and named != detected:
        raise InputError(f"{path} is a {known[detected].describe()} checkpoint, not {named}: "
                         f"pass variant={detected} (or variant=auto)")
    model = known[detected].build()
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of the wrong shape
        detail = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc)[:160])
        raise InputError(f"{path} does not fit SAM {detected}: {detail}") from None
    if result.missing_keys or result.unexpected_keys:
        parts = [f"missing {', '.join(result.missing_keys[:3])}" if result.missing_keys else "",
                 f"unexpected {', '.join(result.unexpected_keys[:3])}" if result.unexpected_keys else ""]
        raise InputError(f"{path} does not fit SAM {detected}: {'; '.join(p for p in parts if p)}")
    return model.eval().requires_grad_(False).to(device)


def fingerprint(path: str | Path) -> str:
    """A short content key of a checkpoint file (size, first and last MiB): what caches are keyed by.
    Read once per file version (path, size, modification time) in a process."""
    p = Path(path)
    stat = p.stat()
    return _fingerprint(str(p.resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=16)
def _fingerprint(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(1 << 20))
        if size > 2 << 20:
            handle.seek(-(1 << 20), os.SEEK_END)
            digest.update(handle.read(1 << 20))
    return digest.hexdigest()[:16]
