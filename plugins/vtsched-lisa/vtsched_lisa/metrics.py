"""gIoU and cIoU, with LISA's conventions (``train_ds.py`` ``validate``, ``intersectionAndUnionGPU``).

Per mask, the foreground intersection and union of the prediction (``logits > 0``) and the truth,
with pixels the truth marks *ignore* (255 in LISA's label maps) left out of both. Then

- **gIoU**: the mean over masks of ``intersection / (union + 1e-5)``, where a mask whose union is
  0 (empty prediction and empty truth) scores 1.0, as LISA's "no-object" rule does;
- **cIoU**: the summed intersection over the summed union (``+ 1e-10``) of the whole split.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = ["intersection_union", "giou_ciou", "mask_iou"]


def intersection_union(pred: np.ndarray, truth: np.ndarray, ignore: np.ndarray | None = None) -> tuple[int, int]:
    """Foreground ``(intersection, union)`` in pixels; ``ignore`` pixels count in neither."""
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in size")
    if ignore is not None:
        keep = ~np.asarray(ignore, dtype=bool)
        pred, truth = pred & keep, truth & keep
    return int((pred & truth).sum()), int((pred | truth).sum())


def mask_iou(intersection: int, union: int) -> float:
    """One mask's IoU as gIoU averages it (1.0 when prediction and truth are both empty)."""
    return 1.0 if union == 0 else intersection / (union + 1e-5)


def giou_ciou(pairs: Iterable[tuple[int, int]]) -> tuple[float, float]:
    """``(gIoU, cIoU)`` of ``(intersection, union)`` pairs; ``(nan, nan)`` for none."""
    pairs = list(pairs)
    if not pairs:
        return float("nan"), float("nan")
    giou = sum(mask_iou(i, u) for i, u in pairs) / len(pairs)
    ciou = sum(i for i, _ in pairs) / (sum(u for _, u in pairs) + 1e-10)
    return float(giou), float(ciou)
