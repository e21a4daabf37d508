"""``visionzip``: VisionZip's selection (Yang et al., 2024): dominant tokens plus merged contextual ones.

The budget's R tokens are ``R - c`` *dominant* tokens (highest [CLS] attention; on towers without
a [CLS] token, Qwen2-VL's, the attention each token receives, as the llmc port does) and ``c``
*contextual* tokens (default c = R * 10/64): the remaining tokens are merged into ``c`` targets
spread evenly over them, each joining the target whose key is most similar (cosine of the vision
layer's head-averaged keys). Merged features replace their target's; merged tokens keep their
target's position id. The ``visionzip`` policy runs the result before the LLM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from vtsched.core.budget import Budget
from vtsched.core.errors import InputError
from vtsched.core.partition import NON_SUBJECT, SUBJECT, Partition
from vtsched.core.pixels import token_scores
from vtsched.core.policy import Partitioner
from vtsched.core.tokens import PromptBatch

__all__ = ["VisionZipPartitioner", "merge_contextual"]


def merge_contextual(features: torch.Tensor, keys: torch.Tensor, rest: torch.Tensor, contextual: int):
    """Merge tokens ``rest`` into ``contextual`` evenly spaced targets among them.

    Returns ``(targets, merged_features, assignment)``: target token indices, their merged
    features (mean of the target and the tokens assigned to it) and, for every token of ``rest``,
    the target it joined.
    """
    if contextual <= 0 or rest.numel() == 0:
        empty = rest[:0]
        return empty, features[:0], torch.full_like(rest, -1)
    contextual = min(contextual, rest.numel())
    step = rest.numel() / contextual
    targets = rest[(torch.arange(contextual) * step).long()]
    normed = torch.nn.functional.normalize(keys.float(), dim=-1)
    similarity = normed[rest] @ normed[targets].T  # (rest, contextual)
    choice = similarity.argmax(-1)
    is_target = torch.isin(rest, targets)
    choice[is_target] = torch.searchsorted(targets, rest[is_target])  # a target joins itself
    merged = torch.zeros(contextual, features.shape[-1], dtype=torch.float64)
    merged.index_add_(0, choice, features[rest].double())
    counts = torch.bincount(choice, minlength=contextual).clamp(min=1)
    return targets, (merged / counts[:, None]).to(features.dtype), targets[choice]


@dataclass(frozen=True)
class VisionZipPartitioner(Partitioner):
    """Dominant tokens by [CLS] attention plus contextual tokens merged from the rest by key similarity."""

    name: ClassVar[str] = "visionzip"
    contextual_share: float = 10 / 64

    def partition(self, batch: PromptBatch, budget: Budget) -> Partition:
        assignment, scores, overrides = [], [], []
        for b, sample in enumerate(batch.samples):
            scores_of_tokens, _ = token_scores(sample)
            if scores_of_tokens is None or "patch_keys" not in sample.extras:
                raise InputError(f"sample {b}: visionzip needs the adapter's [CLS] (or vision-tower) attention and "
                                 "patch keys")
            keep = budget.resolve(sample.num_visual)
            contextual = int(round(keep * self.contextual_share)) if keep < sample.num_visual else 0
            dominant = torch.sort(-scores_of_tokens, stable=True).indices[: keep - contextual]
            rest = torch.tensor(sorted(set(range(sample.num_visual)) - set(dominant.tolist())), dtype=torch.long)
            targets, merged, _ = merge_contextual(sample.visual_features.detach().cpu(),
                                                  sample.extras["patch_keys"], rest, contextual)
            ids = torch.ones(sample.num_visual, dtype=torch.long)
            ids[dominant] = 0
            ids[targets] = 0
            assignment.append(ids)
            scores.append(scores_of_tokens)
            overrides.append((targets, merged) if targets.numel() else None)
        return Partition((SUBJECT, NON_SUBJECT), tuple(assignment), tuple(scores), tuple(overrides))
