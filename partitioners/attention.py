"""``attention``: the subject is the top-R visual tokens by the attention they receive in the vision tower.

For vision towers without a [CLS] token (Qwen2-VL, Qwen2.5-VL), the adapter scores each visual
token (each merged 2x2 unit, never a pre-merge patch) by the attention it receives in the tower's
last full-attention block: averaged over heads, summed over queries, averaged over the token's
patches (``Sample.extras["attention_scores"]``). Ties go to the lower token index.
``budget_mode`` works as for ``cls``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from vtsched.core.budget import Budget
from vtsched.core.errors import InputError
from vtsched.core.partition import Partition
from vtsched.core.policy import Partitioner
from vtsched.core.tokens import PromptBatch, Sample

from .cls import BudgetMode, score_partition


@dataclass(frozen=True)
class AttentionReceived(Partitioner):
    """Top-R visual tokens by the attention they receive in the vision tower's last full-attention block."""

    name: ClassVar[str] = "attention"
    budget_mode: BudgetMode = "global"

    def partition(self, batch: PromptBatch, budget: Budget) -> Partition:
        return score_partition(batch, budget, self.budget_mode, _attention_scores)


def _attention_scores(b: int, sample: Sample) -> torch.Tensor:
    score = sample.extras.get("attention_scores")
    if score is None:
        raise InputError(f"sample {b}: this model's adapter gives no vision-tower attention scores; "
                         "use --partitioner cls")
    return score  # type: ignore[no-any-return]
