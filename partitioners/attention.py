"""``attention``: the subject is the top-R visual tokens by the attention they receive in the vision tower.

For vision towers without a [CLS] token (Qwen2-VL, Qwen2.5-VL), the adapter scores each visual
token (each merged 2x2 unit, never a pre-merge patch) by the attention it receives in the tower's
last full-attention block: averaged over heads, summed over queries, averaged over the token's
patches (``Sample.extras["attention_scores"]``). Ties go to the lower token index.
``budget_mode`` works as for ``cls``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from vtsched.core.budget import Budget
from vtsched.core.errors import InputError
from vtsched.core.partition import Partition, top_k_partition
from vtsched.core.policy import Partitioner
from vtsched.core.tokens import PromptBatch

from .cls import tile_keep_scores


@dataclass(frozen=True)
class AttentionReceived(Partitioner):
    """Top-R visual tokens by the attention they receive in the vision tower's last full-attention block."""

    name: ClassVar[str] = "attention"
    budget_mode: Literal["global", "per_tile"] = "global"

    def partition(self, batch: PromptBatch, budget: Budget) -> Partition:
        scores, ranks, keep = [], [], []
        for b, sample in enumerate(batch.samples):
            score = sample.extras.get("attention_scores")
            if score is None:
                raise InputError(f"sample {b}: this model's adapter gives no vision-tower attention scores; "
                                 "use --partitioner cls")
            k = budget.resolve(sample.num_visual)
            scores.append(score.float())
            ranks.append(tile_keep_scores(sample, score.float(), k) if self.budget_mode == "per_tile" else score)
            keep.append(k)
        partition = top_k_partition(ranks, keep)
        return Partition(partition.groups, partition.assignment, tuple(s.cpu() for s in scores))
