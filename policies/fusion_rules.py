"""Built-in fusion rules: ``fixed``, ``size`` and ``attention``.

All three give a stream with no visual tokens zero weight, so an empty group changes nothing,
and all fall back explicitly when their signal is degenerate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from vtsched.core.errors import ScheduleError
from vtsched.core.fusion import FusionInputs


def _by_size(inputs: FusionInputs) -> torch.Tensor:
    """Weights proportional to visual-token counts; the survivor alone when all are empty."""
    counts = inputs.visual_counts.float()  # (S, B)
    total = counts.sum(0, keepdim=True)
    fallback = torch.zeros_like(counts)
    fallback[inputs.survivor] = 1.0
    w = torch.where(total > 0, counts / total.clamp(min=1e-12), fallback)
    return w[:, :, None].expand(*inputs.shape).contiguous()


@dataclass(frozen=True)
class FixedFusion:
    """``alpha`` to the surviving stream, ``1 - alpha`` shared by the others in proportion to size.

    With ``alpha = 1`` the fused states are the surviving stream's own: ParVTS becomes pruning.
    When every other stream is empty, the survivor gets weight 1.
    """

    name: ClassVar[str] = "fixed"
    needs_attention_mass: ClassVar[bool] = False
    alpha: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ScheduleError(f"fixed fusion: alpha {self.alpha} outside [0, 1]")

    def weights(self, inputs: FusionInputs) -> torch.Tensor:
        counts = inputs.visual_counts.float().clone()
        counts[inputs.survivor] = 0.0
        others = counts.sum(0, keepdim=True)
        share = torch.where(others > 0, counts / others.clamp(min=1e-12), torch.zeros_like(counts))
        w = (1.0 - self.alpha) * share
        w[inputs.survivor] = torch.where(others[0] > 0, torch.full_like(others[0], self.alpha), torch.ones_like(others[0]))
        return w[:, :, None].expand(*inputs.shape).contiguous()


@dataclass(frozen=True)
class SizeFusion:
    """Weights proportional to each stream's visual-token count (R / N_v for the subject)."""

    name: ClassVar[str] = "size"
    needs_attention_mass: ClassVar[bool] = False

    def weights(self, inputs: FusionInputs) -> torch.Tensor:
        return _by_size(inputs)


@dataclass(frozen=True)
class AttentionFusion:
    """Per token, the share of its attention that each stream's visual tokens received before K.

    The mass is averaged over heads and over the layers before the fuse. Where a token's total
    mass is (near) zero, as at K = 0 or with no visual tokens, it falls back to ``size``.
    """

    name: ClassVar[str] = "attention"
    needs_attention_mass: ClassVar[bool] = True
    min_mass: float = 1e-6

    def weights(self, inputs: FusionInputs) -> torch.Tensor:
        assert inputs.attention_mass is not None
        has_tokens = (inputs.visual_counts > 0).float()[:, :, None]
        mass = inputs.attention_mass.float().clamp(min=0.0) * has_tokens
        total = mass.sum(0, keepdim=True)
        return torch.where(total > self.min_mass, mass / total.clamp(min=1e-12), _by_size(inputs))
