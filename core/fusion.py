"""Fusion rules: how the text-token states of parallel streams are merged.

A rule sees a :class:`FusionInputs` and returns weights ``(streams, batch, tokens)`` that are
finite and sum to one over streams; the engine checks both and does the weighted sum itself.
Built-in rules live in :mod:`vtsched.policies.fusion_rules`; plugins add more with the
``vtsched_register_fusion_rules`` hook.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import torch

from vtsched.core.errors import ScheduleError

__all__ = ["FusionInputs", "FusionRule", "check_weights"]


@dataclass(frozen=True)
class FusionInputs:
    """What a fusion rule may look at.

    Attributes:
        visual_counts: ``(streams, batch)`` visual tokens each stream carries at the fuse layer.
        attention_mass: ``(streams, batch, tokens)`` mean share of each fused token's attention
            that went to the stream's visual tokens over the layers before the fuse, or ``None``
            when the rule did not ask for it (``needs_attention_mass = False``).
        token_valid: ``(batch, tokens)`` which token slots are real (the rest is padding).
        survivor: index (into the streams axis) of the stream that receives the result.
    """

    visual_counts: torch.Tensor
    attention_mass: torch.Tensor | None
    token_valid: torch.Tensor
    survivor: int

    @property
    def shape(self) -> tuple[int, int, int]:
        streams, batch = self.visual_counts.shape
        return streams, batch, self.token_valid.shape[1]


@runtime_checkable
class FusionRule(Protocol):
    """A named way to weight streams. Instances are built from the ``fuse`` event's ``params``."""

    name: ClassVar[str]
    needs_attention_mass: ClassVar[bool]

    def weights(self, inputs: FusionInputs) -> torch.Tensor: ...


def check_weights(rule: str, weights: torch.Tensor, inputs: FusionInputs) -> torch.Tensor:
    """Refuse weights of the wrong shape, non-finite, or not summing to one."""
    if tuple(weights.shape) != inputs.shape:
        raise ScheduleError(f"fusion rule {rule!r} returned shape {tuple(weights.shape)}, expected {inputs.shape}")
    if not torch.isfinite(weights).all():
        raise ScheduleError(f"fusion rule {rule!r} returned non-finite weights")
    total = weights.sum(0)
    if not torch.allclose(total, torch.ones_like(total), atol=1e-4):
        raise ScheduleError(f"fusion rule {rule!r} returned weights that do not sum to one")
    return weights
