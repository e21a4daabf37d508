"""``cls``: the subject is the top-R visual tokens by the vision tower's [CLS] attention.

Scores are the head-averaged CLS->patch attention of the encoder layer whose output LLaVA reads
(``vision_feature_layer``), computed by the adapter from that layer's CLS query and patch keys
only. Ties go to the lower token index, so the partition is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from vtsched.core.budget import Budget
from vtsched.core.errors import InputError
from vtsched.core.partition import Partition, top_k_partition
from vtsched.core.policy import Partitioner
from vtsched.core.tokens import PromptBatch


@dataclass(frozen=True)
class ClsAttention(Partitioner):
    """Top-R visual tokens by head-averaged [CLS] attention at the vision feature layer."""

    name: ClassVar[str] = "cls"

    def partition(self, batch: PromptBatch, budget: Budget) -> Partition:
        scores = []
        for b, sample in enumerate(batch.samples):
            if sample.cls_scores is None:
                raise InputError(f"sample {b}: the adapter gave no [CLS] attention; use another partitioner")
            scores.append(sample.cls_scores)
        return top_k_partition(scores, [budget.resolve(s.num_visual) for s in batch.samples])
