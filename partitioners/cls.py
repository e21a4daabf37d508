"""``cls``: the subject is the top-R visual tokens by the vision tower's [CLS] attention.

Scores are the head-averaged CLS->patch attention of the encoder layer whose output LLaVA reads
(``vision_feature_layer``), computed by the adapter from that layer's CLS query and patch keys
only. Ties go to the lower token index, so the partition is deterministic.

``budget_mode`` (for images cut into tiles, LLaVA-NeXT): ``global`` (default) keeps the top R
over the whole image span; ``per_tile`` keeps tokens without a tile first (NeXT's newline
tokens), then splits the rest of R over the tiles in proportion to each tile's tokens (largest
remainder, ties to the lower tile), top by score within each tile: the VisionZip/FasterVLM
protocol; ``per_frame`` (for video, Qwen2-VL and Qwen2.5-VL) splits R evenly over the clip's frames
(one temporal step each; the first ``R mod frames`` frames get one more) and keeps the top by score
within each frame, so every frame keeps its share whatever the others score. Samples without tiles
(``per_tile``) or without frames (``per_frame``: a still image) behave as ``global``.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable
from typing import ClassVar, Literal

import torch

from vtsched.core.budget import Budget
from vtsched.core.errors import InputError
from vtsched.core.partition import Partition, top_k_partition
from vtsched.core.policy import Partitioner
from vtsched.core.tokens import PromptBatch, Sample

__all__ = ["ClsAttention", "BudgetMode", "frame_quotas", "part_quotas", "selection_parts", "tile_keep_scores",
           "tile_quotas"]

# how a partitioner spreads R over an image: all at once, per LLaVA-NeXT tile, or per video frame
BudgetMode = Literal["global", "per_tile", "per_frame"]


def tile_quotas(sample: Sample, keep: int) -> tuple[torch.Tensor, list[tuple[torch.Tensor, int]]] | None:
    """The per-tile split of ``keep`` tokens on LLaVA-NeXT (``None`` for an image without tiles).

    Returns ``(untiled, quotas)``: the tokens without a tile (``extras["provenance"][:, 0] < 0``,
    the newline tokens), which come first, and per tile ``(its token indices, its count)``: what is
    left of ``keep`` split in proportion to the tiles' sizes, by largest remainder (ties: lower tile).
    """
    provenance = sample.extras.get("provenance")
    if provenance is None:
        return None
    tile = provenance[:, 0]
    untiled = torch.nonzero(tile < 0).flatten()
    rest = keep - min(keep, untiled.numel())
    tiles, counts = torch.unique(tile[tile >= 0], return_counts=True)
    total = int(counts.sum())
    quota = torch.zeros(len(tiles), dtype=torch.long)
    if rest > 0 and total:
        exact = counts.double() * rest / total
        quota = exact.floor().long()
        order = sorted(range(len(tiles)), key=lambda i: (-(float(exact[i]) - int(quota[i])), i))
        for i in order[: rest - int(quota.sum())]:
            quota[i] += 1
    return untiled, [(torch.nonzero(tile == t).flatten(), q) for t, q in zip(tiles.tolist(), quota.tolist())]


def frame_quotas(sample: Sample, keep: int) -> tuple[torch.Tensor, list[tuple[torch.Tensor, int]]] | None:
    """The even split of ``keep`` tokens over a video's frames (``None`` for a still image), in the
    form of :func:`tile_quotas`: no tokens kept first, then per frame (its token indices, its count),
    ``keep // frames`` each and one more for the first ``keep % frames`` frames."""
    layout = sample.video
    if layout is None:
        return None
    base, extra = divmod(keep, layout.frames)
    quotas = [(layout.tokens_of_frame(f), base + (1 if f < extra else 0)) for f in range(layout.frames)]
    return torch.arange(0), quotas


def part_quotas(sample: Sample, keep: int,
                budget_mode: str) -> tuple[torch.Tensor, list[tuple[torch.Tensor, int]]] | None:
    """The split ``budget_mode`` asks for (:func:`tile_quotas` or :func:`frame_quotas`), ``None`` for one part."""
    if budget_mode == "per_tile":
        return tile_quotas(sample, keep)
    if budget_mode == "per_frame":
        return frame_quotas(sample, keep)
    return None


def selection_parts(sample: Sample, keep: int, budget_mode: str) -> list[tuple[torch.Tensor, int]]:
    """``(token indices, count)`` per part of an image that selects on its own: the whole image
    (``budget_mode="global"``, or an image without tiles or frames), else the tokens kept first (NeXT's
    newline tokens, up to ``keep``) and each tile or frame with its quota (:func:`part_quotas`)."""
    split = part_quotas(sample, keep, budget_mode)
    if split is None:
        return [(torch.arange(sample.num_visual), keep)]
    untiled, quotas = split
    kept = untiled[:keep]
    return [(kept, kept.numel()), *quotas]


def tile_keep_scores(sample: Sample, scores: torch.Tensor, keep: int, budget_mode: str = "per_tile") -> torch.Tensor:
    """Scores whose top ``keep`` are the per-tile (or per-frame) selection of ``scores``
    (:func:`part_quotas`): the untiled tokens first, then each tile's or frame's quota of its own best
    tokens; the selected tokens get ranks above every other token.
    """
    split = part_quotas(sample, keep, budget_mode)
    if split is None:
        return scores
    untiled, quotas = split
    chosen = torch.zeros(scores.numel(), dtype=torch.bool)
    chosen[untiled[:keep]] = True
    for members, q in quotas:
        chosen[members[torch.sort(-scores[members].float(), stable=True).indices[:q]]] = True
    # selected tokens above all others, each group still ordered by score
    return torch.where(chosen, scores.float() + 1e6, scores.float())


def score_partition(batch: PromptBatch, budget: Budget, budget_mode: str,
                    score_of: Callable[[int, Sample], torch.Tensor]) -> Partition:
    """Top-R tokens per sample by ``score_of(b, sample)`` (``budget_mode="per_tile"`` or ``"per_frame"``:
    R split over LLaVA-NeXT's tiles or a video's frames by :func:`tile_keep_scores`); the scores go with
    the partition."""
    scores, ranks, keep = [], [], []
    for b, sample in enumerate(batch.samples):
        score = score_of(b, sample).float()
        k = budget.resolve(sample.num_visual)
        scores.append(score)
        ranks.append(score if budget_mode == "global" else tile_keep_scores(sample, score, k, budget_mode))
        keep.append(k)
    partition = top_k_partition(ranks, keep)
    return Partition(partition.groups, partition.assignment, tuple(s.detach().cpu() for s in scores))


def _cls_scores(b: int, sample: Sample) -> torch.Tensor:
    if sample.cls_scores is None:
        hint = ("use --partitioner attention (the attention each token receives in the vision tower)"
                if "attention_scores" in sample.extras else "use another partitioner")
        raise InputError(f"sample {b}: this model's vision tower has no [CLS] attention; {hint}")
    return sample.cls_scores


@dataclass(frozen=True)
class ClsAttention(Partitioner):
    """Top-R visual tokens by head-averaged [CLS] attention at the vision feature layer."""

    name: ClassVar[str] = "cls"
    budget_mode: BudgetMode = "global"

    def partition(self, batch: PromptBatch, budget: Budget) -> Partition:
        return score_partition(batch, budget, self.budget_mode, _cls_scores)
