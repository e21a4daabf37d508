"""Partitions: which visual token belongs to which group, for every sample of a batch.

A partition stores one group id per visual token, so its groups are disjoint and cover every
token by construction. Group 0 is the *subject* group by convention (the one pruning keeps);
the others are non-subject groups in the order the partitioner ranks them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vtsched.core.errors import ScheduleError

__all__ = ["Partition", "SUBJECT", "NON_SUBJECT", "top_k_partition"]

SUBJECT = "subject"
NON_SUBJECT = "non_subject"


@dataclass(frozen=True)
class Partition:
    """Group assignment of visual tokens.

    Attributes:
        groups: group names; ``groups[0]`` is the subject group.
        assignment: per sample, a ``(num_visual,)`` long tensor of group ids in ``range(len(groups))``.
        scores: per sample, a ``(num_visual,)`` float tensor the partitioner ranked by (higher = more
            subject-like), or ``None`` when the partitioner has no notion of score.
        features: per sample, ``(indices, features)`` replacing the visual features of those tokens
            (``None`` for none): how a merging partitioner (``visionzip``) hands the engine merged
            tokens, which then sit at the position of the token they replace.
    """

    groups: tuple[str, ...]
    assignment: tuple[torch.Tensor, ...]
    scores: tuple[torch.Tensor, ...] | None = None
    features: tuple[tuple[torch.Tensor, torch.Tensor] | None, ...] | None = None

    def __post_init__(self) -> None:
        if not self.groups:
            raise ScheduleError("a partition needs at least one group")
        if len(set(self.groups)) != len(self.groups):
            raise ScheduleError(f"partition group names repeat: {self.groups}")
        for b, ids in enumerate(self.assignment):
            if ids.dim() != 1 or ids.dtype != torch.long:
                raise ScheduleError(f"sample {b}: assignment must be a 1-D long tensor")
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= len(self.groups)):
                raise ScheduleError(f"sample {b}: group id outside 0..{len(self.groups) - 1}")
        if self.scores is not None and len(self.scores) != len(self.assignment):
            raise ScheduleError("scores and assignment disagree on the batch size")

    @property
    def batch_size(self) -> int:
        return len(self.assignment)

    def group_id(self, name: str) -> int:
        try:
            return self.groups.index(name)
        except ValueError:
            raise ScheduleError(f"unknown group {name!r}; the partition has {list(self.groups)}") from None

    def members(self, sample: int, group: str) -> torch.Tensor:
        """Visual-token indices (sorted) of ``group`` in ``sample``."""
        return torch.nonzero(self.assignment[sample] == self.group_id(group)).flatten()

    def sizes(self) -> torch.Tensor:
        """``(batch, num_groups)`` token counts."""
        return torch.stack(
            [torch.bincount(ids, minlength=len(self.groups)) for ids in self.assignment]
        )

    @classmethod
    def single(cls, num_visual: Sequence[int], name: str = SUBJECT) -> Partition:
        """Every token in one group (what the ``full`` policy needs)."""
        return cls((name,), tuple(torch.zeros(n, dtype=torch.long) for n in num_visual))


def top_k_partition(
    scores: Sequence[torch.Tensor], keep: Sequence[int], groups: tuple[str, str] = (SUBJECT, NON_SUBJECT)
) -> Partition:
    """Subject = the ``keep[b]`` highest-scoring tokens of sample b (ties broken by lower index)."""
    assignment = []
    for s, k in zip(scores, keep):
        ids = torch.ones(s.numel(), dtype=torch.long)
        # stable sort on -score keeps the lower index first among equal scores: deterministic.
        order = torch.sort(-s.float(), stable=True).indices
        ids[order[:k]] = 0
        assignment.append(ids)
    return Partition(groups, tuple(assignment), tuple(s.detach().float().cpu() for s in scores))
