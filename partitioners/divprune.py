"""``divprune``: DivPrune (Alvar et al., CVPR 2025), diversity-based selection of visual tokens.

The subject group is the budget's R tokens chosen by greedy max-min diversity: the distance between
two tokens is one minus the cosine similarity of their features; the first token chosen is the one
whose nearest other token is farthest away, and each next one is the token whose distance to the
nearest token already chosen is largest. Every other token is non-subject. Used by ``prune`` this is
DivPrune itself (selection before the LLM); ``parvts`` and the sequential policies can use it as
their split like any partitioner.

Reproduced (from the official code, vbdi/divprune, ``DivPrune`` in ``llava_arch.py``):

- the features: the visual tokens as they enter the LLM, after the projector (``visual_features``;
  on Qwen2-VL/2.5-VL, after the patch merger);
- the distance ``1 - cos`` and both greedy rules, the first pick by the second-smallest distance in
  each column (its nearest neighbour: the smallest is the token itself) and ties broken towards the
  lower index (``argmax``'s first maximum);
- on LLaVA-NeXT, one selection over the whole image's tokens, tiles and newline tokens together,
  as the official LLaVA-1.6 path does (``budget_mode="global"``, the default).

Differs, and why:

- positions: the official code drops the tokens before the LLM and the model numbers the shortened
  sequence 0..n-1; vtsched keeps every kept token's original position id, its rule for every
  pre-LLM method (a kept token keeps where it was in the image).
- counts: the official code keeps ``round(ratio * N)`` tokens; here the count is the budget's.
- a token already chosen is never chosen again: in the official loop a chosen token scores 0 (its
  distance to itself) and could be re-chosen only when every remaining token duplicates a chosen
  one, which would keep fewer than R distinct tokens; here the remaining duplicates are taken.
- distances are computed in float64 (the official code uses the model's dtype), so near-ties break
  the same way on every device.
- ``budget_mode="per_tile"`` (LLaVA-NeXT; not in the official code): the budget is split as the
  ``cls`` partitioner splits it (:func:`~vtsched.partitioners.cls.tile_quotas`: newline tokens
  first, the rest across tiles in proportion to their sizes) and each tile selects on its own;
  ``budget_mode="per_frame"`` (video; not in the official code) splits it evenly over the clip's
  frames (:func:`~vtsched.partitioners.cls.frame_quotas`) and each frame selects on its own.

Scores: a chosen token scores the distance that chose it, every other token its distance to the
nearest chosen token: higher means "adds more diversity".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from vtsched.core.budget import Budget
from vtsched.core.geometry import ModelGeometry
from vtsched.core.partition import NON_SUBJECT, SUBJECT, Partition
from vtsched.core.policy import Partitioner
from vtsched.core.tokens import PromptBatch
from vtsched.partitioners.cls import BudgetMode, selection_parts

__all__ = ["DivPrune", "cosine_distances", "max_min_diverse"]


def cosine_distances(features: torch.Tensor) -> torch.Tensor:
    """``(n, n)`` float64 matrix of ``1 - cos`` between the rows of ``features`` ``(n, d)``."""
    normed = torch.nn.functional.normalize(features.detach().double(), dim=-1)
    return 1.0 - normed @ normed.T


def max_min_diverse(distance: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy max-min selection of ``count`` of the ``n`` tokens of an ``(n, n)`` distance matrix.

    Returns ``(chosen, gains)``: the chosen indices in the order chosen, and for every token the
    distance that chose it (chosen tokens) or its distance to the nearest chosen token (the rest).
    """
    n = distance.shape[0]
    gains = torch.zeros(n, dtype=torch.float64)
    chosen = torch.empty(min(count, n), dtype=torch.long)
    if chosen.numel() == 0:
        return chosen, gains
    if n == 1:
        chosen[0] = 0
        return chosen, gains
    to_nearest = distance.clone()
    to_nearest.fill_diagonal_(torch.inf)
    nearest = to_nearest.min(dim=0).values  # each token's distance to its nearest other token
    first = int(torch.argmax(nearest))
    chosen[0], gains[first] = first, nearest[first]
    to_chosen = distance[first].clone()  # each token's distance to the nearest chosen token
    taken = torch.zeros(n, dtype=torch.bool)
    taken[first] = True
    for i in range(1, chosen.numel()):
        pick = int(torch.argmax(to_chosen.masked_fill(taken, -torch.inf)))
        chosen[i], gains[pick] = pick, to_chosen[pick]
        taken[pick] = True
        to_chosen = torch.minimum(to_chosen, distance[pick])
    gains[~taken] = to_chosen[~taken]
    return chosen, gains


@dataclass(frozen=True)
class DivPrune(Partitioner):
    """The budget's tokens chosen by greedy max-min cosine diversity of the features entering the LLM."""

    name: ClassVar[str] = "divprune"
    budget_mode: BudgetMode = "global"

    def selection_flops(self, num_visual: int, keep: int, geometry: ModelGeometry) -> float:
        """The ``(n, n)`` cosine matrix of the features entering the LLM (width ``hidden_size``): ``2 n^2 d``;
        the greedy's max-min updates are comparisons, not counted."""
        return 2.0 * num_visual * num_visual * geometry.hidden_size

    def partition(self, batch: PromptBatch, budget: Budget) -> Partition:
        assignment, scores = [], []
        for sample in batch.samples:
            keep = budget.resolve(sample.num_visual)
            ids = torch.ones(sample.num_visual, dtype=torch.long)
            gains = torch.zeros(sample.num_visual, dtype=torch.float64)
            for part, count in selection_parts(sample, keep, self.budget_mode):
                chosen, part_gains = max_min_diverse(cosine_distances(sample.visual_features[part]), count)
                ids[part[chosen]] = 0
                gains[part] = part_gains
            assignment.append(ids)
            scores.append(gains.float())
        return Partition((SUBJECT, NON_SUBJECT), tuple(assignment), tuple(scores))
