"""``random``: a seeded random subject group (the control every ablation needs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from vtsched.core.budget import Budget
from vtsched.core.partition import Partition, top_k_partition
from vtsched.core.policy import Partitioner
from vtsched.core.tokens import PromptBatch


@dataclass(frozen=True)
class RandomTokens(Partitioner):
    """R visual tokens drawn uniformly at random; the same seed gives the same tokens per image size."""

    name: ClassVar[str] = "random"
    seed: int = 0

    def partition(self, batch: PromptBatch, budget: Budget) -> Partition:
        # One generator per sample, seeded identically: a sample's draw does not depend on its
        # place in the batch, so a batch partitions like its samples one by one.
        scores = [torch.rand(s.num_visual, generator=torch.Generator().manual_seed(self.seed)) for s in batch.samples]
        return top_k_partition(scores, [budget.resolve(s.num_visual) for s in batch.samples])
