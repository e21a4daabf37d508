"""``sam``: the subject is the R visual tokens a Segment Anything mask covers most.

SAM is prompted from the model's own token score (:func:`vtsched.core.pixels.token_scores`: the
vision tower's [CLS] attention, or the adapter's score on models without [CLS] such as Qwen2-VL;
with neither, the prompt falls back to the image centre, with a warning). Prompt strategies
(``prompt``):

- ``cls-peak`` (default): ``SamPredictor`` prompted with foreground points at the image positions
  (pixel-box centres) of the ``points`` top-scored tokens; of the three multimask outputs, the one
  with the highest predicted IoU.
- ``box``: ``SamPredictor`` prompted with the bounding box of the top-R tokens' pixel boxes (R:
  the budget), one mask.
- ``auto``: ``SamAutomaticMaskGenerator`` (``points_per_side`` squared prompts); the subject mask
  chosen by ``rule``: ``cls-mass`` (most token-score mass: the sum over tokens of coverage times
  score), ``central`` (the largest mask whose centroid lies in the central half of the image,
  else the one whose centroid is nearest the centre) or ``iou`` (highest predicted IoU).

SAM returns masks at the original image size; :mod:`vtsched.core.pixels` maps them through the
adapter's pixel boxes (``Sample.pixel_boxes``) and picks exactly R subject tokens (by coverage,
ties and shortfall by the token score): an empty mask gives the score partition, a full-image mask
ties every token and the score picks. With ``groups=3`` the partition has three groups: subject,
objects (other tokens at least half covered by the automatic generator's other masks; empty for
the prompted strategies) and background.

Checkpoints are Meta's ``.pth`` files (vit_h / vit_l / vit_b) from ``checkpoint`` or the
``VTSCHED_SAM_CHECKPOINT`` environment variable, loaded with ``torch.load(weights_only=True)``
through segment-anything's registry (:mod:`vtsched_segment_anything.checkpoint`). Masks are cached
per checkpoint, image content and prompt, in memory and under ``cache_dir`` when given, so a sweep
computes each image's masks once. ``spent_flops()`` counts the FLOPs SAM spent (cache hits cost
none), which ``vtsched eval`` reports beside the LLM's.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from vtsched.core.budget import Budget
from vtsched.core.errors import InputError
from vtsched.core.partition import NON_SUBJECT, SUBJECT, Partition
from vtsched.core.pixels import (
    BACKGROUND, OBJECTS, check_mask_inputs, image_digest, mask_coverage, partition_from_masks, rgb_array,
    token_scores,
)
from vtsched.core.policy import Partitioner
from vtsched.core.tokens import PromptBatch

from vtsched_segment_anything.cache import MaskCache, cache_key
from vtsched_segment_anything.checkpoint import ENV_CHECKPOINT, fingerprint, import_segment_anything, load_sam

__all__ = ["SamPartitioner", "MASKS", "clear_caches"]

PROMPTS = ("cls-peak", "box", "auto")
RULES = ("cls-mass", "central", "iou")
MASKS = MaskCache()  # masks of every SAM partitioner in this process, by checkpoint, image and prompt
FEATURES_KEPT = 16  # image embeddings kept per loaded model (a prompt change on a seen image skips the encoder)


@dataclass(frozen=True)
class SamPartitioner(Partitioner):
    """Subject = the R tokens a SAM mask covers most (prompted by the model's token scores); ties by score."""

    name: ClassVar[str] = "sam"

    checkpoint: str = ""
    variant: str = "auto"
    prompt: Literal["cls-peak", "box", "auto"] = "cls-peak"
    points: int = 1
    rule: Literal["cls-mass", "central", "iou"] = "cls-mass"
    points_per_side: int = 32
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    groups: int = 2
    device: str = "cpu"
    cache_dir: str = ""

    def __post_init__(self) -> None:
        if self.prompt not in PROMPTS:
            raise InputError(f"sam: prompt={self.prompt!r}; use one of {', '.join(PROMPTS)}")
        if self.rule not in RULES:
            raise InputError(f"sam: rule={self.rule!r}; use one of {', '.join(RULES)}")
        if self.groups not in (2, 3):
            raise InputError(f"sam: groups={self.groups}; use 2 (subject, non_subject) or 3 (subject, objects, "
                             "background)")
        if self.points < 1 or self.points_per_side < 1:
            raise InputError("sam: points and points_per_side must be at least 1")
        if self.checkpoint and not Path(self.checkpoint).is_file():
            raise InputError(f"SAM checkpoint not found: {self.checkpoint}" if not Path(self.checkpoint).exists()
                             else f"SAM checkpoint is not a file: {self.checkpoint}")
        object.__setattr__(self, "_spent", [0.0])  # FLOPs SAM spent for this instance (not a parameter)

    def group_names(self) -> tuple[str, ...]:
        return (SUBJECT, OBJECTS, BACKGROUND) if self.groups == 3 else (SUBJECT, NON_SUBJECT)

    def spent_flops(self) -> float:
        """FLOPs SAM has spent for this partitioner so far (image encoder and mask decoder; cache hits: 0)."""
        return float(self._spent[0])  # type: ignore[attr-defined]

    # -- partitioning ---------------------------------------------------------------------------
    def partition(self, batch: PromptBatch, budget: Budget) -> Partition:
        path = self._checkpoint_path()
        model_key = cache_key(fingerprint(path), self.variant)
        keeps = [budget.resolve(s.num_visual) for s in batch.samples]
        subject: list[torch.Tensor] = []
        other: list[torch.Tensor | None] = []
        for b, sample in enumerate(batch.samples):
            check_mask_inputs(b, sample, "sam")
            scores, source = token_scores(sample)
            if source == "none":
                warnings.warn("sam: the adapter gives no token score ([CLS] or its own): prompting at the image "
                              "centre, ties by token index", stacklevel=2)
            pixels = rgb_array(sample.image, "sam")
            digest = image_digest(pixels)
            if self.prompt == "auto":
                masks, ious = self._cached(model_key, path, (digest, "auto", self.points_per_side,
                                                             self.pred_iou_thresh, self.stability_score_thresh),
                                           lambda sam, pixels=pixels: sam.generate(pixels, self))
                chosen = _choose(masks, ious, self.rule, scores, sample.pixel_boxes)
                subject.append(_float(masks[chosen]) if chosen is not None else _empty(pixels))
                rest = [m for i, m in enumerate(masks) if i != chosen]
                other.append(_float(np.logical_or.reduce(rest)) if rest else None)
            else:
                prompt = self._prompt(sample.pixel_boxes, scores, keeps[b])
                masks, _ = self._cached(model_key, path, (digest, self.prompt, prompt),
                                        lambda sam, pixels=pixels, digest=digest, prompt=prompt:
                                        sam.predict(pixels, digest, self.prompt, prompt))
                subject.append(_float(masks[0]))
                other.append(None)
        return partition_from_masks(batch.samples, keeps, subject, other if self.groups == 3 else None,
                                    self.group_names())

    def _checkpoint_path(self) -> Path:
        path = self.checkpoint or os.environ.get(ENV_CHECKPOINT, "")
        if not path:
            raise InputError("sam: no checkpoint; pass --partitioner-param checkpoint=PATH (Meta's "
                             "sam_vit_h_4b8939.pth, sam_vit_l_0b3195.pth or sam_vit_b_01ec64.pth) or set "
                             f"{ENV_CHECKPOINT}")
        p = Path(path)
        if not p.is_file():
            raise InputError(f"SAM checkpoint not found: {p}" if not p.exists()
                             else f"SAM checkpoint is not a file: {p}")
        return p

    def _prompt(self, boxes: Any, scores: torch.Tensor | None, keep: int) -> tuple[tuple[float, ...], ...]:
        """Points ``((x, y), ...)`` for ``cls-peak`` or one box ``((x0, y0, x1, y1),)`` for ``box``, in pixels."""
        width, height = boxes.image_size
        b = boxes.boxes.to(torch.float64)
        cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
        inside = boxes.has_pixels & (cx >= 0) & (cx < width) & (cy >= 0) & (cy < height)
        candidates = torch.nonzero(inside).flatten().tolist()
        if scores is None or not candidates:
            if self.prompt == "box":
                return ((width / 4, height / 4, 3 * width / 4, 3 * height / 4),)
            return ((width / 2, height / 2),)
        values = scores.tolist()
        ranked = sorted(candidates, key=lambda i: (-_finite(values[i]), i))
        if self.prompt == "cls-peak":
            return tuple((round(float(cx[i]), 2), round(float(cy[i]), 2)) for i in ranked[: self.points])
        top = torch.tensor(ranked[: max(1, keep)], dtype=torch.long)
        x0, y0 = max(0.0, float(b[top, 0].min())), max(0.0, float(b[top, 1].min()))
        x1, y1 = min(float(width), float(b[top, 2].max())), min(float(height), float(b[top, 3].max()))
        return ((round(x0, 2), round(y0, 2), round(x1, 2), round(y1, 2)),)

    def _cached(self, model_key: str, path: Path, key: tuple[Any, ...], compute: Any) -> tuple[np.ndarray, np.ndarray]:
        full = cache_key(model_key, *key)
        hit = MASKS.get(full, self.cache_dir)
        if hit is not None:
            return hit
        sam = _loaded(path, self.variant, self.device, model_key)
        before = sam.spent
        masks, scores = compute(sam)
        self._spent[0] += sam.spent - before  # type: ignore[attr-defined]
        MASKS.put(full, masks, scores, self.cache_dir)
        return np.asarray(masks, dtype=bool), np.asarray(scores, dtype=np.float32)


class _Sam:
    """A loaded SAM, its predictor, the image embeddings it computed last (by image digest) and the
    FLOPs it spent.

    FLOPs are counted by torch's ``FlopCounterMode`` the first time a call of each shape runs (the
    encoder always sees one padded square; a decoder call depends only on its prompt count; the
    automatic generator on its grid and the image size) and reused after, so counting does not slow
    every call down.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.predictor = import_segment_anything().SamPredictor(model)
        self.features: OrderedDict[str, tuple[torch.Tensor, tuple[int, int], tuple[int, int]]] = OrderedDict()
        self.flops_of: dict[tuple[Any, ...], float] = {}
        self.spent = 0.0

    def _counted(self, shape: tuple[Any, ...], call: Any) -> Any:
        """``call()``, adding its FLOPs to ``spent`` (measured once per call shape)."""
        if shape in self.flops_of:
            out = call()
        else:
            from torch.utils.flop_counter import FlopCounterMode

            with FlopCounterMode(display=False) as counter:
                out = call()
            self.flops_of[shape] = float(counter.get_total_flops())
        self.spent += self.flops_of[shape]
        return out

    def _set_image(self, pixels: np.ndarray, digest: str) -> None:
        p = self.predictor
        if digest in self.features:
            p.reset_image()
            p.features, p.original_size, p.input_size = self.features[digest]
            p.is_image_set = True
            self.features.move_to_end(digest)
            return
        self._counted(("encode",), lambda: p.set_image(pixels))
        self.features[digest] = (p.features, p.original_size, p.input_size)
        while len(self.features) > FEATURES_KEPT:
            self.features.popitem(last=False)

    @torch.inference_mode()
    def predict(self, pixels: np.ndarray, digest: str, kind: str, prompt: tuple[tuple[float, ...], ...]):
        """The mask a point or box prompt gives: ``(1, H, W)`` bool and its predicted IoU."""
        self._set_image(pixels, digest)
        if kind == "box":
            masks, iou, _ = self._counted(("box",), lambda: self.predictor.predict(
                box=np.array(prompt[0], dtype=np.float32), multimask_output=False))
        else:
            coords = np.array(prompt, dtype=np.float32)
            masks, iou, _ = self._counted(("points", len(coords)), lambda: self.predictor.predict(
                point_coords=coords, point_labels=np.ones(len(coords)), multimask_output=True))
        best = int(np.argmax(iou))  # the first of equal predictions
        return masks[best : best + 1], iou[best : best + 1]

    @torch.inference_mode()
    def generate(self, pixels: np.ndarray, part: SamPartitioner):
        """Every mask of the automatic generator: ``(K, H, W)`` bool and predicted IoUs, in its order."""
        generator = import_segment_anything().SamAutomaticMaskGenerator(
            self.model, points_per_side=part.points_per_side, pred_iou_thresh=part.pred_iou_thresh,
            stability_score_thresh=part.stability_score_thresh, output_mode="binary_mask")
        records = self._counted(("auto", part.points_per_side, pixels.shape),
                                lambda: generator.generate(pixels))
        if not records:
            return np.zeros((0, *pixels.shape[:2]), dtype=bool), np.zeros(0, dtype=np.float32)
        return (np.stack([r["segmentation"] for r in records]).astype(bool),
                np.array([r["predicted_iou"] for r in records], dtype=np.float32))


_LOADED: dict[tuple[str, str, str], _Sam] = {}  # one model at a time: a ViT-H is 2.5 GB


def _loaded(path: Path, variant: str, device: str, model_key: str) -> _Sam:
    key = (model_key, variant, device)
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = _Sam(load_sam(path, variant, device))
    return _LOADED[key]


def clear_caches() -> None:
    """Forget loaded models, image embeddings and in-memory masks (the disk cache stays)."""
    _LOADED.clear()
    MASKS.clear()


def _choose(masks: np.ndarray, ious: np.ndarray, rule: str, scores: torch.Tensor | None, boxes: Any) -> int | None:
    """Index of the subject among the automatic generator's masks under ``rule`` (None if there are none)."""
    if len(masks) == 0:
        return None
    if rule == "iou":
        return int(np.argmax(ious))
    if rule == "cls-mass":
        weight = scores.to(torch.float64) if scores is not None else torch.ones(boxes.num_visual, dtype=torch.float64)
        mass = [float((mask_coverage(torch.from_numpy(m), boxes) * weight).sum()) for m in masks]
        return int(np.argmax(mass))
    height, width = masks.shape[1:]
    areas = masks.reshape(len(masks), -1).sum(1)
    ys, xs = np.arange(height) + 0.5, np.arange(width) + 0.5
    cy = (masks.sum(2) * ys).sum(1) / np.maximum(areas, 1)
    cx = (masks.sum(1) * xs).sum(1) / np.maximum(areas, 1)
    central = (np.abs(cx - width / 2) <= width / 4) & (np.abs(cy - height / 2) <= height / 4) & (areas > 0)
    if central.any():
        return int(np.argmax(np.where(central, areas, -1)))
    return int(np.argmin((cx - width / 2) ** 2 + (cy - height / 2) ** 2))



def _float(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(mask, dtype=np.float64))


def _empty(pixels: np.ndarray) -> torch.Tensor:
    return torch.zeros(pixels.shape[:2], dtype=torch.float64)


def _finite(value: float) -> float:
    return value if np.isfinite(value) else -np.inf
