"""``uniform``: a spatially even subject group over the patch grid.

Tokens are ranked by farthest-point order on the grid (start nearest the centre, then always
the token farthest from all chosen so far, ties to the lower index), so the top R of the
ranking are spread evenly for any R, not only for perfect squares.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

import torch

from vtsched.core.budget import Budget
from vtsched.core.partition import Partition, top_k_partition
from vtsched.core.policy import Partitioner
from vtsched.core.tokens import PromptBatch


@lru_cache(maxsize=16)
def farthest_point_scores(rows: int, cols: int) -> torch.Tensor:
    """``(rows*cols,)`` scores: higher for tokens chosen earlier in farthest-point order."""
    yy, xx = torch.meshgrid(torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64), indexing="ij")
    points = torch.stack((yy.flatten(), xx.flatten()), dim=1)
    n = points.shape[0]
    centre = points.mean(0)
    first = int(torch.argmin(((points - centre) ** 2).sum(1)))
    scores = torch.empty(n, dtype=torch.float32)
    nearest = torch.full((n,), float("inf"), dtype=torch.float64)
    chosen = first
    for rank in range(n):
        scores[chosen] = float(n - rank)
        nearest = torch.minimum(nearest, ((points - points[chosen]) ** 2).sum(1))
        nearest[chosen] = -1.0
        chosen = int(torch.argmax(nearest))  # argmax returns the first maximum: lower index wins
    return scores


@dataclass(frozen=True)
class UniformGrid(Partitioner):
    """R visual tokens spread evenly over the patch grid (no image content used)."""

    name: ClassVar[str] = "uniform"

    def partition(self, batch: PromptBatch, budget: Budget) -> Partition:
        scores = []
        for s in batch.samples:
            rows, cols = s.grid if s.grid is not None else (1, s.num_visual)
            scores.append(farthest_point_scores(rows, cols))
        return top_k_partition(scores, [budget.resolve(s.num_visual) for s in batch.samples])
