"""Masks cached by what determines them: checkpoint, image content, prompt strategy and prompt.

SAM's image encoder is the expensive part (ViT-H at 1024 px), and an evaluation or a sweep asks
for the same image's masks under many policies and budgets. Entries live in memory (bit-packed,
least recently used dropped past ``max_bytes``) and, with a cache folder, on disk as ``.npz``
files that later runs reuse. A key is a sha256 of its parts; nothing else is trusted.
"""

from __future__ import annotations

import hashlib
import io
from collections import OrderedDict
from pathlib import Path

import numpy as np

from vtsched.core.io import write_atomic

__all__ = ["MaskCache", "cache_key"]


def cache_key(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()


class MaskCache:
    """``key -> (masks (K, H, W) bool, scores (K,) float32)``, in memory and optionally on disk."""

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[np.ndarray, tuple[int, ...], np.ndarray]] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: str, folder: str = "") -> tuple[np.ndarray, np.ndarray] | None:
        entry = self._entries.get(key)
        if entry is None and folder:
            entry = self._read(Path(folder) / f"{key}.npz")
            if entry is not None:
                self._remember(key, entry)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        packed, shape, scores = entry
        return np.unpackbits(packed, count=int(np.prod(shape))).reshape(shape).astype(bool), scores.copy()

    def put(self, key: str, masks: np.ndarray, scores: np.ndarray, folder: str = "") -> None:
        masks = np.asarray(masks, dtype=bool)
        entry = (np.packbits(masks.reshape(-1)), tuple(masks.shape), np.asarray(scores, dtype=np.float32).reshape(-1))
        self._remember(key, entry)
        if folder:
            self._write(Path(folder) / f"{key}.npz", entry)

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def _remember(self, key: str, entry: tuple[np.ndarray, tuple[int, ...], np.ndarray]) -> None:
        if key in self._entries:
            self._bytes -= self._entries.pop(key)[0].nbytes
        self._entries[key] = entry
        self._bytes += entry[0].nbytes
        while self._bytes > self.max_bytes and len(self._entries) > 1:
            _, dropped = self._entries.popitem(last=False)
            self._bytes -= dropped[0].nbytes

    @staticmethod
    def _read(path: Path) -> tuple[np.ndarray, tuple[int, ...], np.ndarray] | None:
        try:
            with np.load(path, allow_pickle=False) as data:
                return data["packed"], tuple(int(v) for v in data["shape"]), data["scores"]
        except (OSError, KeyError, ValueError):
            return None  # absent or unreadable: computed again and rewritten

    @staticmethod
    def _write(path: Path, entry: tuple[np.ndarray, tuple[int, ...], np.ndarray]) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, packed=entry[0], shape=np.array(entry[1], dtype=np.int64), scores=entry[2])
        write_atomic(path, buffer.getvalue())  # whole or not at all, with the user's umask
